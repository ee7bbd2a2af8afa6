"""Clock-drift correction: keep the output ring near its target fill.

Input and output devices run on separate crystals (a virtual cable is not the mic's clock), so
the worker produces samples at the input's rate while the output consumes at its own. Over
minutes the output ring would drain (underruns) or grow (latency creep). We watch a smoothed
fill and, outside a dead band, drop or repeat one sample per block the worker reads at the
quietest point of the block, where the edit is least audible. The worker edits its input,
before the watermark, so that the mark's frame grid runs on unbroken. One sample per 20 ms
at 48 kHz corrects ~1000 ppm, ten times the drift of ordinary sound cards; up to four per
block catch up after a small slip.

A real surplus (a stall's late samples, several ms) would take seconds to shed one sample at a
time (4 per 20 ms block: 4 ms per second; on an overloaded VM the in-flight count then ran
40-80 ms over the set point for the whole run). Like a jitter buffer's "accelerate", such a
surplus is cut out as one span with a 2 ms equal-power crossfade where the block is quiet (a
speech pause: at least 10 dB below the block's mean), at most a quarter of the block at a time;
past a whole block of surplus the quietest span is cut even if nothing is quiet, since latency
that stays is worse than one short crossfade.

The set point also adapts, like a jitter buffer: an output underrun means the margin was too
small, and the samples that arrive late then sit in the ring as surplus. Dropping them (what a
fixed set point does) restores the latency only to underrun again on the next spike, so the
set point grows by what the underrun lacked (capped) instead, and relaxes by 1 ms per second
once the output has been fed without a gap for a while.
"""

from __future__ import annotations

import numpy as np

FADE_S = 0.002  # crossfade of a span cut
QUIET = 0.1  # a span is "quiet" at 1/10 of the block's mean energy (-10 dB)


def cut_span(chunk: np.ndarray, n: int, fade: int, force: bool) -> np.ndarray | None:
    """``chunk`` with ``n`` samples removed at its quietest stretch, crossfaded over ``fade``
    samples; None when no stretch is quiet enough (and ``force`` is off)."""
    width = n + fade
    if width >= chunk.shape[0]:
        return None
    energy = np.concatenate(([0.0], np.cumsum(chunk.astype(np.float64) ** 2)))
    sums = energy[width:] - energy[:-width]
    i = int(np.argmin(sums))
    quiet = sums[i] / width <= QUIET * energy[-1] / chunk.shape[0]
    if not (quiet or force):
        return None
    t = (np.arange(fade, dtype=np.float32) + 0.5) / fade
    mix = chunk[i : i + fade] * np.cos(0.5 * np.pi * t) + chunk[i + n : i + width] * np.sin(
        0.5 * np.pi * t
    )
    return np.concatenate((chunk[:i], mix.astype(np.float32), chunk[i + width :]))


class DriftCorrector:
    def __init__(
        self,
        target_fill: int,
        dead_band: int,
        rate: int,
        smoothing: float = 0.05,
        max_edits: int = 4,
        calibrate: int = 25,
        max_extra: int = 0,
    ) -> None:
        self.target_fill = int(target_fill)  # the base set point (calibrated at start)
        self.max_extra = int(max_extra)
        self.fade = max(8, int(FADE_S * rate))
        self.extra = 0  # what underruns added to the set point, 0..max_extra
        self.peak_extra = 0
        self.max_edits = max_edits
        self.dead_band = int(dead_band)
        self._alpha = float(smoothing)  # EMA weight per chunk: ~20 chunks of memory
        self._avg: float | None = None
        self._calib: list[int] = []
        self._calib_left = calibrate
        self.drops = 0
        self.inserts = 0
        self.spans = 0  # surplus cut out as one crossfaded span (counted in drops too)

    @property
    def corrections(self) -> int:
        return self.drops + self.inserts

    @property
    def smoothed_fill(self) -> float:
        return float(self._avg) if self._avg is not None else float(self.target_fill)

    @property
    def calibrated(self) -> bool:
        return self._avg is not None

    def moved(self, samples: int) -> None:
        """The fill moved by ``samples`` outside the corrector (a resync's dropped input)."""
        if self._avg is not None:
            self._avg += samples

    @property
    def set_point(self) -> int:
        return self.target_fill + self.extra

    def grow(self, samples: int) -> None:
        """An underrun lacked ``samples``: keep that much more in the ring (up to the cap)."""
        self.extra = min(self.max_extra, self.extra + max(0, int(samples)))
        self.peak_extra = max(self.peak_extra, self.extra)

    def relax(self, samples: int) -> None:
        self.extra = max(0, self.extra - int(samples))

    def reset(self, calibrate: int = 25) -> None:
        self._avg = None
        self._calib = []
        self._calib_left = calibrate

    def observe(self, fill: int, surplus: int = 0) -> None:
        """``fill``: samples in flight; ``surplus``: what underruns have added to it so far
        (late samples, not part of the set point being learnt)."""
        if self._calib_left > 0:
            # Learn the set point from the first observations: where the worker runs relative
            # to the callbacks offsets the measured fill by up to a block, constantly. A stall
            # at start-up must not become latency for the whole session (CI, session 7: the
            # loop ran 7 ms over its budget), so the underruns' surplus is left out.
            self._calib.append(fill - surplus)
            self._calib_left -= 1
            if self._calib_left == 0:
                self.target_fill = int(round(float(np.mean(self._calib))))
                self._avg = float(self.target_fill)
            return
        self._avg = (
            float(fill) if self._avg is None else self._avg + self._alpha * (fill - self._avg)
        )

    def apply(self, chunk: np.ndarray) -> np.ndarray:
        """Return the chunk with samples dropped/inserted if the smoothed fill says so.

        One edit per chunk inside twice the dead band, up to ``max_edits`` further out, each
        at the quietest point of its own segment; a surplus beyond twice the dead band goes as
        one crossfaded span (see the module's docstring).
        """
        if self._avg is None or chunk.shape[0] < 8 * self.max_edits:
            return chunk
        err = self._avg - self.set_point
        if abs(err) <= self.dead_band:
            return chunk
        if err > 2 * self.dead_band:
            n = int(min(err, chunk.shape[0] // 4))
            cut = cut_span(chunk, n, self.fade, force=err > chunk.shape[0])
            if cut is not None:
                self.drops += n
                self.spans += 1
                self._avg -= n
                return cut
        n = int(min(self.max_edits, 1 + (abs(err) - self.dead_band) // max(1, self.dead_band)))
        energy = np.convolve(chunk * chunk, np.ones(5, dtype=np.float32), mode="same")
        bounds = np.linspace(0, chunk.shape[0], n + 1).astype(int)
        points = [
            lo + 2 + int(np.argmin(energy[lo + 2 : hi - 2]))
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        pieces: list[np.ndarray] = []
        prev = 0
        for i in points:
            if err > 0:  # ring too full: drop sample i
                pieces.append(chunk[prev:i])
                prev = i + 1
            else:  # ring too empty: repeat an interpolated sample before i
                mid = np.float32(0.5) * (chunk[i - 1] + chunk[i])
                pieces += [chunk[prev:i], np.array([mid], dtype=np.float32)]
                prev = i
        pieces.append(chunk[prev:])
        if err > 0:
            self.drops += n
            self._avg -= n  # our own edits move the fill; do not correct twice for them
        else:
            self.inserts += n
            self._avg += n
        return np.concatenate(pieces)
