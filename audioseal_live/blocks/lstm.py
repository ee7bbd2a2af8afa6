"""LSTM over (B, C, T) with a skip connection; while streaming it carries (h, c).

Streaming chunks are a handful of frames (one frame per 20 ms chunk). PyTorch's fused CPU LSTM
(oneDNN) costs ~4 ms per call at that size, mostly set-up; the plain loop below does the same
arithmetic in ~0.2-2 ms. From 16 frames on (chunks of 320 ms and more) the fused kernel wins
again and is used, with the carried (h, c); offline (long sequences, training) always uses it.

At one frame per chunk every product is a gemv that streams its weight from memory, and the
recurrent half of each layer's gates (``h @ W_hh``) needs only the carried h: in a traced
step (blocks.traced) a model (``models.base.CardModel._start_recurrent``) has it run on
torch's inter-op pool (another core) while the convolutions before the LSTM run. The same
products, added in the same order, so the floats do not change. Not where blocks.gemv's C
products have the second core already (a one-thread step of a process given two).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from audioseal_live.blocks.streaming import BIG_WEIGHT, StreamingModule, linear

FUSED_MIN_STEPS = 16  # in-model crossover on 2 CPU threads: 5 frames loop 1.5 ms vs fused 4.4 ms


LayerWeights = tuple[Tensor, Tensor, Tensor]  # W_ih (4H, C), W_hh (4H, H), b_ih + b_hh


def lstm_weights(lstm: nn.LSTM, layer: int) -> LayerWeights:
    w_ih = getattr(lstm, f"weight_ih_l{layer}")
    w_hh = getattr(lstm, f"weight_hh_l{layer}")
    bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
    return w_ih, w_hh, bias


def recurrent_terms(weights: list[list[Tensor]], *hs: Tensor) -> list[Tensor]:
    """``h @ W_hh`` of every layer of several LSTMs, for their carried h (layers, B, H), in
    one flat list: the recurrent half of each layer's first gates, which does not depend on
    the chunk. (Flat: a tracer records a nested list from a forked call as a constant.)"""
    pairs = zip(hs, weights, strict=True)
    return [linear(h[layer], w) for h, ws in pairs for layer, w in enumerate(ws)]


def lstm_steps(
    layers: list[LayerWeights],
    x: Tensor,
    state: tuple[Tensor, Tensor] | None,
    first_recurrent: list[Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Unfused LSTM over x (T, B, C); same gate order and maths as nn.LSTM (i, f, g, o).

    The matrices may be low-precision copies (bfloat16); gates, h and c stay in x's dtype.
    ``first_recurrent``: :func:`recurrent_terms` of ``state``, if computed already.
    """
    steps, batch, _ = x.shape
    hidden = layers[0][1].shape[1]
    if state is None:
        zeros = x.new_zeros(len(layers), batch, hidden)
        state = (zeros, zeros)
    h_all, c_all = state
    h_out, c_out = [], []
    for layer, (w_ih, w_hh, bias) in enumerate(layers):
        # Input projections of all steps in one matmul; only h @ W_hh is sequential.
        proj = linear(x.reshape(steps * batch, -1), w_ih, bias).view(steps, batch, -1)
        h, c = h_all[layer], c_all[layer]
        ys = []
        for t in range(steps):
            if t == 0 and first_recurrent is not None:
                gates = proj[t] + first_recurrent[layer]
            else:
                gates = proj[t] + linear(h, w_hh)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            ys.append(h)
        x = torch.stack(ys)
        h_out.append(h)
        c_out.append(c)
    return x, (torch.stack(h_out), torch.stack(c_out))


