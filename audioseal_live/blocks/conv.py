"""Causal convolution and transposed convolution that stream exactly.

Offline (not streaming) both follow the SEANet padding rules of audiocraft/moshi, so that
official checkpoints give the same outputs as the reference implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from audioseal_live.blocks import gemv
from audioseal_live.blocks.streaming import StreamingModule, linear

PAD_MODES = ("constant", "reflect", "replicate", "zeros")
# PyTorch's own CPU convolution (im2col + GEMM); a private binding, so only if present
_THNN_CONV2D = getattr(torch._C._nn, "thnn_conv2d", None)


def pad1d(x: torch.Tensor, left: int, right: int, mode: str = "constant") -> torch.Tensor:
    """F.pad that also reflects inputs shorter than the padding (zeros appended first)."""
    if mode == "zeros":
        mode = "constant"
    if mode == "reflect":
        length = x.shape[-1]
        extra = max(left, right) - length + 1 if length <= max(left, right) else 0
        if extra:
            x = F.pad(x, (0, extra))
        padded = F.pad(x, (left, right), mode)
        return padded[..., : padded.shape[-1] - extra]
    return F.pad(x, (left, right), mode)


class StreamingConv1d(StreamingModule):
    """Conv1d with SEANet padding; while streaming it caches the left context it still needs.

    Streaming emits every output frame that the samples seen so far determine: for stride 1
    that is one frame per input sample, for stride s one frame per s samples once the kernel
    is filled. The cache holds the samples from the next frame's start.
    """

    _carried = ("_cache",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        causal: bool = True,
        pad_mode: str = "constant",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if stride > kernel_size:
            raise ValueError("stride must not exceed kernel_size")
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride, dilation=dilation, bias=bias
        )
        self.causal = causal
        self.pad_mode = pad_mode
        self.stride = stride
        self.effective_kernel = (kernel_size - 1) * dilation + 1
        self.padding_total = self.effective_kernel - stride
        self._patch_size = in_channels * kernel_size  # inputs per output value
        self._cache: torch.Tensor | None = None

    def _reset_state(self) -> None:
        self._cache = None

    def _select_state(self, index: torch.Tensor) -> None:
        if self._cache is not None:
            self._cache = self._cache[index]

    def _extra_padding(self, length: int) -> int:
        """Right padding so that the last window is full (audiocraft's pad_for_conv1d)."""
        k, s, p = self.effective_kernel, self.stride, self.padding_total
        n_frames = (length - k + p) / s + 1
        ideal_length = (math.ceil(n_frames) - 1) * s + (k - p)
        return ideal_length - length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_streaming:
            extra = self._extra_padding(x.shape[-1])
            if self.causal:
                x = pad1d(x, self.padding_total, extra, self.pad_mode)
            else:
                right = self.padding_total // 2
                x = pad1d(x, self.padding_total - right, right + extra, self.pad_mode)
            return self.conv(x)

        self._check_batch(x)
        if x.shape[-1] == 0:  # an empty chunk (zero hops) changes nothing
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        if self.padding_total == 0 and self.stride == 1:  # pointwise in time: nothing to carry
            return self._conv_split(x) if self._splits(x) else self._conv(x)
        if self._cache is None:
            # First chunk: the same left padding as offline (zeros for the official cards).
            x = pad1d(x, self.padding_total, 0, self.pad_mode)
        else:
            x = torch.cat([self._cache, x], dim=-1)
        n_frames = (x.shape[-1] - self.effective_kernel) // self.stride + 1
        if n_frames <= 0:
            self._cache = x
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        self._cache = x[..., n_frames * self.stride :]
        if self._splits(x):
            return self._conv_split(x)
        if n_frames * 16 <= self._patch_size:
            return self._conv_as_matmul(x)
        return self._conv(x)

    def _splits(self, x: torch.Tensor) -> bool:
        """Whether this chunk's convolution runs in halves on two cores (blocks.gemv.conv1d:
        where a step's big products have a helper thread, which waits meanwhile)."""
        return (
            self._split_convs
            and self.conv.dilation[0] == 1
            and gemv.conv_applies(x, self.conv.weight)
        )

    def _conv_split(self, x: torch.Tensor) -> torch.Tensor:
        w = self._weights.get(("2d", False))
        if w is None:  # (out, in * k), once per stream
            w = self.conv.weight.detach().reshape(self.conv.out_channels, -1).contiguous()
            self._weights[("2d", False)] = w
        return gemv.conv1d(x, w, self.conv.bias, self.conv.kernel_size[0], self.stride)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """``self.conv(x)`` for a streaming chunk: PyTorch's own CPU kernel (im2col + GEMM)
        called directly, except where PyTorch's pick (oneDNN) is clearly faster.

        Up to 20,480 input values (every layer at 20 ms chunks) PyTorch picks that kernel
        itself on one thread; called directly, each call saves the ~8 us of conv1d's dispatch
        (10 convolutions per 20 ms chunk of the default detector). oneDNN takes strided layers
        over that size (15-25 % faster there), layers with a kernel and several outputs over
        131,072 values (a quarter second and more at 32 channels: 1.6-2.5x faster on this
        project's AVX-512 VM, e.g. 32->16 k3 over 16,000 samples 990 vs 390 us; nearer 1x
        below, within the noise in-model at 100-200 ms chunks), and any layer whose im2col
        buffer would pass 4 MB (32->1 k7 over 16,000 samples: 1.8 ms vs 0.5 in-model).
        Official generator, 1 s chunks, eager, interleaved A/B: p50 60.8 -> 53.8 ms.
        """
        conv = self.conv
        if _THNN_CONV2D is None or conv.dilation[0] != 1 or x.device.type != "cpu":
            return conv(x)
        kernel_size, values = conv.kernel_size[0], x.numel()
        if x.dtype != torch.float32 or (
            (self.stride > 1 and values > 20480)
            or (kernel_size > 1 and values > 1 << 17 and conv.out_channels > 1)
            or values * kernel_size > 1 << 20  # im2col values (4 MB)
        ):
            return conv(x)
        weight = self._stream_weight4d()
        kernel, stride = [1, weight.shape[-1]], [1, self.stride]
        return _THNN_CONV2D(x.unsqueeze(2), weight, kernel, conv.bias, stride, [0, 0]).squeeze(2)

    def _stream_weight4d(self) -> torch.Tensor:
        w = self._weights.get(("4d", False))
        if w is None:  # (out, in, 1, k), once per stream
            w = self._weights[("4d", False)] = self.conv.weight.detach().unsqueeze(2).contiguous()
        return w

    def _conv_as_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """The same convolution as one GEMM over unfolded patches.

        For the few frames of a streaming chunk and a large kernel (the deep, wide layers),
        PyTorch's CPU conv1d (im2col + GEMM, or oneDNN set-up) costs 2-3x more than this.
        """
        dilation = self.conv.dilation[0]
        patches = x.unfold(-1, self.effective_kernel, self.stride)  # (B, Cin, F, K_eff)
        if dilation > 1:
            patches = patches[..., ::dilation]
        patches = patches.permute(0, 2, 1, 3).reshape(x.shape[0], patches.shape[2], -1)
        weight = self._stream_weight(
            "patches",
            lambda: self.conv.weight.reshape(self.conv.out_channels, -1),
            patches.shape[0] * patches.shape[1],
        )
        return linear(patches, weight, self.conv.bias).transpose(1, 2)


def conv_transpose_overlap_add(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    weight_t: torch.Tensor | None = None,
    split: bool = False,
) -> torch.Tensor:
    """F.conv_transpose1d without bias, as one matmul and an overlap-add.

    PyTorch's CPU transposed convolution (slow_conv_transpose2d) takes milliseconds for the
    few frames of a streaming chunk; the same product as a single GEMM takes microseconds.
    ``weight_t`` is the weight as (Cout*K, Cin), contiguous, if the caller keeps one (it may
    be a low-precision copy; the result keeps x's dtype). ``split``: the product may run in
    halves on two cores (blocks.gemv.conv1d, as a pointwise convolution).
    """
    cin, cout, kernel = weight.shape
    if weight_t is not None:  # its rows set the output channels (e.g. a 1x1 conv folded in)
        cout = weight_t.shape[0] // kernel
    if kernel % stride:
        return F.conv_transpose1d(x, weight, None, stride)
    batch, _, frames = x.shape
    parts = kernel // stride
    if weight_t is None:
        weight_t = weight.reshape(cin, cout * kernel).t()
    if split and weight_t.is_contiguous() and gemv.conv_applies(x, weight_t):
        # as a pointwise convolution on two cores (blocks.gemv.conv1d): (B, Cout*K, T)
        zt = gemv.conv1d(x, weight_t, None, 1)
        if parts == 1:
            return zt.view(batch, cout, stride, frames).transpose(2, 3).reshape(batch, cout, -1)
        z = zt.view(batch, cout, parts, stride, frames).transpose(3, 4)
    else:
        # (B, T, Cin) @ (Cin, Cout*K) → (B, T, Cout, parts, stride)
        z = linear(x.transpose(1, 2), weight_t)
        if parts == 1:  # kernel == stride: frames do not overlap, nothing to add up
            return z.view(batch, frames, cout, stride).transpose(1, 2).reshape(batch, cout, -1)
        z = z.view(batch, frames, cout, parts, stride).permute(0, 2, 3, 1, 4)
    y = x.new_zeros(batch, cout, (frames + parts - 1) * stride)
    for p in range(parts):  # part p of frame t lands at (t + p) * stride
        y[..., p * stride : (p + frames) * stride] += z[:, :, p].reshape(
            batch, cout, frames * stride
        )
    return y


class StreamingConvTranspose1d(StreamingModule):
    """ConvTranspose1d with SEANet trimming; while streaming it carries the overlap.

    Each input frame yields ``stride`` finished samples; the last ``kernel - stride`` samples
    of every call are partial sums that the next call completes (causal, all trimming on the
    right, as in every official card).
    """

    _carried = ("_partial",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        causal: bool = True,
        trim_right_ratio: float = 1.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= trim_right_ratio <= 1.0:
            raise ValueError("trim_right_ratio must lie in [0, 1]")
        if not causal and trim_right_ratio != 1.0:
            raise ValueError("trim_right_ratio != 1.0 only makes sense for causal convolutions")
        self.convtr = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride, bias=bias)
        self.causal = causal
        self.trim_right_ratio = trim_right_ratio
        self.stride = stride
        self.padding_total = kernel_size - stride
        self._partial: torch.Tensor | None = None

    def _reset_state(self) -> None:
        self._partial = None

    def _select_state(self, index: torch.Tensor) -> None:
        if self._partial is not None:
            self._partial = self._partial[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_streaming:
            y = self.convtr(x)
            if self.causal:
                right = math.ceil(self.padding_total * self.trim_right_ratio)
            else:
                right = self.padding_total // 2
            left = self.padding_total - right
            return y[..., left : y.shape[-1] - right]

        self._check_batch(x)
        n_ready = x.shape[-1] * self.stride
        if n_ready == 0:
            return x.new_zeros(x.shape[0], self.convtr.out_channels, 0)
        w = self.convtr.weight  # as (Cout*K, Cin), contiguous: a plain row-major GEMM
        weight_t = self._stream_weight(
            "t", lambda: w.reshape(w.shape[0], -1).t(), x.shape[0] * x.shape[-1]
        )
        y = conv_transpose_overlap_add(x, w, self.stride, weight_t, self._split_convs)
        if self._partial is not None:
            y[..., : self.padding_total] += self._partial
        self._partial = y[..., n_ready:]
        y = y[..., :n_ready]
        if self.convtr.bias is not None:
            y = y + self.convtr.bias[:, None]
        return y
