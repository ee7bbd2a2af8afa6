"""Scrolling plot of the detector's probability (last ~10 s), the threshold line, and shaded
spans where the worker fell behind and audio went out unmarked.

Friture-style: ``handle_new_data(snapshot)`` takes data (cheap), ``canvas_update()`` redraws
(called by the 30 Hz timer), so the drawing rate never depends on the data rate.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QVBoxLayout, QWidget

from audioseal_live.engine.metrics import Snapshot

WINDOW_S = 10.0
MONITOR_CHUNK_S = 0.1  # the detector monitor publishes one value per 100 ms of audio


class ProbabilityPlot(QWidget):
    def __init__(self, threshold: float = 0.5, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.threshold = threshold
        # Antialiased wide paths cost ~13 ms per draw in the raster engine, with the GIL held:
        # enough to starve the audio callbacks. Plain 2 px lines look fine at this scale.
        pg.setConfigOptions(antialias=False)
        self.plot = pg.PlotWidget(self)
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setXRange(-WINDOW_S, 0, padding=0)
        self.plot.setYRange(0, 1.02, padding=0)
        # No axis grid: pyqtgraph replays it as a QPicture on every frame (~6 ms, GIL held).
        self._grid = [pg.InfiniteLine(pos=y, angle=0, movable=False) for y in (0.25, 0.75, 1.0)]
        for ln in self._grid:
            self.plot.addItem(ln)
        self.plot.setLabel("left", "P(marked)")
        self.plot.setLabel("bottom", "seconds ago")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.plot)
        self.curve = pg.PlotDataItem(fillLevel=0.0, skipFiniteCheck=True)
        self.plot.addItem(self.curve)
        self.thr_line = pg.InfiniteLine(pos=threshold, angle=0, movable=False)
        self.thr_label = pg.TextItem("threshold", anchor=(0, 1))
        self.plot.addItem(self.thr_line)
        self.plot.addItem(self.thr_label)
        self.thr_label.setPos(-WINDOW_S + 0.1, threshold)
        self._regions: list[pg.LinearRegionItem] = []
        # (audio time at start, at end) of spans that went out unmarked
        self._spans: deque[list[float]] = deque(maxlen=64)
        self._values = np.zeros(0)
        self._now = 0.0
        self._last_unmarked_s = 0.0
        self._last_time = 0.0
        self._in_span = False
        self._dirty = True
        self.apply_palette()

    # ----- look --------------------------------------------------------------------------
    def apply_palette(self) -> None:
        pal = self.palette()
        bg = pal.color(QPalette.ColorRole.Base)
        fg = pal.color(QPalette.ColorRole.Text)
        accent = pal.color(QPalette.ColorRole.Highlight)
        self.plot.setBackground(bg)
        for ax in ("left", "bottom"):
            a = self.plot.getAxis(ax)
            a.setPen(pg.mkPen(fg))
            a.setTextPen(pg.mkPen(fg))
        self.curve.setPen(pg.mkPen(accent, width=2))
        fill = QColor(accent)
        fill.setAlpha(60)
        self.curve.setFillBrush(pg.mkBrush(fill))
        grid = QColor(fg)
        grid.setAlpha(40)
        for ln in self._grid:
            ln.setPen(pg.mkPen(grid, width=1))
        thr = QColor(fg)
        thr.setAlpha(160)
        self.thr_line.setPen(pg.mkPen(thr, width=1.5, style=pg.QtCore.Qt.PenStyle.DashLine))
        self.thr_label.setColor(thr)

    # ----- data --------------------------------------------------------------------------
    def clear(self) -> None:
        self._values = np.zeros(0)
        self._spans.clear()
        self._last_unmarked_s = 0.0
        self._last_time = 0.0
        self._in_span = False
        self._dirty = True

    def handle_new_data(self, snap: Snapshot) -> None:
        hist = snap.detection.history
        if len(hist) != self._values.shape[0] or (hist and hist[-1] != self._values[-1]):
            self._values = np.asarray(hist, dtype=float)
            self._dirty = True
        # Unmarked spans: the worker counts unmarked audio seconds; growth between two polls
        # is a span (its position is approximate to one poll, ~33 ms: enough to see it).
        t = snap.time_s
        if snap.unmarked_s > self._last_unmarked_s + 1e-9 and not snap.bypass:
            grown = snap.unmarked_s - self._last_unmarked_s
            if self._in_span and self._spans:
                self._spans[-1][1] = t
            else:
                self._spans.append([max(self._last_time, t - grown), t])
            self._in_span = True
            self._dirty = True
        else:
            self._in_span = False
        if snap.unmarked_s < self._last_unmarked_s:  # new engine session
            self._spans.clear()
        self._last_unmarked_s = snap.unmarked_s
        self._last_time = t
        if t != self._now:
            self._now = t
            self._dirty = self._dirty or bool(self._spans)

    def latest(self) -> float | None:
        """The newest plotted probability (None: nothing yet)."""
        return float(self._values[-1]) if self._values.size else None

    def canvas_update(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        n = self._values.shape[0]
        x = (np.arange(n) - (n - 1)) * MONITOR_CHUNK_S
        self.curve.setData(x, self._values)
        self._draw_spans()

    def _draw_spans(self) -> None:
        visible = [
            (a - self._now, b - self._now) for a, b in self._spans if b - self._now > -WINDOW_S
        ]
        while len(self._regions) < len(visible):
            r = pg.LinearRegionItem(movable=False, brush=pg.mkBrush(248, 81, 73, 70))
            r.setZValue(-10)
            for ln in r.lines:
                ln.setPen(pg.mkPen(248, 81, 73, 160))
            self.plot.addItem(r)
            self._regions.append(r)
        for i, r in enumerate(self._regions):
            if i < len(visible):
                a, b = visible[i]
                r.setRegion((max(a, -WINDOW_S), min(max(b, a + 0.05), 0.0)))
                r.show()
            else:
                r.hide()

    def unmarked_spans_visible(self) -> int:
        return sum(1 for r in self._regions if r.isVisible())