class StreamingLSTM(StreamingModule):
    _carried = ("_state",)

    # Whether h @ W_hh may be handed to another thread (recurrent_inputs): worth it where the
    # weights come from memory (official width: 4 x 4 MB per generator step; 2-core VM,
    # 20 ms chunks, one intra-op thread, interleaved A/B: 8.2 -> 7.4 ms p50); the default
    # model's 64-wide LSTM stays in cache and would only pay the hand-over.
    parallel_recurrent = True

    def __init__(self, dimension: int, num_layers: int = 2, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.lstm = nn.LSTM(dimension, dimension, num_layers)
        self._state: tuple[Tensor, Tensor] | None = None
        self._layer_cache: dict[int, list[LayerWeights]] = {}
        # (the h it started from, the future, where its terms start) until forward() takes it
        self._recurrent: tuple[Tensor, torch.jit.Future[list[Tensor]], int] | None = None

    def _reset_state(self) -> None:
        # called on entering and leaving a stream: the matmul dtype may change in between
        self._state = None
        self._layer_cache = {}
        self._recurrent = None

    def _select_state(self, index: Tensor) -> None:
        self._recurrent = None
        if self._state is not None:  # (layers, batch, hidden)
            self._state = (self._state[0][:, index], self._state[1][:, index])

    def recurrent_inputs(self) -> tuple[Tensor, list[Tensor]] | None:
        """(carried h, the W_hh it multiplies) if this chunk's ``h @ W_hh`` may be computed
        ahead on another thread: not before the first frame, off the CPU, or where the
        weights are small enough to stay in cache (the hand-over would cost more)."""
        if self._state is None or not self.parallel_recurrent:
            return None
        h = self._state[0]
        hidden = self.lstm.hidden_size
        if h.device.type != "cpu" or 4 * hidden * hidden < BIG_WEIGHT:
            return None
        return h, [w for _, w, _ in self._layers(h.shape[1])]

    def give_recurrent(self, h: Tensor, terms: torch.jit.Future[list[Tensor]], first: int) -> None:
        """The future of :func:`recurrent_terms` that includes ``h``'s, from item ``first``
        of its list on, for the next :meth:`forward` to take."""
        self._recurrent = (h, terms, first)

    def _take_recurrent(self) -> list[Tensor] | None:
        pending, self._recurrent = self._recurrent, None
        if pending is None or self._state is None or pending[0] is not self._state[0]:
            return None  # none started, or started from an h that is no longer the state
        first = pending[2]
        return torch._C.wait(pending[1])[first : first + self.lstm.num_layers]

    def _layers(self, rows: int) -> list[LayerWeights]:
        # Built once per stream (weights are frozen while streaming), not per chunk; the
        # input projection's layout follows its rows (frames x batch), h @ W_hh is a gemv.
        rows = int(rows)  # while tracing a tensor, which would key a new copy per trace
        layers = self._layer_cache.get(rows)
        if layers is None:
            layers = []
            for layer in range(self.lstm.num_layers):
                w_ih, w_hh, bias = lstm_weights(self.lstm, layer)
                layers.append(
                    (
                        self._stream_weight(f"ih{layer}", lambda w=w_ih: w, rows),
                        self._stream_weight(f"hh{layer}", lambda w=w_hh: w),
                        bias.detach(),  # the summed bias stays float32, like the gates
                    )
                )
            self._layer_cache[rows] = layers
        return layers

    def forward(self, x: Tensor) -> Tensor:
        if self.is_streaming:
            self._check_batch(x)
        x = rearrange(x, "b c t -> t b c")
        if self.is_streaming:
            if x.shape[0] == 0:  # nothing determined yet: keep (h, c) as they are
                return rearrange(x, "t b c -> b c t")
            first = self._take_recurrent()
            if x.shape[0] < FUSED_MIN_STEPS:
                layers = self._layers(x.shape[0] * x.shape[1])
                y, self._state = lstm_steps(layers, x, self._state, first)
            else:
                y, self._state = self.lstm(x, self._state)
        else:
            y, _ = self.lstm(x)
        if self.skip:
            y = y + x
        return rearrange(y, "t b c -> b c t")
