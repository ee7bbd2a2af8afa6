"""Horizontal level meter: RMS bar, peak line and a peak-hold tick, in dBFS.

Painted by hand (cheap at 30 Hz). Colours come from the palette plus three fixed signal
colours (green / amber / red zones) that read well on dark and light backgrounds.
"""

from __future__ import annotations

import math
import time

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import QSizePolicy, QWidget

FLOOR_DB = -60.0
HOLD_S = 1.5  # peak hold time before it falls
FALL_DB_PER_S = 20.0
GREEN, AMBER, RED = QColor("#3fb950"), QColor("#d29922"), QColor("#f85149")


def to_db(x: float) -> float:
    return 20.0 * math.log10(max(float(x), 1e-6))


class LevelMeter(QWidget):
    def __init__(self, label: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = label
        self.peak_db = FLOOR_DB
        self.rms_db = FLOOR_DB
        self.hold_db = FLOOR_DB
        self._hold_t = 0.0
        self._last_t = time.monotonic()
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumHeight(26)

    def sizeHint(self) -> QSize:
        return QSize(300, 28)

    def set_level(self, peak: float, rms: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        dt = max(0.0, now - self._last_t)
        self._last_t = now
        self.peak_db = max(FLOOR_DB, to_db(peak))
        self.rms_db = max(FLOOR_DB, to_db(rms))
        if self.peak_db >= self.hold_db:
            self.hold_db, self._hold_t = self.peak_db, now
        elif now - self._hold_t > HOLD_S:
            self.hold_db = max(self.peak_db, self.hold_db - FALL_DB_PER_S * dt)
        self.update()

    def reset(self) -> None:
        self.peak_db = self.rms_db = self.hold_db = FLOOR_DB
        self.update()

    def _x(self, db: float, x0: float, w: float) -> float:
        return x0 + w * (min(max(db, FLOOR_DB), 0.0) - FLOOR_DB) / -FLOOR_DB

    def paintEvent(self, _e: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.WindowText)
        f = QFont(self.font())
        f.setBold(True)
        p.setFont(f)
        label_w = 44.0
        num_w = 72.0
        h = float(self.height())
        x0, w = label_w, max(10.0, self.width() - label_w - num_w)
        p.setPen(text)
        p.drawText(QRectF(0, 0, label_w - 6, h), Qt.AlignmentFlag.AlignVCenter, self.label)
        track = QRectF(x0, 4, w, h - 8)
        p.fillRect(track, pal.color(QPalette.ColorRole.Base))
        # Zones: green up to -18 dBFS, amber to -6, red above (dim when not reached).
        zones = ((FLOOR_DB, -18.0, GREEN), (-18.0, -6.0, AMBER), (-6.0, 0.0, RED))
        for lo, hi, col in zones:
            a, b = self._x(lo, x0, w), self._x(hi, x0, w)
            dim = QColor(col)
            dim.setAlpha(40)
            p.fillRect(QRectF(a, track.top(), b - a, track.height()), dim)
            top = min(hi, self.rms_db)
            if top > lo:
                p.fillRect(QRectF(a, track.top(), self._x(top, x0, w) - a, track.height()), col)
        # Peak: a thin bar over the RMS; hold: a bright tick.
        peak_x = self._x(self.peak_db, x0, w)
        p.fillRect(QRectF(x0, track.center().y() - 2, peak_x - x0, 4), text)
        hold_x = self._x(self.hold_db, x0, w)
        p.fillRect(QRectF(hold_x - 1.5, track.top(), 3, track.height()), text)
        p.setPen(text)
        label = "−∞ dB" if self.hold_db <= FLOOR_DB else f"{self.hold_db:5.1f} dB"
        p.drawText(
            QRectF(x0 + w, 0, num_w, h),
            Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
            label,
        )
        p.end()
