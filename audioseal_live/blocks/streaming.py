"""Streaming state protocol: modules keep a cache across calls while streaming.

Like moshi and audiocraft, the state lives in the module itself. A model enters streaming with
``with model.streaming(batch_size):``; every submodule that is a :class:`StreamingModule` then
carries its cache from one call to the next, and leaving the block drops all caches. Outside
streaming the same modules compute the offline (whole-signal) result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from audioseal_live.blocks import gemv
from audioseal_live.blocks.gemv import BIG_WEIGHT

# Weight dtypes a stream may use for its matrix products. bfloat16 halves the bytes the
# one-frame gemvs of a 20 ms chunk read (they are memory-bound); activations, sums and
# state stay float32.
MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_matmul_dtype(value: str | torch.dtype | None) -> torch.dtype:
    """torch.float32 / torch.bfloat16 from a dtype or its name; ValueError otherwise."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        if value in MATMUL_DTYPES.values():
            return value
    elif value in MATMUL_DTYPES:
        return MATMUL_DTYPES[value]
    raise ValueError(f"matmul_dtype must be one of {sorted(MATMUL_DTYPES)}, got {value!r}")


FEW_ROWS = 16  # rows (frames) up to which linear() multiplies the weight from the left


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear where ``weight`` may be a low-precision copy; the result is x's dtype.

    Inputs are flattened to 2-D first: a 3-D input goes through bmm, which copies the
    weight on every call (most of the time of a one-frame chunk).
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if gemv.applies(x2, weight, bias):  # big float32 weight, a chunk's few frames: C products
        y = gemv.few_rows_linear(x2, weight, bias)
    elif (
        weight.dtype == x.dtype
        and 1 < x2.shape[0] <= FEW_ROWS
        and weight.numel() >= BIG_WEIGHT
        and weight.is_contiguous()  # as the left operand MKL wants it row-major
    ):
        # A few rows (the frames of a chunk) against a big weight: as x @ W.T, MKL first packs
        # the whole weight (a second pass over a matrix that comes from DRAM every chunk);
        # as W @ x.T it streams it once. Official card, 5 frames: 0.85 -> 0.5 ms (4 MB),
        # 1.8 -> 0.9 ms (8 MB). The result is a transposed view; callers reshape, not view.
        xt = x2.contiguous().t()
        y = (torch.mm(weight, xt) if bias is None else torch.addmm(bias[:, None], weight, xt)).t()
    elif weight.dtype == x.dtype:
        y = F.linear(x2, weight, bias)
    else:
        y = F.linear(x2.to(weight.dtype), weight).to(x.dtype)
        if bias is not None:
            y = y + bias
    return y.reshape(*lead, weight.shape[0])


