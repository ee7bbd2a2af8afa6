"""Streaming resamplers between the device rate and the model's 16 kHz.

Two kinds, one interface (``process`` keeps state across calls, ``delay`` is fixed and known):

* ``PolyphaseResampler`` (live path): a causal windowed-sinc polyphase FIR. soxr's streaming
  mode holds back up to 35-55 ms of output in its internal blocks (measured: HQ 48k->16k holds
  up to 570 output samples), which alone would blow the 45 ms mic->out budget. This FIR emits
  every output sample as soon as its last input arrives; its group delay is an exact integer
  number of output samples (1.25 ms for 48k<->16k), so the untouched original can be aligned.
* ``SoxrResampler`` (files): soxr HQ, time-aligned (zero delay) but with hold-back, flushed at
  the end. Used by ``embed``/``detect`` where latency does not matter.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Protocol

import numpy as np


class StreamResampler(Protocol):
    in_rate: int
    out_rate: int

    @property
    def delay(self) -> int: ...

    def process(self, x: np.ndarray) -> np.ndarray: ...

    def flush(self) -> np.ndarray: ...

    def reset(self) -> None: ...


def _kaiser_beta(atten_db: float) -> float:
    if atten_db > 50:
        return 0.1102 * (atten_db - 8.7)
    if atten_db >= 21:
        return 0.5842 * (atten_db - 21) ** 0.4 + 0.07886 * (atten_db - 21)
    return 0.0


class PolyphaseResampler:
    """Causal rational-ratio polyphase FIR resampler with a fixed integer delay.

    Passband up to 0.375 x the lower rate (6 kHz for 16 kHz), stopband from 0.5 x: nothing
    aliases. (A transition band centred on the Nyquist frequency, 7-9 kHz, folded 8-9 kHz onto
    7-8 kHz on the way down and back; the watermark's high band came out phase-scrambled and
    the default detector read the marked output as unmarked. soxr does not alias either.)
    ``atten_db`` stopband rejection.
    """

    def __init__(self, in_rate: int, out_rate: int, atten_db: float = 80.0) -> None:
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        ratio = Fraction(self.out_rate, self.in_rate)
        self.up, self.down = ratio.numerator, ratio.denominator  # L, M
        low = min(self.in_rate, self.out_rate)
        width = 0.125 * low
        cutoff = 0.5 * low - width / 2
        fs_up = self.in_rate * self.up  # the virtual upsampled rate the prototype runs at
        n_req = (atten_db - 7.95) / (2.285 * 2 * math.pi * width / fs_up) + 1
        # Symmetric length 2*D*M + 1 makes the group delay exactly D output samples.
        self._delay = max(1, math.ceil((n_req - 1) / (2 * self.down)))
        n_taps = 2 * self._delay * self.down + 1
        n = np.arange(n_taps) - (n_taps - 1) / 2
        h = np.sinc(2 * cutoff / fs_up * n) * (2 * cutoff / fs_up) * self.up
        h *= np.kaiser(n_taps, _kaiser_beta(atten_db))
        self.taps_per_phase = math.ceil(n_taps / self.up)
        padded = np.zeros(self.taps_per_phase * self.up)
        padded[:n_taps] = h
        # phases[p, i] = h[p + i*L]: output j uses phase (j*M mod L) against x[q], x[q-1], ...
        self._phases = padded.reshape(self.taps_per_phase, self.up).T.astype(np.float32)
        self._lags = np.arange(self.taps_per_phase)
        self.reset()

    @property
    def delay(self) -> int:
        """Group delay in output samples (exact)."""
        return self._delay

    def reset(self) -> None:
        k = self.taps_per_phase
        self._hist = np.zeros(k - 1, dtype=np.float32)  # last K-1 inputs
        self._n_in = 0
        self._n_out = 0

    def _available(self, n_in: int) -> int:
        return 0 if n_in <= 0 else (n_in * self.up - 1) // self.down + 1

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        k = self.taps_per_phase
        base = self._n_in - (k - 1)  # global index of ext[0]
        ext = np.concatenate([self._hist, x])
        self._n_in += x.shape[0]
        j = np.arange(self._n_out, self._available(self._n_in), dtype=np.int64)
        self._n_out += j.shape[0]
        self._hist = ext[ext.shape[0] - (k - 1) :].copy() if k > 1 else ext[:0].copy()
        if j.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        jm = j * self.down
        q = jm // self.up
        if self.up == 1 or self.down == 1:
            return self._integer_ratio(ext, base, q, j)
        p = jm % self.up
        pos = (q - base)[:, None] - self._lags[None, :]
        y = np.einsum("jk,jk->j", ext[pos], self._phases[p])
        return y.astype(np.float32, copy=False)

    def _integer_ratio(
        self, ext: np.ndarray, base: int, q: np.ndarray, j: np.ndarray
    ) -> np.ndarray:
        """48 <-> 16 kHz and the like, by np.convolve (each output the same dot product as the
        general path, without gathering a (outputs x taps) matrix: ~3x less time per chunk).

        ``np.convolve(ext, h, "valid")[s]`` is sum_i ext[s + K-1 - i] h[i]: output j, at input
        q, is entry q - base - (K-1) of its phase's convolution."""
        k = self.taps_per_phase
        s0 = int(q[0]) - base - (k - 1)
        s1 = int(q[-1]) - base - (k - 1) + 1
        seg = ext[s0 : s1 + k - 1]
        if self.up == 1:  # decimate by M: every M-th output of one filter
            y = np.convolve(seg, self._phases[0], "valid")[:: self.down]
        else:  # interpolate by L: phase p makes outputs j = L*q + p
            y = np.stack([np.convolve(seg, ph, "valid") for ph in self._phases], axis=1)
            first = int(j[0]) - self.up * int(q[0])
            y = y.reshape(-1)[first : first + j.shape[0]]
        return y.astype(np.float32, copy=False)

    def flush(self) -> np.ndarray:
        """Push zeros through so every output owed to the input so far comes out."""
        owed = math.ceil(self._n_in * self.up / self.down) + self._delay - self._n_out
        if owed <= 0:
            return np.zeros(0, dtype=np.float32)
        pad = math.ceil(owed * self.down / self.up) + 1
        y = self.process(np.zeros(pad, dtype=np.float32))
        return y[:owed]


