"""Streaming state protocol: modules keep a cache across calls while streaming.

Like moshi and audiocraft, the state lives in the module itself. A model enters streaming with
``with model.streaming(batch_size):``; every submodule that is a :class:`StreamingModule` then
carries its cache from one call to the next, and leaving the block drops all caches. Outside
streaming the same modules compute the offline (whole-signal) result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class StreamingModule(nn.Module):
    """A module with a cache that only exists while streaming."""

    def __init__(self) -> None:
        super().__init__()
        self._streaming_batch: int | None = None

    @property
    def is_streaming(self) -> bool:
        return self._streaming_batch is not None

    def _start_streaming(self, batch_size: int) -> None:
        self._streaming_batch = batch_size
        self._reset_state()

    def _stop_streaming(self) -> None:
        self._streaming_batch = None
        self._reset_state()

    def _reset_state(self) -> None:
        """Drop the cache; the next call starts a fresh stream."""

    def _check_batch(self, x: torch.Tensor) -> None:
        if x.shape[0] != self._streaming_batch:
            raise ValueError(
                f"streaming was entered with batch_size={self._streaming_batch}, "
                f"but a chunk with batch size {x.shape[0]} arrived"
            )


class StreamingRoot(nn.Module):
    """Mixin for whole models: the ``streaming()`` context and ``reset_streaming()``."""

    def _streaming_modules(self) -> list[StreamingModule]:
        return [m for m in self.modules() if isinstance(m, StreamingModule)]

    def _check_streamable(self) -> None:
        """Raise NotImplementedError where a model cannot stream exactly (non-causal cards)."""

    @property
    def is_streaming(self) -> bool:
        return any(m.is_streaming for m in self._streaming_modules())

    @contextmanager
    def streaming(self, batch_size: int = 1) -> Iterator[StreamingRoot]:
        """Carry state across calls inside the block; leaving it resets every cache."""
        self._check_streamable()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.is_streaming:
            raise RuntimeError("this model is already streaming; leave the first block first")
        modules = self._streaming_modules()
        for m in modules:
            m._start_streaming(batch_size)
        self._on_stream_start()
        try:
            yield self
        finally:
            for m in modules:
                m._stop_streaming()
            self._on_stream_stop()

    def reset_streaming(self) -> None:
        """Start a new stream without leaving the streaming block (e.g. after a seek)."""
        for m in self._streaming_modules():
            if m.is_streaming:
                m._reset_state()
        self._on_stream_start()

    def _on_stream_start(self) -> None:
        """Hook for model-level stream state (e.g. the message kept for the stream)."""

    def _on_stream_stop(self) -> None:
        """Hook for model-level stream state."""


class StreamingAdd(StreamingModule):
    """Residual add that aligns both branches.

    With causal stride-1 branches both sides always have the same length; a branch that emits
    ahead of the other (possible in general) has its surplus kept for the next call, so the
    sum is always of aligned samples.
    """

    def __init__(self) -> None:
        super().__init__()
        self._rest_a: torch.Tensor | None = None
        self._rest_b: torch.Tensor | None = None

    def _reset_state(self) -> None:
        self._rest_a = None
        self._rest_b = None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not self.is_streaming or (
            self._rest_a is None and self._rest_b is None and a.shape[-1] == b.shape[-1]
        ):
            return a + b
        if self._rest_a is not None:
            a = torch.cat([self._rest_a, a], dim=-1)
            self._rest_a = None
        if self._rest_b is not None:
            b = torch.cat([self._rest_b, b], dim=-1)
            self._rest_b = None
        n = min(a.shape[-1], b.shape[-1])
        if a.shape[-1] > n:
            self._rest_a = a[..., n:]
        if b.shape[-1] > n:
            self._rest_b = b[..., n:]
        return a[..., :n] + b[..., :n]
