"""The C products and split convolutions of blocks.gemv equal PyTorch's, on one thread and
with the helper, from several threads at once, and inside a traced streaming step."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

from audioseal_live.blocks import gemv, traced
from audioseal_live.blocks.streaming import linear
from audioseal_live.blocks.traced import StreamStep
from audioseal_live.models import OFFICIAL_CARDS, AudioSealWM

needs_kernel = pytest.mark.skipif(not gemv.kernel(), reason="no C products on this machine")


def test_the_module_is_built_where_ci_requires_it() -> None:
    """CI sets AUDIOSEAL_LIVE_REQUIRE_NATIVE=1: its x86-64 install must have compiled the
    products (optional for users: a failed build would pass silently)."""
    if os.environ.get("AUDIOSEAL_LIVE_REQUIRE_NATIVE") != "1":
        pytest.skip("only where AUDIOSEAL_LIVE_REQUIRE_NATIVE=1 (CI)")
    assert gemv.kernel() in ("avx512", "avx2")


def spy_on_ext(monkeypatch: pytest.MonkeyPatch, **replaced: Callable[..., object]) -> None:
    """blocks.gemv's C extension as it is, but for the functions ``replaced``."""
    ext = gemv._ext
    names = ("kernel", "linear", "wake", "conv")
    spy = types.SimpleNamespace(**{n: getattr(ext, n) for n in names} | replaced)
    monkeypatch.setattr(gemv, "_ext", spy)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    # float32 sums in another order: the last bits differ, relative to the sum's scale
    scale = float(b.abs().max()) + 1.0
    assert float((a - b).abs().max()) <= 2e-6 * scale


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("rows", "m", "k"),
    [(1, 64, 16), (1, 130, 1000), (2, 2048, 512), (3, 517, 33), (5, 128, 3584), (16, 67, 7)],
)
def test_products_equal_torch(threads: int, rows: int, m: int, k: int) -> None:
    """Every tail: rows not a multiple of the 2-row tile, outputs of the 4-row one, inputs of
    the 16/8-wide vectors; with the helper, blocks of ~m/16 rows."""
    g = torch.Generator().manual_seed(rows * m + k)
    x = torch.randn(rows, k, generator=g)
    w = torch.randn(m, k, generator=g)
    b = torch.randn(m, generator=g)
    with gemv.threads_for_products(threads):
        for bias in (b, None):
            y = gemv.few_rows_linear(x, w, bias)
            assert y.shape == (rows, m) and y.is_contiguous()
            close(y, F.linear(x, w, bias))


@needs_kernel
def test_a_weight_in_another_layout_gives_torch_result() -> None:
    """A traced graph may hand the op an equal constant of other strides (TorchScript pools
    them): the op then multiplies through PyTorch instead of misreading the memory."""
    w = torch.randn(512, 2048).t()  # (2048, 512), column-major
    x = torch.randn(1, 512)
    close(torch.ops.audioseal_live.few_rows_linear(x, w, None), F.linear(x, w))


def test_linear_takes_the_c_products_only_where_they_apply() -> None:
    big = torch.randn(2048, 512)
    x = torch.randn(1, 512)
    assert gemv.applies(x, big, None) == bool(gemv.kernel())
    assert not gemv.applies(torch.randn(17, 512), big, None)  # a long chunk: MKL's gemm
    assert not gemv.applies(x, torch.randn(64, 512), None)  # stays in cache
    assert not gemv.applies(x.bfloat16(), big.bfloat16(), None)
    assert not gemv.applies(x, big.t().contiguous().t(), None)
    with torch.enable_grad():
        assert not gemv.applies(x.requires_grad_(), big, None)
    y = torch.randn(1, 1, 512)
    close(linear(y, big), F.linear(y, big))


