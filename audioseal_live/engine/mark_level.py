"""Keeps the watermark under the signal it is added to.

The generator shapes its mark to the audio, but only down to a floor: on digital silence, in
speech pauses and under a quiet voice it still adds about -67 dBFS RMS, a 50 Hz comb (its frame
code repeats every 20 ms) that sounds like faint buzz exactly where nothing masks it (a voice
peaking at -56 dBFS had the mark 2.5 dB *above* it). The cap scales the mark so that over the
last 100 ms it stays at least ``margin_db`` under the signal it joins, per output channel (a
silent channel of a stereo file gets no mark). At speaking levels the mark sits 26-31 dB under
the voice and the cap seldom acts; on silence it removes the mark altogether (within ~0.1 s of
a pause), and at the start of a stream it fades the mark in (the first sample was a -46 dBFS
step). Speech 35 dB under its normal level: the mark 6.7 -> 20 dB under it, still detected with
its message (test speech and music, 3 s each). Not covered: a signal whose energy lies outside
the mark's band (hum, bass or hiss alone) lets the model's floor through, unmasked.

Streaming and exact across chunk boundaries: the levels are moving sums over a window whose
tail is carried from call to call, so the gains do not depend on how the audio was chunked.
"""

from __future__ import annotations

import numpy as np

MARGIN_DB = 20.0  # the mark stays at least this far under the signal's short-term level
# The level is measured over the last 100 ms (the signal's and the mark's): the gaps between
# a voice's phonemes do not count as pauses. With 10 ms, the cap ducked the mark there and the
# detector's P on 100 ms chunks of plain speech fell to 0.50 (0.97 uncapped; 100 ms: 0.96).
WINDOW_S = 0.100
SMOOTH_S = 0.005  # the gain is averaged over 5 ms: no zipper noise on the mark
# A 20 ms frame or 100 ms chunk quieter than this (RMS, at 16 kHz) carries no mark worth
# reading once capped: the detectors (live monitor, `detect`) leave such stretches out.
QUIET_RMS = 10 ** (-55 / 20)
_TINY = 1e-20  # a mark's energy under this (over the window) is no mark: gain 1


def _moving_sum(tail: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum over the last ``len(tail) + 1`` values at each sample of ``x`` (axis 0), and the
    tail to carry to the next call."""
    full = np.concatenate([tail, x], axis=0)
    c = np.cumsum(full, axis=0)
    w = tail.shape[0] + 1
    sums = c[w - 1 :].copy()
    sums[1:] -= c[: c.shape[0] - w]
    return sums, full[full.shape[0] - tail.shape[0] :]


class MarkLevelCap:
    """Per-sample gains for a watermark added to ``channels`` signals at ``rate``."""

    def __init__(
        self,
        rate: int,
        channels: int = 1,
        margin_db: float = MARGIN_DB,
        window_s: float = WINDOW_S,
        smooth_s: float = SMOOTH_S,
    ) -> None:
        self.channels = int(channels)
        self.ratio = 10.0 ** (-margin_db / 10.0)  # as a power ratio
        self.window = max(1, round(rate * window_s))
        self.smooth = max(1, round(rate * smooth_s))
        self.reset()

    def reset(self) -> None:
        """A new stream: silence before it, so the mark fades in."""
        ch = self.channels
        self._sig = np.zeros((self.window - 1, ch))
        self._sum = np.zeros((self.window - 1, ch))
        self._wm = np.zeros((self.window - 1, 1))
        self._gain = np.zeros((self.smooth - 1, ch))

    def gains(self, signal: np.ndarray, mark: np.ndarray) -> np.ndarray:
        """Gains (n, channels) for ``mark`` (n,) added to ``signal`` (n, channels) or (n,)."""
        sig = np.asarray(signal, dtype=np.float64).reshape(mark.shape[0], -1)
        if sig.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {sig.shape[1]}")
        wm = np.asarray(mark, dtype=np.float64).reshape(-1, 1)
        # The signal's level without its DC (the variance over the window: under ~10 Hz goes):
        # neither masks the mark, and a DC offset drove the mark up (0.3 DC: -38 dBFS added).
        e_sq, self._sig = _moving_sum(self._sig, sig * sig)
        e_sum, self._sum = _moving_sum(self._sum, sig)
        e_sig = e_sq - e_sum * e_sum / self.window
        e_wm, self._wm = _moving_sum(self._wm, wm * wm)
        # np.maximum keeps rounding (a cumsum difference can dip below zero) out of the root
        want = np.sqrt(np.maximum(self.ratio * e_sig, 0.0) / np.maximum(e_wm, _TINY))
        raw = np.where(e_wm > _TINY, np.minimum(want, 1.0), 1.0)
        g, self._gain = _moving_sum(self._gain, raw)
        return (g / self.smooth).astype(np.float32)

    def apply(self, signal: np.ndarray, mark: np.ndarray) -> np.ndarray:
        """``mark`` scaled for each channel of ``signal``: (n, channels), or (n,) for a mono
        ``signal`` given as (n,)."""
        if mark.shape[0] == 0:  # nothing to scale (and nothing to carry)
            return np.zeros(np.shape(signal), dtype=np.float32)
        g = self.gains(signal, mark)
        out = mark.reshape(-1, 1).astype(np.float32) * g
        return out[:, 0] if np.ndim(signal) == 1 else out
