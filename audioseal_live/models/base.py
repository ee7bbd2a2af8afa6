"""What the generator and the detector share: a card, its properties, input checks, streaming."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Hashable, Iterator

import torch
from torch import Tensor

from audioseal_live.blocks import StreamingLSTM, StreamingRoot, gemv
from audioseal_live.blocks.lstm import recurrent_terms
from audioseal_live.errors import NotStreamableError
from audioseal_live.models.cards import STREAMING_CARD_NAMES, ModelCard

log = logging.getLogger(__name__)

# torch.jit.fork without its per-call deprecation warning (the traced steps that record it
# are torch.jit graphs too); a torch without it computes the LSTMs' products inline.
_FORK = getattr(torch._C, "fork", None)


@functools.lru_cache(8)
def _warn_once(msg: str) -> None:
    log.warning(msg)


def check_audio(
    x: Tensor, sample_rate: int | None, model_rate: int, dtype: torch.dtype | None = None
) -> None:
    """Shape, dtype (``dtype``: the model's) and finiteness of an audio batch; warn (once)
    about a foreign rate."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"audio must be a torch.Tensor shaped (batch, 1, samples), got {type(x).__name__}"
        )
    if x.ndim != 3 or x.shape[1] != 1:
        raise ValueError(f"audio must be shaped (batch, 1, samples), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"audio must be floating point, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        # e.g. float64 from soundfile.read's default; torch's own error names a bias
        have, want = str(x.dtype).removeprefix("torch."), str(dtype).removeprefix("torch.")
        raise ValueError(
            f"audio is {have} but the model's weights are {want}: pass x.to(torch.{want}) "
            "(soundfile: sf.read(path, dtype='float32'))"
        )
    if not torch.isfinite(x).all():
        raise ValueError("audio contains NaN or infinite samples")
    if sample_rate is not None:
        try:
            sample_rate = int(sample_rate)
        except (TypeError, ValueError):
            raise TypeError(f"sample_rate must be a rate in Hz, got {sample_rate!r}") from None
    if sample_rate is not None and sample_rate != model_rate:
        _warn_once(
            f"sample_rate={sample_rate} given, but the model works at {model_rate} Hz and does "
            f"not resample: resample the audio to {model_rate} Hz first"
        )


def streaming_not_supported(card: ModelCard) -> NotStreamableError:
    return NotStreamableError(
        f"{card.name!r} cannot stream: {card.why_not_streamable()}, so chunk-by-chunk output "
        f"cannot equal the whole-signal output. Use a streaming card "
        f"({', '.join(STREAMING_CARD_NAMES)}) or the embedded default."
    )


class CardModel(StreamingRoot):
    """A model built from a :class:`ModelCard`; streams only when the card is causal."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        card.validate()
        self.card = card

    @property
    def nbits(self) -> int:
        return self.card.nbits

    @property
    def hop_length(self) -> int:
        return self.card.hop_length

    @property
    def sample_rate(self) -> int:
        return self.card.sample_rate

    def _check_streamable(self) -> None:
        if not self.card.streamable:
            raise streaming_not_supported(self.card)

    @contextlib.contextmanager
    def _chunk_threads(self, x: Tensor) -> Iterator[None]:
        """While streaming a chunk of a few frames on the CPU through a model with big
        weights: torch's ops on one thread and the C products on the threads there were
        (blocks.gemv), as the engine's traced steps run. Beside torch's two threads, which
        spin between ops, the products' helper would make three busy threads on two cores
        (official generator, 20 ms chunks, eager: 7.2 ms; torch's threads alone: 5.5)."""
        frames = -(-x.shape[-1] // self.hop_length) * x.shape[0]
        if (
            self.is_streaming
            and gemv.kernel()
            and torch.get_num_threads() > 1
            and frames <= gemv.MAX_ROWS
            and x.device.type == "cpu"
            and not torch.jit.is_tracing()  # a traced step sets its own threads
            and self._has_big_weights()
        ):
            with gemv.ops_on_one_thread(wake=True):
                yield
        else:
            yield

    def _stepped(
        self,
        name: str,
        fn: Callable[..., tuple[Tensor, ...]],
        *inputs: Tensor,
        layout: Callable[[], Hashable] = lambda: None,
    ) -> tuple[Tensor, ...]:
        """``fn(*inputs)``; in a stream entered with ``traced=True``, through that stream's
        traced step ``name`` (blocks.traced), without autograd."""
        steps = self.__dict__.get("_stream_steps")
        if steps is None or torch.jit.is_tracing():
            return fn(*inputs)
        step = steps.get(name)
        if step is None:
            from audioseal_live.blocks.traced import StreamStep  # noqa: PLC0415

            step = steps[name] = StreamStep(self, fn, layout)
        with torch.no_grad():
            return step(*inputs)

    def _splits_convolutions(self) -> bool:
        # Models without big weights never wake the helper: their convolutions, 10-30 us
        # each, would pay the custom op's Python call (default generator's traced step: 0.54
        # -> 0.63 ms) for nothing.
        return gemv.conv_kernel() and self._has_big_weights()

    def _has_big_weights(self) -> bool:
        big = self.__dict__.get("_big_weights")
        if big is None:
            big = any(p.numel() >= gemv.BIG_WEIGHT for p in self.parameters())
            self.__dict__["_big_weights"] = big
        return big

    def _start_recurrent(self, x: Tensor) -> None:
        """At a one-hop chunk on one intra-op thread, let the LSTMs start their recurrent
        products on torch's inter-op pool now, while the convolutions before them run (see
        blocks.lstm).

        Not with more frames per chunk: only the first frame's products could start early,
        and the inter-op thread would compete with the intra-op threads those bigger steps
        use (2-core VM, 100 ms chunks on 2 threads: 22 -> 36 ms). Not with more intra-op
        threads: an inter-op thread then opens its own OpenMP team, and once a process has
        more OpenMP threads than cores, libgomp stops spinning between parallel regions in
        every team, for good (the reference generator's 20 ms chunk on 2 threads in the same
        process: 20 -> 42 ms). StreamStep traces a one-thread graph separately.

        Only while tracing: outside a graph a fork runs at once on the calling thread, so an
        eager step would only pay for it. In the graph, a wait that finds the products still
        running lets the rest of the step go on on the pool's thread; that thread took its
        OpenMP setting when the pool started, which is on one thread unless other code in the
        process forked on more before (then it may open the second team this avoids).
        """
        if not self.is_streaming or x.shape[-1] != self.hop_length:
            return
        if not torch.jit.is_tracing():
            return
        if _FORK is None or torch.get_num_threads() != 1 or torch.get_num_interop_threads() < 2:
            return
        if gemv.uses_helper():  # the C products take the second core already
            return
        lstms = self.__dict__.get("_lstms")
        if lstms is None:
            lstms = self.__dict__["_lstms"] = [
                m for m in self.modules() if isinstance(m, StreamingLSTM)
            ]
        ready = [(lstm, lstm.recurrent_inputs()) for lstm in lstms]
        ready = [(lstm, inputs) for lstm, inputs in ready if inputs is not None]
        if not ready:
            return
        # One task, the LSTMs in the order the step needs them: two would put three threads
        # on a 2-core machine. The h go as the call's own arguments: a tracer records what a
        # forked call reads otherwise (lists included) as constants, as they were when traced.
        weights = [inputs[1] for _, inputs in ready]
        terms = _FORK(
            functools.partial(recurrent_terms, weights), *(inputs[0] for _, inputs in ready)
        )
        first = 0
        for lstm, (h, w_hh) in ready:
            lstm.give_recurrent(h, terms, first)
            first += len(w_hh)

    def signals_streaming(self) -> int | None:
        """How many signals each chunk must hold while streaming (None: not streaming)."""
        return self.stream_batch

    def _pad_last_chunk(self, x: Tensor) -> Tensor:
        """While streaming, a chunk that is not whole hops can only be the stream's last (a
        file's ragged end, as the reference's examples feed it): zero-padded to whole hops, so
        the caller's output, cut to the chunk's length, is the offline output of the signal
        padded with zeros (as ChunkedStream.flush gives). The stream then ends."""
        if not (self.is_streaming and isinstance(x, Tensor) and x.ndim == 3):
            return x
        rest = x.shape[-1] % self.hop_length
        if rest == 0:
            return x
        self._check_not_ended(x)
        padded = torch.nn.functional.pad(x, (0, self.hop_length - rest))
        self.__dict__["_ended"] = (self.stream_epoch, padded)  # this call may still run on it
        return padded

    @contextlib.contextmanager
    def _ragged_end(self, x: Tensor) -> Iterator[Tensor]:
        """``with self._ragged_end(x) as x:`` around a call: :meth:`_pad_last_chunk`, and a
        last chunk that is refused (NaN, a bad message...) does not end the stream: it was
        never processed, so the caller may send it again corrected."""
        padded = self._pad_last_chunk(x)
        try:
            yield padded
        except BaseException:
            ended = self.__dict__.get("_ended")
            if padded is not x and ended is not None and ended[1] is padded:
                del self.__dict__["_ended"]
            raise

    def _check_not_ended(self, x: Tensor) -> None:
        ended = self.__dict__.get("_ended")
        if self.is_streaming and ended and ended[0] == self.stream_epoch and ended[1] is not x:
            raise ValueError(
                f"this stream ended with a chunk that was not whole hops of {self.hop_length} "
                "samples; reset_streaming() or a new streaming() block starts another "
                "(audioseal_live.ChunkedStream takes any chunk sizes)"
            )

    def weights_dtype(self) -> torch.dtype | None:
        """The dtype of the weights (None: a model without any), which audio must have."""
        # Where the first parameter lives, found once (walking every module took ~0.05 ms of
        # a 0.6 ms live step); the tensor is looked up each time, since .to() and
        # load_state_dict(assign=True) may have replaced it. (A tuple: nn.Module would
        # register a module kept as an attribute.)
        where = self.__dict__.get("_first_param")
        if where is None:
            name = next((n for n, _ in self.named_parameters()), None)
            if name is None:
                where = ()
            else:
                path, _, attr = name.rpartition(".")
                where = (self.get_submodule(path), attr)
            self.__dict__["_first_param"] = where
        return where[0]._parameters[where[1]].dtype if where else None

    def _check_input(self, x: Tensor, sample_rate: int | None) -> None:
        """Valid audio, and whole hops while streaming."""
        check_audio(x, sample_rate, self.sample_rate, self.weights_dtype())
        self._check_not_ended(x)
        expected = self.signals_streaming()
        if expected is not None and x.shape[0] != expected:  # before any state changes
            raise ValueError(
                f"this stream carries {expected} signal(s), but a chunk with batch size "
                f"{x.shape[0]} arrived (streaming(batch_size), or select_streams, sets it)"
            )
        if self.is_streaming and x.shape[-1] % self.hop_length:
            raise ValueError(
                f"while streaming, chunks must be a multiple of {self.hop_length} samples "
                f"(got {x.shape[-1]}); wrap the model in audioseal_live.ChunkedStream for any size"
            )