class StreamingModule(nn.Module):
    """A module with a cache that only exists while streaming."""

    # attributes that carry the stream's state between calls (see blocks.traced)
    _carried: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._streaming_batch: int | None = None
        self._matmul_dtype = torch.float32
        self._weights: dict[tuple[str, bool], torch.Tensor] = {}
        self._split_convs = False  # set by the streaming root (StreamingRoot.streaming)

    @property
    def is_streaming(self) -> bool:
        return self._streaming_batch is not None

    def _start_streaming(self, batch_size: int, dtype: torch.dtype = torch.float32) -> None:
        self._streaming_batch = batch_size
        self._matmul_dtype = dtype
        self._weights = {}
        self._reset_state()

    def _stop_streaming(self) -> None:
        self._streaming_batch = None
        self._matmul_dtype = torch.float32
        self._weights = {}
        self._reset_state()

    def _stream_weight(
        self, key: str, make: Callable[[], torch.Tensor], rows: int = 1
    ) -> torch.Tensor:
        """A weight (out, in) laid out (and cast) for this stream's matmuls, once per stream
        and layout; ``rows``: how many rows the products with it have (frames x batch).

        A one-frame chunk makes every product a gemv, bound by how fast the weight streams
        from memory. In float32 a tall weight stored with its longer side contiguous streams
        ~2x faster on this project's CPUs (2048x512 gemv: 430 us row-major, 180 us as a
        transposed view; the maths is the same). With a few rows, :func:`linear` multiplies
        a big weight from the left, which wants it row-major. bfloat16 kernels prefer
        row-major at every size (5x512 @ 512x2048: 100 us vs 430 us in float32). Weights are
        frozen while streaming (inference), so the copy stays valid until the stream ends.
        """
        one_row = int(rows) == 1  # a tracer hands sizes over as tensors, which hash by identity
        w = self._weights.get((key, one_row))
        if w is None:
            w = make().detach().to(self._matmul_dtype)
            # (blocks.gemv's C products, where built, want every big weight row-major)
            tall = w.shape[0] > w.shape[1] and w.dtype == torch.float32
            if tall and one_row and not (gemv.kernel() and w.numel() >= BIG_WEIGHT):
                w = w.t().contiguous().t()
            else:
                w = w.contiguous()
            self._weights[(key, one_row)] = w
        return w

    def _reset_state(self) -> None:
        """Drop the cache; the next call starts a fresh stream."""

    def _select_state(self, index: torch.Tensor) -> None:
        """Keep only the batch entries ``index`` of the cache (batch is dim 0 by default)."""

    def _select_streams(self, index: torch.Tensor) -> None:
        self._streaming_batch = int(index.numel())
        self._select_state(index)

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

    def _splits_convolutions(self) -> bool:
        """Whether this model's streaming convolutions may run in halves on two cores
        (blocks.gemv.conv1d): where its big products keep a helper thread awake anyway."""
        return False

    @property
    def is_streaming(self) -> bool:
        # A flag that streaming() (the only way in) keeps: walking every submodule instead
        # cost ~0.2 ms per call, and the models ask several times per chunk.
        return bool(self.__dict__.get("_streaming_now", False))

    @contextmanager
    def streaming(
        self,
        batch_size: int = 1,
        matmul_dtype: str | torch.dtype | None = None,
        traced: bool = False,
    ) -> Iterator[StreamingRoot]:
        """Carry state across calls inside the block; leaving it resets every cache.

        ``matmul_dtype="bfloat16"`` streams with bfloat16 copies of the large weights (about
        2x faster on CPUs with AVX512-BF16 at one frame per chunk); the output then differs
        from the exact float32 stream by ~1e-3 of the watermark's scale.

        ``traced=True``: once a chunk shape comes a second time, chunks of that shape run
        through a traced TorchScript graph of the step (blocks.traced, as the real-time engine
        runs its models): the same floats with most of the Python per chunk gone (official
        generator, 20 ms chunks: ~0.9 ms less per chunk). The call that traces takes longer
        (~0.4 s for the official generator); outputs carry no autograd history. Shapes whose
        eager step takes over 25 ms (long chunks) stay eager (blocks.traced.EAGER_ENOUGH_S).
        """
        self._check_streamable()
        dtype = resolve_matmul_dtype(matmul_dtype)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.is_streaming:
            raise RuntimeError("this model is already streaming; leave the first block first")
        modules = self._streaming_modules()
        split = self._splits_convolutions()
        for m in modules:
            m._start_streaming(batch_size, dtype)
            m._split_convs = split
        self.__dict__["_streaming_now"] = True
        self.__dict__["_stream_batch"] = batch_size  # what reset_streaming() goes back to
        self.__dict__["_batch_now"] = batch_size  # what the modules expect (select_streams)
        # this stream's traced steps by name (traced=True), dropped with the stream: their
        # graphs hold this stream's weight copies as constants
        self.__dict__["_stream_steps"] = {} if traced else None
        self._new_epoch()
        self._on_stream_start()
        try:
            yield self
        finally:
            self.release_traced_state()
            self.__dict__["_stream_steps"] = None
            self.__dict__["_streaming_now"] = False
            self._new_epoch()
            for m in modules:
                m._stop_streaming()
            self._on_stream_stop()

    @property
    def traced_streaming(self) -> bool:
        """Whether this stream was entered with ``traced=True``."""
        return self.__dict__.get("_stream_steps") is not None

    @property
    def stream_steps(self) -> dict[str, Any]:
        """This stream's traced steps (blocks.traced.StreamStep) by name; empty unless it
        was entered with ``traced=True``."""
        return self.__dict__.get("_stream_steps") or {}

    def release_traced_state(self) -> None:
        """Put the state a traced step holds back into the modules, which then carry it:
        before anything reads or cuts the modules' state (``select_streams``)."""
        for step in self.stream_steps.values():
            step.release()

    def select_streams(self, index: list[int] | torch.Tensor) -> None:
        """Carry on with only these batch entries of the stream, their state intact.

        E.g. a monitor that streamed a signal and its inverse keeps the one that carries the
        mark: half the work from then on, and no restart (a fresh state needs a while to
        settle). The next chunks must have the new batch size.
        """
        modules = [m for m in self._streaming_modules() if m.is_streaming]
        if not modules:
            raise RuntimeError("select_streams() needs a running stream (inside streaming())")
        self.release_traced_state()
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        batch = modules[0]._streaming_batch or 0
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= batch:
            raise ValueError(f"stream indices must lie in [0, {batch}), got {idx.tolist()}")
        for m in modules:
            m._select_streams(idx)
        self.__dict__["_batch_now"] = int(idx.numel())
        self._on_select_streams(idx)

    def reset_streaming(self) -> None:
        """Start a new stream without leaving the streaming block (e.g. after a seek), with
        the batch size the block was entered with (undoing any :meth:`select_streams`).
        Outside a streaming block there is no stream to reset: it does nothing."""
        if not self.is_streaming:
            return
        batch = self.__dict__.get("_stream_batch")
        for m in self._streaming_modules():
            if m.is_streaming:
                m._streaming_batch = batch
                m._reset_state()
        self.__dict__["_batch_now"] = batch
        self._new_epoch()
        self._on_stream_start()

    @property
    def stream_epoch(self) -> int:
        """Changes whenever the modules' state starts afresh (entering or leaving
        ``streaming()``, ``reset_streaming()``): state held elsewhere is stale after it."""
        return int(self.__dict__.get("_epoch", 0))

    def _new_epoch(self) -> None:
        self.__dict__["_epoch"] = self.stream_epoch + 1

    @property
    def stream_batch(self) -> int | None:
        """The batch size the next chunk must have while streaming (None: not streaming)."""
        return self.__dict__.get("_batch_now") if self.is_streaming else None

    def _on_stream_start(self) -> None:
        """Hook for model-level stream state (e.g. the message kept for the stream)."""

    def _on_stream_stop(self) -> None:
        """Hook for model-level stream state."""

    def _on_select_streams(self, index: torch.Tensor) -> None:
        """Hook: keep the batch entries ``index`` of model-level stream state."""


class StreamingAdd(StreamingModule):
    """Residual add that aligns both branches.

    With causal stride-1 branches both sides always have the same length; a branch that emits
    ahead of the other (possible in general) has its surplus kept for the next call, so the
    sum is always of aligned samples.
    """

    _carried = ("_rest_a", "_rest_b")

    def __init__(self) -> None:
        super().__init__()
        self._rest_a: torch.Tensor | None = None
        self._rest_b: torch.Tensor | None = None

    def _reset_state(self) -> None:
        self._rest_a = None
        self._rest_b = None

    def _select_state(self, index: torch.Tensor) -> None:
        self._rest_a = None if self._rest_a is None else self._rest_a[index]
        self._rest_b = None if self._rest_b is None else self._rest_b[index]

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
