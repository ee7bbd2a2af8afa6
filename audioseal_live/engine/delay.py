"""Delay line that holds the untouched full-band original until its watermark is ready."""

from __future__ import annotations

import numpy as np

from audioseal_live.engine.ring import Fifo


class DelayLine:
    """FIFO primed with ``delay`` zeros: ``pop(n)`` returns the input from ``delay`` samples ago.

    The watermark path (resample down -> model -> resample up) has a fixed group delay; the
    original is pushed here and popped exactly as many samples as the watermark path emits, so
    sample k of the output is ``original[k - delay] + watermark[k]`` with both aligned.
    """

    def __init__(self, delay: int) -> None:
        self.delay = int(delay)
        self._fifo = Fifo(4096 + self.delay)
        self.reset()

    def reset(self) -> None:
        self._fifo.clear()
        self._fifo.push(np.zeros(self.delay, dtype=np.float32))

    def push(self, x: np.ndarray) -> None:
        self._fifo.push(x)

    def pop(self, n: int) -> np.ndarray:
        return self._fifo.pop(n)

    def __len__(self) -> int:
        return len(self._fifo)