@needs_kernel
def test_callers_on_several_threads_get_their_own_results() -> None:
    """One caller at a time shares the rows with the helper; the others run alone."""
    w = torch.randn(2048, 1024)
    xs = [torch.randn(3, 1024) for _ in range(4)]
    want = [F.linear(x, w) for x in xs]
    bad: list[int] = []

    def work(i: int) -> None:
        with gemv.threads_for_products(2):
            for _ in range(200):
                if not torch.equal(gemv.few_rows_linear(xs[i], w), first[i]):
                    bad.append(i)

    first = [gemv.few_rows_linear(x, w) for x in xs]
    for got, ref in zip(first, want, strict=True):
        close(got, ref)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and not bad


@needs_kernel
def test_a_traced_step_records_the_op_and_equals_torch() -> None:
    """The official generator's traced 20 ms step runs the op (one-thread graph, products on
    two) and gives PyTorch's floats within float32 rounding."""
    torch.manual_seed(0)
    gen = AudioSealWM(OFFICIAL_CARDS["audioseal_wm_streaming"]).eval().requires_grad_(False)
    msg = torch.tensor([[1, 0] * 8])
    x = 0.1 * torch.randn(1, 1, 320 * 6)
    with torch.inference_mode(), gen.streaming(1):
        step = StreamStep(gen, lambda c, m: (gen.watermark_of(c, m),))
        with traced._intra_op_threads(1):
            ours = torch.cat([step(x[..., i : i + 320], msg)[0] for i in range(0, 1920, 320)], -1)
    assert step.traced_calls == 4
    graph = next(g for g in step._graphs.values() if g is not None)
    assert "audioseal_live::few_rows_linear" in str(graph.graph)
    with torch.inference_mode():
        whole = gen.watermark_of(x, msg)
    assert float((ours - whole).abs().max()) <= 1e-5


