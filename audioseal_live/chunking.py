"""Any chunk size in, the same size out: a fixed delay of ``hop - 1`` samples.

The models stream exactly on whole hops (320 samples at 16 kHz). Live sources deliver other
sizes (1, 7, 511 samples …). :class:`ChunkedStream` buffers input until whole hops are there,
and returns, for every call, exactly as many samples as it was given: the model output delayed
by ``delay = hop - 1`` samples (zeros before the first). ``flush()`` pads the last partial hop
with zeros and returns the remaining ``delay`` (+ padding) samples, so that the concatenation
of all outputs, minus its first ``delay`` samples, equals the offline output on the signal
padded with zeros to whole hops (on the unpadded signal the last partial hop can differ, a
model's last frame then seeing zeros instead of nothing; ~1e-3 for the default generator).

    with ChunkedStream(gen, message=msg) as stream:
        out = [stream(chunk) for chunk in chunks] + [stream.flush()]
    marked = torch.cat(out, -1)[..., stream.delay:]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from audioseal_live.models.base import check_audio
from audioseal_live.models.detector import AudioSealDetector
from audioseal_live.models.generator import AudioSealWM


class ChunkedStream:
    def __init__(
        self,
        model: AudioSealWM | AudioSealDetector,
        batch_size: int = 1,
        fn: Callable[[Tensor], Tensor] | None = None,
        **call_kwargs: Any,
    ) -> None:
        """``fn`` maps whole hops to outputs; by default the generator's watermarked audio
        (``model(x, **call_kwargs)``) or the detector's raw per-sample logits."""
        self.model = model
        self.batch_size = batch_size
        self.hop = model.hop_length
        self.delay = self.hop - 1
        if fn is None:
            if isinstance(model, AudioSealDetector):
                fn = model.logits
            else:

                def fn(x: Tensor) -> Tensor:
                    return model(x, **call_kwargs)

        self.fn = fn
        self._ctx: Any = None
        self._pending: Tensor | None = None  # input not yet a whole hop
        self._ready: Tensor | None = None  # output not yet returned
        self._flushed = False

    def __enter__(self) -> ChunkedStream:
        self._ctx = self.model.streaming(self.batch_size)
        self._ctx.__enter__()
        self._pending = None
        self._ready = None
        self._flushed = False
        return self

    def __exit__(self, *exc: object) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.__exit__(*exc)

    def __call__(self, x: Tensor) -> Tensor:
        """Output of the same length as x, ``delay`` samples behind.

        A chunk the model refuses (NaN, a wrong shape or message...) raises and changes
        nothing: the stream goes on as if it had not been sent."""
        if self._ctx is None:
            raise RuntimeError("use ChunkedStream inside a 'with' block")
        if self._flushed:
            raise RuntimeError(
                "this ChunkedStream was flushed (its last hop padded with zeros): "
                "a new 'with' block starts another stream"
            )
        # Checked whole here, before any of it is buffered: a chunk shorter than a hop
        # would otherwise reach the model only with the next one, which it then took down
        # with it, and every later one after it.
        check_audio(x, None, self.model.sample_rate, self.model.weights_dtype())
        if x.shape[0] != self.batch_size:
            raise ValueError(
                f"this stream carries {self.batch_size} signal(s) (ChunkedStream's "
                f"batch_size), but a chunk with batch size {x.shape[0]} arrived"
            )
        ready = self._ready
        if ready is None:  # the fixed delay: zeros ahead of the first output
            ready = x.new_zeros(*self._shape_out(x), self.delay)
        ready, pending = self._run(x, ready)
        length = x.shape[-1]
        self._pending = pending
        out, self._ready = ready[..., :length], ready[..., length:]
        return out

    def _run(self, x: Tensor, ready: Tensor) -> tuple[Tensor, Tensor]:
        """(the output held, with that of x's whole hops added; the input left over): the
        model runs before anything here changes."""
        buf = x if self._pending is None else torch.cat([self._pending, x], dim=-1)
        n = buf.shape[-1] - buf.shape[-1] % self.hop
        if n:
            ready = torch.cat([ready, self.fn(buf[..., :n])], dim=-1)
        return ready, buf[..., n:]

    def _shape_out(self, x: Tensor | None = None) -> tuple[int, ...]:
        if isinstance(self.model, AudioSealDetector):
            return (self.batch_size if x is None else x.shape[0], 2 + self.model.nbits)
        if x is None:
            return (self.batch_size, self.model.card.seanet.channels)
        return tuple(x.shape[:-1])

    def flush(self) -> Tensor:
        """Pad the last partial hop with zeros; return every output sample still held. The
        stream ends here (another call raises; a new 'with' block starts a new one)."""
        if self._flushed:
            return torch.zeros(*self._shape_out(), 0)
        self._flushed = True
        pending, ready = self._pending, self._ready
        if ready is None:  # nothing was streamed
            return torch.zeros(*self._shape_out(), 0)
        if pending is not None and pending.shape[-1]:
            pad = pending.new_zeros(*pending.shape[:-1], self.hop - pending.shape[-1])
            ready, _ = self._run(pad, ready)
        self._pending, self._ready = None, None
        return ready
