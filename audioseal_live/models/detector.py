"""The detector: SEANet encoder → transposed conv back to the sample rate → 1×1 conv."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audioseal_live.blocks import StreamingConvTranspose1d
from audioseal_live.models.base import CardModel
from audioseal_live.models.cards import ModelCard
from audioseal_live.models.seanet import SEANetEncoder


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
    """Detector with the reference's API: ``detect_watermark(x)`` and ``det(x)``."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card)
        self.detector = nn.Sequential(
            SEANetEncoderKeepDimension(card), nn.Conv1d(card.output_dim, 2 + card.nbits, 1)
        )

    def logits(self, x: Tensor, sample_rate: int | None = None) -> Tensor:
        """Raw per-sample outputs (B, 2 + nbits, T): 2 detection logits, then bit logits."""
        self._check_input(x, sample_rate)
        return self.detector(x)

    def frame_outputs(self, x: Tensor, sample_rate: int | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample P(marked) (B, T) and raw bit logits (B, nbits, T)."""
        out = self.logits(x, sample_rate)
        return torch.softmax(out[:, :2], dim=1)[:, 1], out[:, 2:]

    def forward(self, x: Tensor, sample_rate: int | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample probabilities (B, 2, T) [unmarked, marked], bit probabilities (B, nbits)."""
        out = self.logits(x, sample_rate)
        return torch.softmax(out[:, :2], dim=1), torch.sigmoid(out[:, 2:].mean(dim=-1))

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
