"""SEANet encoder and decoder from streaming blocks (module tree mirrors audiocraft/moshi).

The module names and Sequential indices are those of the reference, so state-dict keys of
official checkpoints map onto ours by dropping their wrapper levels (see checkpoint.py).
"""

from __future__ import annotations

from torch import Tensor, nn

from audioseal_live.blocks import (
    StreamingAdd,
    StreamingConv1d,
    StreamingConvTranspose1d,
    StreamingLSTM,
)
from audioseal_live.models.cards import ACTIVATIONS, SEANetCard


def make_activation(name: str, params: dict[str, float] | None) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {ACTIVATIONS}")
    return getattr(nn, name)(**(params or {}))


class ResnetBlock(nn.Module):
    """SEANet residual block: (act, conv k) → (act, conv 1) added to the skip."""

    def __init__(self, dim: int, card: SEANetCard, dilation: int) -> None:
        super().__init__()
        hidden = dim // card.compress
        specs = [(dim, hidden, card.residual_kernel_size, dilation), (hidden, dim, 1, 1)]
        layers: list[nn.Module] = []
        for cin, cout, k, d in specs:
            layers += [
                make_activation(card.activation, card.activation_params),
                StreamingConv1d(
                    cin, cout, k, dilation=d, causal=card.causal, pad_mode=card.pad_mode
                ),
            ]
        self.block = nn.Sequential(*layers)
        self.shortcut: nn.Module = (
            nn.Identity()
            if card.true_skip
            else StreamingConv1d(dim, dim, 1, causal=card.causal, pad_mode=card.pad_mode)
        )
        self.add = StreamingAdd()

    def forward(self, x: Tensor) -> Tensor:
        return self.add(self.shortcut(x), self.block(x))


class SEANetEncoder(nn.Module):
    """Audio (B, 1, T) → latent frames (B, dimension, T / hop)."""

    def __init__(self, card: SEANetCard) -> None:
        super().__init__()
        self.card = card
        c = card
        mult = 1
        layers: list[nn.Module] = [
            StreamingConv1d(
                c.channels, c.n_filters, c.kernel_size, causal=c.causal, pad_mode=c.pad_mode
            )
        ]
        for ratio in reversed(c.ratios):
            width = mult * c.n_filters
            layers += [
                ResnetBlock(width, c, c.dilation_base**j) for j in range(c.n_residual_layers)
            ]
            layers += [
                make_activation(c.activation, c.activation_params),
                StreamingConv1d(
                    width, width * 2, ratio * 2, stride=ratio, causal=c.causal, pad_mode=c.pad_mode
                ),
            ]
            mult *= 2
        if c.lstm:
            layers.append(StreamingLSTM(mult * c.n_filters, num_layers=c.lstm))
        layers += [
            make_activation(c.activation, c.activation_params),
            StreamingConv1d(
                mult * c.n_filters,
                c.dimension,
                c.last_kernel_size,
                causal=c.causal,
                pad_mode=c.pad_mode,
            ),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class SEANetDecoder(nn.Module):
    """Latent frames (B, dimension, F) → audio (B, 1, F * hop)."""

    def __init__(
        self,
        card: SEANetCard,
        final_activation: str | None = None,
        final_activation_params: dict[str, float] | None = None,
        trim_right_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        c = card
        mult = 2 ** len(c.ratios)
        layers: list[nn.Module] = [
            StreamingConv1d(
                c.dimension, mult * c.n_filters, c.kernel_size, causal=c.causal, pad_mode=c.pad_mode
            )
        ]
        if c.lstm:
            layers.append(StreamingLSTM(mult * c.n_filters, num_layers=c.lstm))
        for ratio in c.ratios:
            width = mult * c.n_filters
            layers += [
                make_activation(c.activation, c.activation_params),
                StreamingConvTranspose1d(
                    width,
                    width // 2,
                    ratio * 2,
                    stride=ratio,
                    causal=c.causal,
                    trim_right_ratio=trim_right_ratio,
                ),
            ]
            layers += [
                ResnetBlock(width // 2, c, c.dilation_base**j) for j in range(c.n_residual_layers)
            ]
            mult //= 2
        layers += [
            make_activation(c.activation, c.activation_params),
            StreamingConv1d(
                c.n_filters, c.channels, c.last_kernel_size, causal=c.causal, pad_mode=c.pad_mode
            ),
        ]
        if final_activation is not None:
            layers.append(make_activation(final_activation, final_activation_params))
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z)
