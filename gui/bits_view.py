"""The answer to "is the mark there, and which message?": a big probability, a big state
(MATCH / MISMATCH / NOT DETECTED) with hysteresis, and the embedded vs decoded 16 bits with
per-bit confidence.

``MatchState`` is the pure logic (tested without Qt timing); ``BitsView`` draws it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from audioseal_live.engine.metrics import NO_MONITOR, Snapshot

STOPPED, NOT_DETECTED, DETECTING, MATCH, MISMATCH, OFF, UPDATING = (
    "stopped",
    "not detected",
    "detecting",
    "match",
    "mismatch",
    "detector off",
    "updating",
)
# After the message changes, the detector's bits are a vote over its last ~3 s: until they
# show the new message (or this long), the state says so instead of MATCH / MISMATCH, which
# contradicted the rows beside it for ~2.7 s (review).
UPDATE_S = 4.0
MARKED = 0.5  # the detector's threshold: a chunk at or above it read as marked
STATE_TEXT = {
    UPDATING: "UPDATING…",
    STOPPED: "STOPPED",
    OFF: "DETECTOR OFF",
    NOT_DETECTED: "NOT DETECTED",
    DETECTING: "DETECTED",
    MATCH: "MATCH",
    MISMATCH: "MISMATCH",
}
STATE_COLOR = {
    UPDATING: QColor("#58a6ff"),
    STOPPED: None,  # palette text, dimmed
    OFF: None,
    NOT_DETECTED: QColor("#8b949e"),
    DETECTING: QColor("#58a6ff"),
    MATCH: QColor("#2ea043"),
    MISMATCH: QColor("#f0883e"),
}


@dataclass
class MatchState:
    """Hysteresis so the big label does not flicker.

    Detection turns on above ``on`` and off below ``off`` (a band around the detector's 0.5
    threshold); the shown state changes only after the new state has held for ``hold_s``.
    """

    on: float = 0.6
    off: float = 0.4
    hold_s: float = 0.75
    state: str = STOPPED
    detected: bool = False
    _candidate: str = STOPPED
    _since: float = 0.0

    def reset(self) -> None:
        self.state = self._candidate = STOPPED
        self.detected = False

    def update(
        self, prob: float, match: bool | None, running: bool, now: float, listening: bool = True
    ) -> str:
        """``listening``: a detector is running (the monitor is not set to off); without one
        nothing is known about the mark, which is not the same as "not detected"."""
        if not running or not listening:
            self.reset()
            if running:
                self.state = self._candidate = OFF
            return self.state
        if self.detected and prob < self.off:
            self.detected = False
        elif not self.detected and prob >= self.on:
            self.detected = True
        if not self.detected:
            cand = NOT_DETECTED
        elif match is None:
            cand = DETECTING
        else:
            cand = MATCH if match else MISMATCH
        if cand != self._candidate:
            self._candidate, self._since = cand, now
        if self.state in (STOPPED, OFF) or (
            cand != self.state and now - self._since >= self.hold_s
        ):
            self.state = cand
        return self.state


class BitRow(QWidget):
    """16 cells; a cell's fill strength shows confidence (1 = solid)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bits: tuple[int, ...] = ()
        self.conf: tuple[float, ...] = ()
        self.ref: tuple[int, ...] = ()  # bits to compare against (decoded row only)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumHeight(34)

    def sizeHint(self) -> QSize:
        return QSize(16 * 30, 36)

    def set_bits(
        self,
        bits: Sequence[int],
        conf: Sequence[float] = (),
        ref: Sequence[int] = (),
    ) -> None:
        self.bits, self.conf, self.ref = tuple(bits), tuple(conf), tuple(ref)
        self.update()

    def paintEvent(self, _e: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.Text)
        accent = pal.color(QPalette.ColorRole.Highlight)
        gap, group_gap = 3.0, 8.0
        w = (self.width() - 15 * gap - 3 * group_gap) / 16
        h = float(self.height()) - 2
        f = QFont(self.font())
        f.setBold(True)
        f.setPixelSize(int(min(h * 0.55, w * 0.7)))
        p.setFont(f)
        x = 0.0
        for i in range(16):
            r = QRectF(x, 1, w, h)
            have = i < len(self.bits)
            bit = self.bits[i] if have else None
            c = self.conf[i] if i < len(self.conf) else 1.0
            wrong = have and len(self.ref) == 16 and self.ref[i] != bit
            base = QColor("#f85149") if wrong else QColor(accent)
            if have and bit == 1:
                fill = QColor(base)
                fill.setAlphaF(0.35 + 0.65 * max(0.0, min(1.0, c)))
            else:
                fill = QColor(pal.color(QPalette.ColorRole.Base))
            p.setPen(QColor(base) if have else pal.color(QPalette.ColorRole.Mid))
            p.setBrush(fill)
            p.drawRoundedRect(r.adjusted(0.5, 0.5, -0.5, -0.5), 4, 4)
            p.setPen(text if not (have and bit == 1) else QColor("white"))
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, "·" if not have else str(bit))
            if have and self.conf:
                # confidence tick along the bottom edge
                bar = QRectF(r.left() + 3, r.bottom() - 4, (r.width() - 6) * c, 2)
                p.fillRect(bar, QColor("#f85149") if wrong else text)
            x += w + gap + (group_gap if i % 4 == 3 else 0)
        p.end()


POLARITY_GUESS_TIP = (
    "Nothing in this audio tells its polarity (the chain inverts it and cuts it to the "
    "telephone band, where the model's polarity check hears nothing). The bits read as the "
    "exact complement of your message, which is what your message sounds like inverted; the "
    "complement message, not inverted, would read the same."
)


