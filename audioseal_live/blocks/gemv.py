"""The products of a one-frame streaming chunk with a big float32 weight, in C (``_gemv.c``);
and, in such a step, its small convolutions split over the same two cores (below).

At 20 ms chunks the official-size generator multiplies ~50 MB of weights by one frame per
chunk: a gemv per layer, bound by how fast the weights come from memory. PyTorch's CPU wheels
do these with MKL, which on this project's AMD EPYC VMs reads them at 15-16 GB/s, on one
thread or two (measured, not explained: MKL is known to take generic code paths on non-Intel
CPUs); the plain AVX-512/AVX2 loop in ``_gemv.c`` reads 25 GB/s on one core and ~40 GB/s with
a helper thread (2048x1024 weights, 64 MB per pass). Official generator, 20 ms chunks, 2
threads: traced step 4.2 -> 2.7-3.0 ms (its 56 MB of products at ~38 GB/s).

The kernel runs as a PyTorch operator (``audioseal_live::few_rows_linear``) so that traced
steps (blocks.traced) record it like any other op. It is used where it helps and is exact:
float32 on the CPU, 1-16 rows (frames x batch), weights of at least ``BIG_WEIGHT`` elements
(smaller ones stay in cache, where MKL is as fast and costs less to call), no autograd.
Everything else, and every machine without the extension (no C compiler at install, another
CPU), uses PyTorch's own products. The sums run in another order than MKL's: results differ
in the last bits of float32 (the streamed == offline tests bound the difference at 1e-5).

``AUDIOSEAL_LIVE_NATIVE_MATMUL=0`` turns it off (A/B timing, or a suspected fault).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

ENV_SWITCH = "AUDIOSEAL_LIVE_NATIVE_MATMUL"
MAX_ROWS = 16  # frames x batch of a streaming chunk's product (a 20-100 ms chunk: 1-5)
BIG_WEIGHT = 1 << 18  # elements (1 MB in float32): smaller weights stay in cache anyway
# How long the helper spins for a chunk's products once woken: the official generator's first
# product comes ~0.5 ms into its 20 ms step (a sleeping helper needs ~50-100 us to get up)
WAKE_NS = 2_000_000

OP = "audioseal_live::few_rows_linear"  # the op's name in a traced graph
_local = threading.local()  # .threads: the override of threads(), per calling thread


def _load() -> ModuleType | None:
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return None
    try:
        from audioseal_live.blocks import _gemv  # type: ignore[attr-defined]  # noqa: PLC0415
    except ImportError:
        return None
    return _gemv if _gemv.kernel() else None


_ext = _load()


def kernel() -> str:
    """The instruction set the C products use ('avx512', 'avx2'), or '' where PyTorch's are
    used (no extension built, another CPU, or switched off)."""
    return _ext.kernel() if _ext is not None else ""


def threads() -> int:
    """Threads a product may use: one, unless :func:`threads_for_products` says more.

    Only a step whose other ops run on one thread hands the second core to the products (a
    helper thread in ``_gemv.c``): beside torch's own threads, which spin between their ops,
    the helper would put three busy threads on two cores (official generator, 20 ms chunks,
    2 threads: eager step 5.9 -> 7.2 ms with it, traced 2-thread graph 4.2 -> 5.1 ms).
    """
    return getattr(_local, "threads", 1)


@contextlib.contextmanager
def threads_for_products(n: int) -> Iterator[None]:
    """Let the products this thread calls use ``n`` threads meanwhile (1 or 2 make sense)."""
    before, _local.threads = threads(), n
    try:
        yield
    finally:
        _local.threads = before


@contextlib.contextmanager
def ops_on_one_thread(wake: bool = False) -> Iterator[None]:
    """Torch's intra-op threads at one for this thread meanwhile (OpenMP and MKL keep the
    setting per thread), restored after; the products keep the count it had, so a step whose
    small ops gain nothing from splitting still reads its big weights on two cores.
    ``wake``: the step will run products; the helper gets up now (it spins for a while)."""
    before = torch.get_num_threads()
    if wake and before > 1 and _ext is not None:
        _ext.wake(WAKE_NS)  # the helper up before the chunk's first product needs it
    torch.set_num_threads(1)
    try:
        with threads_for_products(before):
            yield
    finally:
        torch.set_num_threads(before)


def uses_helper() -> bool:
    """Whether a product here would take a second core (so nothing else should meanwhile)."""
    return _ext is not None and threads() > 1


def _few_rows_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # The op's CPU kernel. Checks again what linear() checked: a traced graph may hand it a
    # tensor with other strides (TorchScript pools equal constants, whatever their layout).
    ok = (
        x.dtype == weight.dtype == torch.float32
        and x.dim() == 2
        and weight.dim() == 2
        and x.shape[1] == weight.shape[1]
        and x.is_contiguous()
        and weight.is_contiguous()
        and (bias is None or _plain_bias(bias, len(weight)))
    )
    if not ok or _ext is None:
        return F.linear(x, weight, bias)
    rows, k = x.shape
    m = weight.shape[0]
    y = x.new_empty(rows, m)
    b = 0 if bias is None else bias.data_ptr()
    _ext.linear(y.data_ptr(), weight.data_ptr(), x.data_ptr(), b, rows, m, k, threads())
    return y


def _plain_bias(bias: Tensor, m: int) -> bool:
    # (m,) only: PyTorch broadcasts an (m, 1) bias along the rows, or refuses it
    return bias.dtype == torch.float32 and bias.is_contiguous() and bias.shape == (m,)


def _register(op: str, args: str, kernel: Callable[..., Tensor]) -> None:
    """Define the PyTorch operator ``op`` (``namespace::name``) with CPU kernel ``kernel``."""
    namespace, name = op.split("::")
    if hasattr(getattr(torch.ops, namespace), name):  # this module imported again
        return
    lib = torch.library.Library(namespace, "FRAGMENT")
    lib.define(f"{name}({args}) -> Tensor")
    lib.impl(name, kernel, "CPU")
    _LIBS.append(lib)  # the registration lasts as long as its Library object


_LIBS: list[torch.library.Library] = []
_ready = _ext is not None
if _ready:
    _register(OP, "Tensor x, Tensor weight, Tensor? bias", _few_rows_linear)


# ---- small convolutions on two cores -------------------------------------------------------
# A 20 ms step of the official generator spends ~0.7 ms in convolutions of 1-5 MFLOP each (the
# high-rate layers), on one core while the helper waits for the next big product. Where the
# helper is awake, ``conv1d`` splits each in two (frames, or output channels) and runs one
# half on it: im2col and the BLAS PyTorch itself uses (MKL's sgemm_, found in the loaded
# libtorch_cpu), so each output is computed as on one thread. 1.5-1.9x per layer in isolation.
CONV_OP = "audioseal_live::conv1d"
# Inputs up to this many values (a quarter second at 32 channels): bigger ones are oneDNN's,
# which is faster there (blocks.conv), and would keep megabytes of im2col per thread.
CONV_MAX_INPUT = 1 << 17


def _blas_ready() -> bool:
    if _ext is None or not hasattr(_ext, "blas_init"):
        return False
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        return bool(os.path.exists(lib) and _ext.blas_init(lib))
    except Exception:  # an unexpected build of PyTorch: its own convolutions then
        return False


def _conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: int, stride: int) -> Tensor:
    # The op's CPU kernel: x (B, C_in, T), weight (C_out, C_in * kernel), like F.conv1d.
    ok = (
        x.dtype == weight.dtype == torch.float32
        and x.dim() == 3
        and weight.dim() == 2
        and x.shape[1] * kernel == weight.shape[1]
        and x.shape[2] >= kernel
        and x.is_contiguous()
        and weight.is_contiguous()
        and (bias is None or _plain_bias(bias, len(weight)))
    )
    if not ok or not _blas or _ext is None:
        w = weight.view(weight.shape[0], x.shape[1], kernel)
        return F.conv1d(x, w, bias, stride)
    batch, cin, t = x.shape
    m = weight.shape[0]
    frames = (t - kernel) // stride + 1
    y = x.new_empty(batch, m, frames)
    b = 0 if bias is None else bias.data_ptr()
    sizes = (cin, t, kernel, stride, frames, m, threads())
    for i in range(batch):
        _ext.conv(y[i].data_ptr(), weight.data_ptr(), x[i].data_ptr(), b, *sizes)
    return y


_blas = _blas_ready()
_conv_ready = _blas
if _conv_ready:
    _register(CONV_OP, "Tensor x, Tensor weight, Tensor? bias, int kernel, int stride", _conv1d)


def conv_kernel() -> bool:
    """Whether :func:`conv1d` can split convolutions here (the C extension found a BLAS)."""
    return _conv_ready


def conv_applies(x: Tensor, weight: Tensor) -> bool:
    """Whether a streaming convolution of ``x`` with this (small) weight goes to
    :func:`conv1d`: where its products would use the helper, in float32 on the CPU (the
    caller checks that its model's big products keep the helper awake)."""
    return (
        _conv_ready
        and threads() > 1
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.numel() < BIG_WEIGHT
        and x.numel() <= CONV_MAX_INPUT
        and not (torch.is_grad_enabled() and _needs_grad(x, weight))
    )


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: int, stride: int = 1) -> Tensor:
    """``F.conv1d`` (no padding or dilation) with ``weight`` as (C_out, C_in * kernel),
    contiguous; in halves on two cores where the helper is awake (see above)."""
    args = (x.contiguous(), weight, None if bias is None else bias.contiguous(), kernel, stride)
    if not torch.jit.is_tracing():  # (as few_rows_linear)
        return _conv1d(*args)
    return torch.ops.audioseal_live.conv1d(*args)


def applies(x2: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether ``x2 @ weight.T + bias`` (x2 2-D) goes to the C products."""
    return (
        _ready
        and 1 <= x2.shape[0] <= MAX_ROWS
        and weight.dtype == torch.float32
        and x2.dtype == torch.float32
        and weight.numel() >= BIG_WEIGHT
        and weight.is_contiguous()
        and weight.device.type == "cpu"
        and x2.device.type == "cpu"
        and (bias is None or (bias.dtype == torch.float32 and bias.shape == weight.shape[:1]))
        and not (torch.is_grad_enabled() and _needs_grad(x2, weight, bias))
    )


def _needs_grad(*tensors: Tensor | None) -> bool:
    return any(t is not None and t.requires_grad for t in tensors)


def few_rows_linear(x2: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x2, weight, bias)`` through the C products (call where :func:`applies`)."""
    args = (x2.contiguous(), weight, None if bias is None else bias.contiguous())
    if not torch.jit.is_tracing():  # the op is for traced graphs: eager calls skip the
        return _few_rows_linear(*args)  # dispatcher's trip back into Python (official eager: -5 %)
    return torch.ops.audioseal_live.few_rows_linear(*args)
