"""The detector: SEANet encoder → transposed conv back to the sample rate → 1×1 conv."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from audioseal_live.blocks import StreamingConvTranspose1d
from audioseal_live.blocks.conv import conv_transpose_overlap_add
from audioseal_live.models.base import CardModel
from audioseal_live.models.cards import ModelCard
from audioseal_live.models.message_code import CodeRead, CodeReader, Folded
from audioseal_live.models.seanet import SEANetEncoder

# How much better the bit head must agree with the flipped code to call the audio inverted.
POLARITY_EVIDENCE = 0.4


class SEANetEncoderKeepDimension(SEANetEncoder):
    """Encoder whose frames are spread back to one vector per sample."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card.seanet)
        hop = card.hop_length
        # kernel == stride: no overlap between frames, so it streams frame by frame.
        self.reverse_convolution = StreamingConvTranspose1d(
            card.seanet.dimension, card.output_dim, hop, stride=hop, causal=True
        )

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[-1]
        return self.reverse_convolution(self.model(x))[..., :length]


class AudioSealDetector(CardModel):
    """Detector with the reference's API: ``detect_watermark(x)`` and ``det(x)``.

    With ``card.sync_phases`` = P > 1 every call runs P copies of the input, delayed by
    ``k * hop // P`` samples (a batch of B * P inside; streaming carries the delay line), and
    the message comes from the phase whose bits are most confident. Detection probabilities
    are always those of the undelayed input (phase 0), so P = 1 is exactly the reference.
    """

    _carried = ("_tail", "_code_sum")

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card)
        self.detector = nn.Sequential(
            SEANetEncoderKeepDimension(card), nn.Conv1d(card.output_dim, 2 + card.nbits, 1)
        )
        self.phases = card.sync_phases
        self._tail: Tensor | None = None  # last hop of input, for the delayed phases
        self._active = tuple(range(self.phases))  # phases this stream runs (see select_streams)
        self._fused: tuple[Tensor, Tensor] | None = None  # folded head while streaming
        self._fused_detection: tuple[Tensor, Tensor] | None = None  # its 2 detection rows
        self.code: CodeReader | None = None  # the message's reader, if the card has a code
        self._code_sum: tuple[Tensor, Tensor] | None = None  # the stream's folded frames
        if card.template_code is not None:
            code = card.template_code
            self.code = CodeReader(code, card.nbits, self.hop_length, card.sample_rate)

    @contextmanager
    def streaming(
        self,
        batch_size: int = 1,
        matmul_dtype: str | torch.dtype | None = None,
        traced: bool = False,
    ) -> Iterator[AudioSealDetector]:
        """As :meth:`StreamingRoot.streaming`; the inner batch is batch_size * phases."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with super().streaming(batch_size * self.phases, matmul_dtype, traced):
            yield self

    def _on_stream_start(self) -> None:
        self._tail = None
        self._code_sum = None
        self._active = tuple(range(self.phases))
        self._fused = self._fold_head()
        # A code card's streamed det(x) takes its bits from the code: only the 2 detection
        # outputs are needed per sample, 1/9 of the folded head's weight (1.47 MB for the
        # default, read from memory every chunk: ~0.2 ms of its ~1.2 ms per 20 ms).
        self._fused_detection = self._fold_head(2) if self.code is not None else None

    def _fold_head(self, rows: int | None = None) -> tuple[Tensor, Tensor] | None:
        """(weight (C_out * K, dimension) for the overlap-add matmul, bias (C_out,)) of the
        transposed conv followed by the first ``rows`` outputs of the 1x1 conv (all: None);
        weights are frozen while streaming. None unless kernel == stride (frames that overlap
        keep the unfolded path)."""
        up = self.detector[0].reverse_convolution.convtr
        if up.kernel_size[0] != up.stride[0]:
            return None
        head = self.detector[1]
        with torch.no_grad():
            w1 = head.weight[:rows, :, 0]  # (rows, C)
            w = torch.einsum("oc,dck->dok", w1, up.weight)  # (dimension, rows, K)
            bias = head.bias[:rows] + (w1 @ up.bias if up.bias is not None else 0.0)
            return w.reshape(w.shape[0], -1).t().contiguous(), bias.detach()

    def _on_stream_stop(self) -> None:
        self._tail = None
        self._code_sum = None
        self._active = tuple(range(self.phases))
        self._fused = self._fused_detection = None

    def signals_streaming(self) -> int | None:
        batch = self.stream_batch  # signals x the phases still running
        return None if batch is None else batch // len(self._active)

    @property
    def active_phases(self) -> tuple[int, ...]:
        """The grid phases this call runs: all of them unless a stream narrowed them."""
        return self._active

    def select_streams(self, index: list[int] | Tensor, phases: list[int] | None = None) -> None:
        """Carry on with the signals ``index`` of the batch and, if given, only the grid
        ``phases`` (numbers in [0, P) among those still running), state intact.

        A live monitor searches every phase of x and -x, then keeps the one pair that carries
        the mark: a quarter (P = 4) to an eighth of the work, without a restart. After it,
        outputs have len(phases) phases and P(marked) is that of the first kept phase.
        """
        signals = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        keep = self._active if phases is None else tuple(int(k) for k in phases)
        if not keep or any(k not in self._active for k in keep):
            raise ValueError(f"phases must be among the running ones {self._active}, got {keep}")
        n = len(self._active)
        pos = torch.tensor([self._active.index(k) for k in keep], dtype=torch.long)
        super().select_streams((signals[:, None] * n + pos[None, :]).reshape(-1))
        if self._tail is not None:
            self._tail = self._tail[signals]
        if self._code_sum is not None:
            self._code_sum = (self._code_sum[0][signals], self._code_sum[1][signals])
        self._active = keep

    def _delayed(self, x: Tensor) -> Tensor:
        """(B, 1, T) -> (B * P, 1, T): phase k is x delayed by k * hop // P samples."""
        if self._active == (0,):
            return x
        hop = self.hop_length
        prev = (
            self._tail
            if self.is_streaming and self._tail is not None
            else x.new_zeros(x.shape[0], 1, hop)
        )
        ext = torch.cat([prev, x], dim=-1)
        if self.is_streaming:
            self._tail = ext[..., -hop:]
        length = x.shape[-1]
        starts = [hop - k * hop // self.phases for k in self._active]
        return torch.stack([ext[..., s : s + length] for s in starts], dim=1).flatten(0, 1)

    def phase_logits(self, x: Tensor, sample_rate: int | None = None) -> Tensor:
        """Raw per-sample outputs of every phase (B, P, 2 + nbits, T)."""
        self.release_traced_state()
        self._check_input(x, sample_rate)
        out = self._run(self._delayed(x))
        return out.view(x.shape[0], len(self._active), *out.shape[1:])

    def _run(self, x: Tensor) -> Tensor:
        """``self.detector(x)``; while streaming with the 1x1 output conv folded into the
        transposed conv before it (both linear, kernel == stride): ~45 % of the detector's
        time per chunk went to the 32-channel per-sample features between them."""
        self._start_recurrent(x)
        if not self.is_streaming or self._fused is None:
            with self._chunk_threads(x):
                return self.detector(x)
        return self._run_folded(x, self._fused)

    def _run_folded(self, x: Tensor, fused: tuple[Tensor, Tensor]) -> Tensor:
        encoder = self.detector[0]
        up = encoder.reverse_convolution
        weight_t, bias = fused
        with self._chunk_threads(x):
            frames = encoder.model(x)  # (B, dimension, F)
            out = conv_transpose_overlap_add(frames, up.convtr.weight, up.stride, weight_t)
        return (out + bias[:, None])[..., : x.shape[-1]]

    def logits(self, x: Tensor, sample_rate: int | None = None) -> Tensor:
        """Raw per-sample outputs (B, 2 + nbits, T) of phase 0: 2 detection logits, then bits.

        Offline this is one plain pass (training uses it); while streaming every phase runs,
        so that the delay lines stay in step.
        """
        if self.phases == 1 or not self.is_streaming:
            self.release_traced_state()
            self._check_input(x, sample_rate)
            return self._run(x)
        return self.phase_logits(x, sample_rate)[:, 0]

    def frame_outputs(self, x: Tensor, sample_rate: int | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample P(marked) (B, T) and raw bit logits of every phase (B, P, nbits, T)."""
        out = self.phase_logits(x, sample_rate)
        return torch.softmax(out[:, 0, :2], dim=1)[:, 1], out[:, :, 2:]

    def forward(self, x: Tensor, sample_rate: int | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample probabilities (B, 2, T) [unmarked, marked], bit probabilities (B, nbits).

        A card with a template code reads the message with the code's reader over the
        whole input (see ``models.message_code``), not with the bit head."""
        length = x.shape[-1] if isinstance(x, Tensor) else 0
        with self._ragged_end(x) as x:  # a stream's ragged last chunk (cut back below)
            if self.traced_streaming and x.shape[-1] == length:
                self._check_input(x, sample_rate)  # (the graph checks only for NaN)
                return self._stepped("forward", self._whole_outputs, x, layout=self._phases_running)
            self.release_traced_state()  # the modules carry the state for an eager call
            return self._outputs(x, sample_rate, length)

    def _phases_running(self) -> tuple[int, ...]:
        return self._active  # a traced step's layout: its graphs are per set of phases

    def _whole_outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._outputs(x, None, x.shape[-1])

    def _outputs(self, x: Tensor, sample_rate: int | None, length: int) -> tuple[Tensor, Tensor]:
        """:meth:`forward` of a chunk of whole hops (while streaming) that was ``length``
        samples before padding."""
        if self._fused_detection is not None and self.phases == 1:  # streaming, a code card
            self._check_input(x, sample_rate)
            out = self._run_folded(x, self._fused_detection)
            return torch.softmax(out, dim=1)[..., :length], self._stream_message(x)
        out = self.phase_logits(x, sample_rate)[..., :length]
        if self.code is not None:
            probs = torch.softmax(out[:, 0, :2], dim=1)
            if self.is_streaming:
                return probs, self._stream_message(x)
            read = self.code.read_offline(x)
            z = read.z * self.code_polarity(x, read)[:, None]
            return self.with_code_presence(probs, x), torch.sigmoid(z)
        mean_logits = out[:, :, 2:].mean(dim=-1)  # (B, P, nbits)
        best = most_confident_phase(mean_logits)
        message = mean_logits[torch.arange(x.shape[0], device=x.device), best]
        return torch.softmax(out[:, 0, :2], dim=1), torch.sigmoid(message)

    def _stream_message(self, x: Tensor) -> Tensor:
        """While streaming: the message read over everything streamed so far (the folded
        frames are carried state; chunks are whole hops), as it comes, polarity unchecked."""
        assert self.code is not None
        part = self.code.fold(x[:, 0])
        spec, power = part.spec, part.power
        if self._code_sum is not None:
            spec, power = spec + self._code_sum[0], power + self._code_sum[1]
        self._code_sum = (spec, power)
        read = self.code.read(Folded(spec, power, 1))  # frames > 0: a count of 1
        assert read is not None
        return read.probabilities

    def with_code_presence(self, probs: Tensor, x: Tensor) -> Tensor:
        """(B, 2, T) with P(marked) raised to the code's own evidence where it is higher.

        The code is read on 1 s windows every 0.24 s (``CodeReader.presence``): it lives in
        300-3400 Hz, so it is still found where the network's detection is not (low-passed,
        telephone band, 8 kHz resampled: measured in the model card). Offline only.
        """
        frames = self.sample_rate // self.hop_length  # 1 s windows, every 0.24 s
        code = self.code.presence(x, window=frames, stride=frames // 4)  # type: ignore[union-attr]
        marked = torch.maximum(probs[:, 1], code)
        return torch.stack([1 - marked, marked], dim=1)

    def code_polarity(self, x: Tensor, read: CodeRead, undecided: float = 1.0) -> Tensor:
        """(B,) +1, or -1 where the audio reached us inverted (the code's bits then read
        flipped: a sign code cannot tell by itself); ``undecided`` where the head cannot tell
        either way (+1: read the bits as they come).

        The bit head reads its bits only on the generator's frame grid, which the code's sync
        has just found: cropped onto it, x and -x are read by the head, and the audio counts
        as inverted when the head's bits agree clearly better with the flipped code (by more
        than ``POLARITY_EVIDENCE`` on a [-2, 2] scale). Measured on the default model, 64 test
        windows of speech and music at random shifts: +0.83..+1.16 (5th-95th percentile) as
        recorded, the mirror image inverted, and -0.19..+0.18 once low-passed at 3.5 kHz,
        band-passed to the telephone band or resampled to 8 kHz, where the head reads nothing:
        there the bits are read as they come. Offline only (not while streaming: these passes
        would disturb the stream's state).
        """
        hop = self.hop_length
        length = x.shape[-1] - hop
        if length < hop:
            return x.new_full((x.shape[0],), undecided)
        idx = read.lag.to(x.device)[:, None] + torch.arange(length, device=x.device)
        aligned = x[:, 0].gather(1, idx)[:, None]  # each signal from its grid on
        out = self._run(torch.cat([aligned, -aligned]))[:, 2:]
        head = torch.tanh(out.mean(dim=-1)).view(2, x.shape[0], -1)  # (+/-, B, nbits)
        sign = (2 * read.bits.to(x.device) - 1).to(head.dtype)
        agree = (head[0] * sign).mean(-1) - (head[1] * -sign).mean(-1)
        told = torch.where(agree > POLARITY_EVIDENCE, 1.0, undecided)
        return torch.where(agree < -POLARITY_EVIDENCE, -1.0, told).to(x.dtype)

    def decode_message(self, result: Tensor) -> Tensor:
        """The reference's decode: bit logits (B, nbits, T) -> P(bit = 1) (B, nbits), their
        mean over time through a sigmoid (e.g. ``det.logits(x)[:, 2:]``). A card with a
        template code reads its message with the code instead: ``det(x)[1]``."""
        return torch.sigmoid(result.mean(dim=-1))

    def detect_watermark(
        self,
        x: Tensor,
        sample_rate: int | None = None,
        message_threshold: float = 0.5,
        detection_threshold: float = 0.5,
    ) -> tuple[Tensor, Tensor]:
        """Fraction of samples judged marked (B,) and the decoded message (B, nbits) ints."""
        result, message = self.forward(x, sample_rate)
        detected = torch.gt(result[:, 1, :], detection_threshold)
        prob = torch.count_nonzero(detected, dim=-1) / result.shape[-1]
        return prob, torch.gt(message, message_threshold).int()


def most_confident_phase(mean_logits: Tensor) -> Tensor:
    """(..., P, nbits) averaged bit logits -> index (...) of the phase with the surest bits."""
    return mean_logits.abs().mean(dim=-1).argmax(dim=-1)
