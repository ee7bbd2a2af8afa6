"""Single-producer / single-consumer float32 ring buffer on a preallocated numpy array.

Lock-free by construction: the producer only advances ``_w`` and the consumer only ``_r``;
both are monotonically increasing Python ints, and a plain attribute store is atomic under the
GIL. The producer writes the samples *before* publishing the new ``_w``, so the consumer never
reads unwritten data. Safe to call from a PortAudio callback: no allocation beyond numpy views,
no locks, no logging.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """Mono float32 SPSC ring. Counters: ``overflow_events`` (writes that did not fit) and
    ``overflow_samples`` (samples they dropped)."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._w = 0  # total samples ever written (producer-owned)
        self._r = 0  # total samples ever read (consumer-owned)
        self.overflow_events = 0
        self.overflow_samples = 0

    @property
    def fill(self) -> int:
        return self._w - self._r

    @property
    def space(self) -> int:
        return self.capacity - (self._w - self._r)

    @property
    def total_written(self) -> int:
        return self._w

    @property
    def total_read(self) -> int:
        return self._r

    def _room_for(self, n: int) -> int:
        """How many of n samples fit; the excess is counted as an overflow."""
        space = self.capacity - (self._w - self._r)
        if n > space:
            self.overflow_events += 1
            self.overflow_samples += n - space
            return space
        return n

    def write(self, x: np.ndarray) -> int:
        """Producer: copy as much of ``x`` as fits; the excess is dropped and counted."""
        n = self._room_for(x.shape[0])
        if n <= 0:
            return 0
        start = self._w % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = x[:first]
        if first < n:
            self._buf[: n - first] = x[first:n]
        self._w += n  # publish after the copy
        return n

    def write_scaled_sum(self, x: np.ndarray, gain: float) -> int:
        """Producer helper for multi-channel callbacks: write ``gain * x.sum(axis=1)``.

        Sums channel by channel straight into the ring so the callback allocates nothing.
        """
        n = self._room_for(x.shape[0])
        if n <= 0:
            return 0
        start = self._w % self.capacity
        first = min(n, self.capacity - start)
        for lo, hi, off in ((start, start + first, 0), (0, n - first, first)):
            if hi <= lo:
                continue
            dst = self._buf[lo:hi]
            np.copyto(dst, x[off : off + hi - lo, 0])
            for c in range(1, x.shape[1]):
                dst += x[off : off + hi - lo, c]
            if gain != 1.0:
                dst *= gain
        self._w += n
        return n

    def read_into(self, out: np.ndarray) -> int:
        """Consumer: fill ``out`` from the ring; returns how many samples were available."""
        n = min(out.shape[0], self._w - self._r)
        if n <= 0:
            return 0
        start = self._r % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._buf[start : start + first]
        if first < n:
            out[first:n] = self._buf[: n - first]
        self._r += n  # release after the copy
        return n

    def read(self, n: int) -> np.ndarray:
        """Consumer (worker side, may allocate): up to ``n`` samples as a new array."""
        out = np.empty(min(n, self.fill), dtype=np.float32)
        self.read_into(out)
        return out

    def discard(self, n: int) -> int:
        """Consumer: drop up to ``n`` of the oldest samples."""
        n = max(0, min(n, self._w - self._r))
        self._r += n
        return n


class Fifo:
    """Growable single-thread FIFO for the worker's internal queues (not for callbacks)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._buf = np.zeros(max(16, capacity), dtype=np.float32)
        self._lo = 0
        self._hi = 0

    def __len__(self) -> int:
        return self._hi - self._lo

    def push(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if self._hi + n > self._buf.shape[0]:
            live = self._hi - self._lo
            if live + n > self._buf.shape[0] // 2:
                grown = np.zeros(max(2 * (live + n), self._buf.shape[0]), dtype=np.float32)
                grown[:live] = self._buf[self._lo : self._hi]
                self._buf = grown
            else:
                self._buf[:live] = self._buf[self._lo : self._hi]
            self._lo, self._hi = 0, live
        self._buf[self._hi : self._hi + n] = x
        self._hi += n

    def pop(self, n: int) -> np.ndarray:
        n = min(n, self._hi - self._lo)
        out = self._buf[self._lo : self._lo + n].copy()
        self._lo += n
        return out

    def clear(self) -> None:
        self._lo = self._hi = 0
