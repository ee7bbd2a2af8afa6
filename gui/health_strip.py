"""Health strip: the real numbers behind "is it keeping up?" (updated ~4 Hz).

Latency as measured/estimated by the engine (PortAudio's reported latencies + rings + resampler
delay), compute per chunk and real-time factor, glitch counters, drift corrections, ring fill.
A counter that is not zero turns amber; an overloaded worker or bypass shows as a tag.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from audioseal_live.engine.metrics import Snapshot

WARN = QColor("#d29922")
BAD = QColor("#f85149")

FIELDS = (
    ("latency", "latency", "mic → output: PortAudio in + rings + resampler + PortAudio out"),
    ("compute", "ms / chunk", "model time per chunk, p50 / p99"),
    ("rtf", "RTF", "compute time / audio time (must stay well below 1)"),
    ("xruns", "xruns", "PortAudio input overflows + output underflows"),
    ("underruns", "underruns", "output callbacks that found the ring short (silence played)"),
    ("unmarked", "unmarked", "spans where the model fell behind and audio went out unmarked"),
    ("drift", "drift fixes", "samples dropped/inserted to keep in/out clocks aligned"),
    ("ring", "ring fill", "output ring fill vs its target, in ms"),
)


class HealthStrip(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("healthStrip")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(10, 6, 10, 6)
        outer.setSpacing(2)
        lay = QHBoxLayout()
        lay.setSpacing(14)
        outer.addLayout(lay)
        self.values: dict[str, QLabel] = {}
        for key, title, tip in FIELDS:
            box = QVBoxLayout()
            box.setSpacing(0)
            cap = QLabel(title)
            cap.setObjectName("caption")
            val = QLabel("–")
            val.setObjectName("healthValue")
            for w in (cap, val):
                w.setToolTip(tip)
            box.addWidget(cap)
            box.addWidget(val)
            lay.addLayout(box)
            self.values[key] = val
        lay.addStretch(1)
        # On a line of its own, wrapping: in the row it set the window's minimum width, which
        # grew with each tag (a window at 1280 px widened itself mid-call, review).
        self.tag = QLabel("")
        self.tag.setObjectName("healthTag")
        self.tag.setWordWrap(True)
        self.tag.setTextFormat(Qt.TextFormat.RichText)  # the alarms in colour
        self.tag.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        outer.addWidget(self.tag)

    def text(self, key: str) -> str:
        return self.values[key].text()

    def _set(self, key: str, text: str, color: QColor | None = None) -> None:
        lbl = self.values[key]
        if lbl.text() != text:
            lbl.setText(text)
        style = f"color: {color.name()};" if color is not None else ""
        if lbl.styleSheet() != style:  # re-polishing a label is not free: only on change
            lbl.setStyleSheet(style)

    def clear(self) -> None:
        for key in self.values:
            self._set(key, "–")
        self.tag.setText("")

    def handle_new_data(self, s: Snapshot) -> None:
        if not s.running and not s.chunks:
            self.clear()
            return
        self._set("latency", f"{s.latency_ms:.0f} ms", None)
        self.values["latency"].setToolTip(
            f"now {s.latency_ms:.1f} ms (budget {s.latency_budget_ms:.1f} ms): "
            f"PortAudio in {s.input_latency_ms:.1f} + out {s.output_latency_ms:.1f} ms, "
            f"resampler {s.pipeline_delay_ms:.1f} ms"
        )
        rtf_col = BAD if s.rtf >= 0.8 else WARN if s.rtf >= 0.5 else None
        self._set("compute", f"{s.ms_per_chunk_p50:.1f} / {s.ms_per_chunk_p99:.1f}", rtf_col)
        self._set("rtf", f"{s.rtf:.2f}", rtf_col)
        self._set("xruns", str(s.xruns), WARN if s.xruns else None)
        self.values["xruns"].setToolTip(
            "audio callback in C (never waits for Python)"
            if s.native_callback
            else "audio callback in Python (the C one is not built): CPU load can cause xruns"
        )
        self._set("underruns", str(s.underruns), WARN if s.underruns else None)
        self._set(
            "unmarked",
            f"{s.unmarked_spans} ({s.unmarked_s:.1f} s)" if s.unmarked_spans else "0",
            BAD if s.overloaded else WARN if s.unmarked_spans else None,
        )
        self._set("drift", str(s.drift_corrections))
        rate = max(1, s.sample_rate)
        self._set(
            "ring",
            f"{1000 * s.out_ring_fill / rate:.0f} / {1000 * s.out_ring_target / rate:.0f} ms",
        )
        tags = []
        if s.bypass:
            tags.append('<b style="color:#d29922">BYPASS: output unmarked</b>')
        if s.overloaded:
            tags.append(f'<b style="color:{BAD.name()}">FALLING BEHIND</b>')
        if s.callback_errors:
            tags.append(f"{s.callback_errors} errors")
        tags.append(
            html.escape(f"{s.sample_rate / 1000:g} kHz · {s.chunk_ms:.0f} ms chunk · {s.device}")
        )
        self.tag.setText(" &nbsp; ".join(tags))
        self.tag.setToolTip(s.last_error)