class BitsView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.match_state = MatchState()
        self.embedded: tuple[int, ...] = ()
        self._previous: tuple[int, ...] = ()  # the message before the last change
        self._change_seen: float | None = None  # when a snapshot first came after it
        self.shown_state = STOPPED  # what the big label says (UPDATING over the match state)
        # the capture device the detector listens to, as its picker names it (the engine's
        # source is the PortAudio index: "monitor: 1", review); '' = the engine's source
        self.monitor_name = ""
        self._marked_seen = False  # a chunk read as marked this session: a reading to hold
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)

        top = QHBoxLayout()
        top.setSpacing(24)
        prob_box = QVBoxLayout()
        prob_box.setSpacing(0)
        cap = QLabel("detector probability")
        cap.setObjectName("caption")
        self.prob_label = QLabel("–")
        self.prob_label.setObjectName("bigNumber")
        prob_box.addWidget(cap)
        prob_box.addWidget(self.prob_label)
        top.addLayout(prob_box)
        state_box = QVBoxLayout()
        state_box.setSpacing(0)
        cap2 = QLabel("watermark")
        cap2.setObjectName("caption")
        self.state_label = QLabel(STATE_TEXT[STOPPED])
        self.state_label.setObjectName("bigState")
        self.detail_label = QLabel("")
        self.detail_label.setObjectName("caption")
        # Wrapping, and not asking for its text's width: as notes came and went the window
        # widened itself mid-session (905 px -> up to 1571 px, review; as health_strip.py).
        self.detail_label.setWordWrap(True)
        self.detail_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        state_box.addWidget(cap2)
        state_box.addWidget(self.state_label)
        state_box.addWidget(self.detail_label)
        top.addLayout(state_box, 1)
        lay.addLayout(top)

        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(4)
        self.embedded_row = BitRow()
        self.decoded_row = BitRow()
        self.embedded_hex = QLabel("")
        self.decoded_hex = QLabel("")
        for lbl in (self.embedded_hex, self.decoded_hex):
            lbl.setObjectName("mono")
            lbl.setMinimumWidth(70)
        grid.addWidget(QLabel("embedded"), 0, 0)
        grid.addWidget(self.embedded_row, 0, 1)
        grid.addWidget(self.embedded_hex, 0, 2)
        grid.addWidget(QLabel("decoded"), 1, 0)
        grid.addWidget(self.decoded_row, 1, 1)
        grid.addWidget(self.decoded_hex, 1, 2)
        grid.setColumnStretch(1, 1)
        lay.addLayout(grid)

    @property
    def state(self) -> str:
        return self.match_state.state

    def set_embedded(self, bits: Sequence[int]) -> None:
        bits = tuple(bits)
        if bits != self.embedded:
            # the one before: a snapshot taken before the engine had the new one still says
            # it (it flipped the row back for a tick); and the detector's bits catch up
            self._previous, self._change_seen = self.embedded, None
        self.embedded = bits
        self.embedded_row.set_bits(self.embedded)
        self.embedded_hex.setText(_hex(self.embedded))

    def handle_new_data(self, snap: Snapshot, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        det = snap.detection
        running = snap.running
        listening = det.source != NO_MONITOR
        state = self.match_state.update(det.prob_smoothed, det.match, running, now, listening)
        if not (running and listening):
            self._marked_seen = False  # a new session starts with no reading
        elif det.chunks and max(det.prob_chunk, det.prob_smoothed) >= MARKED:
            self._marked_seen = True
        message = tuple(snap.message) if snap.message else ()
        if message and message not in (self.embedded, self._previous):
            self.set_embedded(message)  # the engine's own (e.g. a random one at start)
        if self._change_seen is None:
            self._change_seen = now
        catching_up = now - self._change_seen < UPDATE_S and tuple(det.bits) != self.embedded
        if state in (MATCH, MISMATCH) and self._previous and catching_up:
            state = UPDATING
        self.shown_state = state
        self.prob_label.setText(f"{det.prob_smoothed:.2f}" if running and det.chunks else "–")
        col = STATE_COLOR[state]
        style = f"color: {col.name()};" if col is not None else ""
        if self.state_label.text() != STATE_TEXT[state]:
            self.state_label.setText(STATE_TEXT[state])
        if self.state_label.styleSheet() != style:
            self.state_label.setStyleSheet(style)
        detail = []
        if running and snap.bypass:
            detail.append("BYPASS: output is unmarked")
        if running and det.bits and self.match_state.detected:
            detail.append(f"decoded {_hex(det.bits)}")
            if det.polarity_from_message:  # a sign code alone cannot tell (model card)
                detail.append("polarity inverted (inferred from the message)")
            elif det.inverted:
                detail.append("polarity inverted")
        if running and listening and det.quiet and det.chunks and self._marked_seen:
            # the engine keeps no mark in pauses: the reading is the one from before (none
            # before the first marked chunk: "held" beside 0.00 said otherwise, review)
            detail.append("pause: last reading held")
        if running and det.source and det.source not in ("output", NO_MONITOR):
            detail.append(f"monitor: {self.monitor_name or det.source}")
        self.detail_label.setText(" · ".join(detail))
        guessed = running and det.polarity_from_message and self.match_state.detected
        tip = POLARITY_GUESS_TIP if guessed else ""
        if self.detail_label.toolTip() != tip:
            self.detail_label.setToolTip(tip)
        if running and det.bits:
            self.decoded_row.set_bits(det.bits, det.bit_confidence, self.embedded)
            self.decoded_hex.setText(_hex(det.bits))
        elif not running:
            self.decoded_row.set_bits(())
            self.decoded_hex.setText("")


def _hex(bits: Sequence[int]) -> str:
    v = 0
    for b in bits:
        v = (v << 1) | int(b)
    return f"0x{v:04X}"
