"""Function-preserving widening (Net2WiderNet) of a trained model: more filters, same outputs.

Training a wider model from scratch here meant starting the curriculum over (a fresh detector
at 27.5 dB SNR stayed at chance for 300+ steps). Widening a trained one instead duplicates
each channel: a copy computes the same values as its original, and the layer after it halves
its weights for both, so the network's function is unchanged. Small noise then lets the copies
drift apart so that training can use them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audioseal_live.models.base import CardModel


def _spread(w: Tensor, out_n: int, in_n: int, out_dim: int, in_dim: int) -> Tensor:
    """Tile w to out_n x in_n along (out_dim, in_dim); inputs split their weight over copies."""
    idx_out = torch.arange(out_n) % w.shape[out_dim]
    idx_in = torch.arange(in_n) % w.shape[in_dim]
    wide = w.index_select(out_dim, idx_out).index_select(in_dim, idx_in)
    counts = torch.bincount(idx_in, minlength=w.shape[in_dim]).to(w.dtype)[idx_in]
    shape = [1] * w.dim()
    shape[in_dim] = in_n
    return wide / counts.view(shape)


def _widen_lstm(old: nn.LSTM, new: nn.LSTM) -> None:
    h_old, h_new = old.hidden_size, new.hidden_size
    unit = torch.arange(h_new) % h_old
    rows = torch.cat([g * h_old + unit for g in range(4)])  # gate blocks i, f, g, o
    for name, p in new.named_parameters():
        w = getattr(old, name).detach()
        if name.startswith("bias"):
            p.copy_(w[rows])
            continue
        p.copy_(_spread(w[rows], p.shape[0], p.shape[1], 0, 1))


@torch.no_grad()
def widen(model: CardModel, wide: CardModel, noise: float = 0.0, seed: int = 0) -> CardModel:
    """Copy ``model``'s plain (folded) weights into ``wide``, a model of the same card with
    more filters; ``noise`` adds N(0, noise * std) to each widened weight. Returns ``wide``."""
    olds = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    for name, new in wide.named_modules():
        old = olds.get(name)
        if isinstance(new, nn.LSTM) and isinstance(old, nn.LSTM):
            _widen_lstm(old, new)
        elif isinstance(new, nn.ConvTranspose1d) and isinstance(old, nn.ConvTranspose1d):
            # weight (in, out, k)
            n_in, n_out = new.weight.shape[:2]
            new.weight.copy_(_spread(old.weight.detach(), n_out, n_in, 1, 0))
            if new.bias is not None:
                new.bias.copy_(old.bias[torch.arange(n_out) % old.bias.shape[0]])
        elif isinstance(new, nn.Conv1d) and isinstance(old, nn.Conv1d):
            n_out, n_in = new.weight.shape[:2]
            new.weight.copy_(_spread(old.weight.detach(), n_out, n_in, 0, 1))
            if new.bias is not None:
                new.bias.copy_(old.bias[torch.arange(n_out) % old.bias.shape[0]])
        elif old is not None and list(new.parameters(recurse=False)):
            # a layer the width does not touch (e.g. the message embedding): copied as is
            for (_, p), (_, q) in zip(
                new.named_parameters(recurse=False),
                old.named_parameters(recurse=False),
                strict=True,
            ):
                p.copy_(q)
            continue
        else:
            continue
        if noise > 0:
            for p in new.parameters(recurse=False):
                if p.dim() > 1:
                    p.add_(noise * p.std() * torch.randn(p.shape, generator=gen))
    return wide