def test_switched_off_by_environment() -> None:
    code = "from audioseal_live.blocks import gemv; print(repr(gemv.kernel()))"
    env = {**os.environ, gemv.ENV_SWITCH: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "''"


@needs_kernel
def test_the_eager_stream_runs_its_ops_on_one_thread_and_its_products_on_two(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the engine's traced steps: the API's own streaming call of a model with big weights
    (official generator, 20 ms chunks, 2 threads) splits only its products; same floats."""
    seen: list[tuple[int, int]] = []
    ext = gemv._ext

    def linear(*args: int) -> None:
        seen.append((args[-1], torch.get_num_threads()))
        ext.linear(*args)

    torch.manual_seed(0)
    gen = AudioSealWM(OFFICIAL_CARDS["audioseal_wm_streaming"]).eval()
    msg = torch.tensor([[1, 0] * 8])
    x = 0.1 * torch.randn(1, 1, 320 * 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spy_on_ext(monkeypatch, linear=linear)
        with torch.inference_mode(), gen.streaming(1):
            two = [gen(c, message=msg) for c in x.split(320, dim=-1)]
        assert torch.get_num_threads() == 2
        assert seen and set(seen) == {(2, 1)}  # products on 2, torch's ops on 1 meanwhile
        torch.set_num_threads(1)
        seen.clear()
        with torch.inference_mode(), gen.streaming(1):
            one = [gen(c, message=msg) for c in x.split(320, dim=-1)]
        assert set(seen) == {(1, 1)}
    finally:
        torch.set_num_threads(threads)
    # Each product row's sum is the same code whichever thread ran it; the convolutions ran
    # in halves (blocks.gemv.conv1d: MKL's sgemm in other shapes than PyTorch's own kernel's)
    # on two, so the last bits may differ.
    for a, b in zip(two, one, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@needs_kernel
def test_a_woken_helper_goes_back_to_sleep_and_products_still_run() -> None:
    """wake() only sets the helper spinning for a while: products after it ran, and long
    after it (the helper asleep again), still give their results."""
    import time

    w, x = torch.randn(2048, 512), torch.randn(1, 512)
    with gemv.threads_for_products(2):
        for pause in (0.0, 0.01, 0.0):
            gemv._ext.wake(gemv.WAKE_NS)
            time.sleep(pause)  # 10 ms: past WAKE_NS, asleep again
            close(gemv.few_rows_linear(x, w), F.linear(x, w))


@needs_kernel
@pytest.mark.parametrize("model", ["default", "official"])
def test_the_helper_is_woken_only_for_steps_with_c_products(
    monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """A woken helper spins ~2 ms: the shipped model, whose weights all stay in cache, must
    not wake it every chunk; the official generator's traced step does, once per chunk."""
    from audioseal_live import AudioSeal

    wakes: list[int] = []
    spy_on_ext(monkeypatch, wake=wakes.append)
    monkeypatch.setattr(traced, "THREADS_MIN_GAIN", float("inf"))  # one-thread graphs
    torch.manual_seed(0)
    if model == "default":
        gen = AudioSeal.load_generator()
    else:
        gen = AudioSealWM(OFFICIAL_CARDS["audioseal_wm_streaming"]).eval()
    gen.requires_grad_(False)
    msg = torch.tensor([[1, 0] * 8])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        step = StreamStep(gen, lambda c, m: (gen.watermark_of(c, m),))
        with torch.inference_mode(), gen.streaming(1):
            for c in (0.1 * torch.randn(1, 1, 320 * 6)).split(320, dim=-1):
                step(c, msg)
        assert step.traced_calls == 4 and step.single_threaded
    finally:
        torch.set_num_threads(threads)
    # + the eager calls and the new graph's warm-up runs
    assert len(wakes) == (0 if model == "default" else 4 + 2 + traced.warm_up_runs())


_FORK_SCRIPT = """
import multiprocessing as mp, threading, time, torch
from audioseal_live.blocks import _gemv as g
n, m, k = 16, 8192, 8192  # a product of ~20 ms: forks land inside one
w = torch.randn(m, k)
x = torch.randn(n, k)
stop = []

def spin():  # a thread of the parent always in the middle of a product with the helper
    while not stop:
        y = torch.empty(n, m)
        g.linear(y.data_ptr(), w.data_ptr(), x.data_ptr(), 0, n, m, k, 2)

def child(q):
    x1 = torch.randn(1, k)
    ref = torch.empty(1, m)
    g.linear(ref.data_ptr(), w.data_ptr(), x1.data_ptr(), 0, 1, m, k, 1)
    g.wake(1_000_000)
    time.sleep(0.0003)
    out = torch.full((1, m), float("nan"))
    g.linear(out.data_ptr(), w.data_ptr(), x1.data_ptr(), 0, 1, m, k, 2)
    q.put(bool(torch.equal(out, ref)))  # read at once: every row written when it returned

t = threading.Thread(target=spin)
t.start()
time.sleep(0.2)
ctx = mp.get_context("fork")
q = ctx.Queue()
ok = []
for i in range(12):  # (the old code failed 2-3 of 12)
    time.sleep(0.013 * (i % 7 + 1))
    p = ctx.Process(target=child, args=(q,))
    p.start()
    p.join(60)
    ok.append(p.exitcode == 0 and q.get(timeout=5))
stop.append(1)
t.join()
print(ok)
"""


@needs_kernel
def test_a_child_forked_during_a_product_runs_its_own_products_whole() -> None:
    """fork() while another thread shares a product with the helper: the child's new helper
    ran the parent's leftover blocks and counted them into the child's next product, which
    returned with rows unwritten (review: 36-268 of 8192 in 3 of 3 children)."""
    out = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str([True] * 12)


@needs_kernel
def test_a_bias_of_another_shape_gets_torch_semantics() -> None:
    """An (m, 1) bias has m elements, but PyTorch broadcasts it along the rows (or refuses
    it): linear() must not read it as (m,)."""
    w, x, b = torch.randn(16, 16), torch.randn(16, 16), torch.randn(16, 1)
    assert not gemv.applies(x, w.repeat(1024, 1), b)
    close(torch.ops.audioseal_live.few_rows_linear(x, w, b), F.linear(x, w, b))


needs_conv = pytest.mark.skipif(not gemv.conv_kernel(), reason="no split convolutions here")


@contextlib.contextmanager
def awake_helper() -> Iterator[None]:
    """Products on two threads with the helper up (as in a step with big products): the
    convolutions then give it half of each."""
    with gemv.threads_for_products(2):
        gemv.few_rows_linear(torch.randn(1, 512), torch.randn(1024, 512))  # starts it
        gemv._ext.wake(50_000_000)  # spinning for 50 ms: the calls below find it awake
        yield


@needs_conv
@pytest.mark.parametrize("helper", [False, True])
@pytest.mark.parametrize(
    ("batch", "cin", "cout", "kernel", "stride", "frames"),
    [
        (1, 1, 32, 7, 1, 320),  # the first layer
        (1, 32, 1, 7, 1, 320),  # the last: one output channel
        (1, 32, 16, 3, 1, 320),  # frames split in halves
        (1, 64, 128, 8, 4, 40),  # strided
        (1, 256, 128, 3, 1, 8),  # few frames: output channels split
        (2, 16, 33, 5, 3, 31),  # a batch, odd sizes
        (1, 128, 7, 1, 1, 1),  # one frame, pointwise
        (1, 64, 1, 3, 1, 5),  # one output channel, few frames: an empty half
    ],
)
def test_split_convolutions_equal_torch(
    helper: bool, batch: int, cin: int, cout: int, kernel: int, stride: int, frames: int
) -> None:
    g = torch.Generator().manual_seed(cin * cout + kernel)
    x = torch.randn(batch, cin, (frames - 1) * stride + kernel + stride - 1, generator=g)
    w = torch.randn(cout, cin, kernel, generator=g)
    b = torch.randn(cout, generator=g)
    w2 = w.reshape(cout, -1).contiguous()
    with awake_helper() if helper else contextlib.nullcontext():
        for bias in (b, None):
            y = gemv.conv1d(x, w2, bias, kernel, stride)
            assert y.shape == (batch, cout, frames) and y.is_contiguous()
            close(y, F.conv1d(x, w, bias, stride))


@needs_conv
def test_split_convolutions_from_several_threads_at_once() -> None:
    """One caller at a time shares a convolution with the helper; the others meanwhile run
    theirs alone: every result is right."""
    g = torch.Generator().manual_seed(5)
    cases = [
        (torch.randn(1, 32, 322, generator=g), torch.randn(16, 32, 3, generator=g), 1),
        (torch.randn(1, 64, 164, generator=g), torch.randn(128, 64, 8, generator=g), 4),
    ]
    wants = [F.conv1d(x, w, None, s) for x, w, s in cases]
    errors: list[str] = []

    def work(i: int) -> None:
        x, w, s = cases[i % 2]
        with gemv.threads_for_products(2):
            for _ in range(200):
                y = gemv.conv1d(x, w.reshape(len(w), -1).contiguous(), None, w.shape[-1], s)
                if float((y - wants[i % 2]).abs().max()) > 1e-4:
                    errors.append(f"thread {i}")
                    return

    with awake_helper():
        pool = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    assert not errors


@needs_conv
def test_only_models_with_big_products_split_their_convolutions() -> None:
    """The helper is up only for steps with big products: a small model's convolutions stay
    PyTorch's (the op's call would cost more than the split saves)."""
    from audioseal_live import AudioSeal

    torch.manual_seed(0)
    official = AudioSealWM(OFFICIAL_CARDS["audioseal_wm_streaming"]).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a second core for the helper (one torch thread: none)
    try:
        for gen, splits in ((AudioSeal.load_generator(), False), (official, True)):
            with torch.inference_mode(), gen.streaming(1, traced=True):
                for c in (0.1 * torch.randn(1, 1, 320 * 4)).split(320, dim=-1):
                    gen(c, message=torch.tensor([[1, 0] * 8]))
                graphs = list(gen.stream_steps["watermark"]._graphs.values())
            kinds = {node.kind() for g in graphs if g is not None for node in g.graph.nodes()}
            assert (gemv.CONV_OP in kinds) == splits
    finally:
        torch.set_num_threads(threads)