class SoxrResampler:
    """soxr HQ stream, time-aligned (delay 0); for files where hold-back does not matter."""

    def __init__(self, in_rate: int, out_rate: int, channels: int = 1, quality: str = "HQ") -> None:
        import soxr

        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self.channels = channels
        self._quality = quality
        self._soxr = soxr
        self.reset()

    @property
    def delay(self) -> int:
        return 0

    def reset(self) -> None:
        self._rs = self._soxr.ResampleStream(
            self.in_rate, self.out_rate, self.channels, dtype="float32", quality=self._quality
        )

    def process(self, x: np.ndarray) -> np.ndarray:
        if self.in_rate == self.out_rate:
            return np.asarray(x, dtype=np.float32)
        return self._rs.resample_chunk(np.ascontiguousarray(x, dtype=np.float32))

    def flush(self) -> np.ndarray:
        if self.in_rate == self.out_rate:
            shape = (0,) if self.channels == 1 else (0, self.channels)
            return np.zeros(shape, dtype=np.float32)
        empty = np.zeros((0,) if self.channels == 1 else (0, self.channels), dtype=np.float32)
        return self._rs.resample_chunk(empty, last=True)


class Identity:
    """Pass-through for a device already at 16 kHz."""

    def __init__(self, rate: int) -> None:
        self.in_rate = self.out_rate = int(rate)

    @property
    def delay(self) -> int:
        return 0

    def reset(self) -> None:
        pass

    def process(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32).reshape(-1)

    def flush(self) -> np.ndarray:
        return np.zeros(0, dtype=np.float32)


def live_resampler(in_rate: int, out_rate: int) -> PolyphaseResampler | Identity:
    if in_rate == out_rate:
        return Identity(in_rate)
    return PolyphaseResampler(in_rate, out_rate)
