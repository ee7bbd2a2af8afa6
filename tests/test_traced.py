"""The traced streaming step (blocks.traced) computes what the eager stream computes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from audioseal_live.blocks import StreamingModule, StreamingRoot, gemv, traced
from audioseal_live.blocks.traced import StreamStep
from audioseal_live.engine.model import TorchDetector, TorchMarker
from audioseal_live.models import OFFICIAL_CARDS, AudioSealDetector, AudioSealWM, small_card

HOP = 320
TOL = 1e-5


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Torch's intra-op threads at 2 for the test (the machine may have more or fewer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def torch_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every product through PyTorch, as where blocks.gemv's C extension is not built."""
    monkeypatch.setattr(gemv, "_ext", None)
    monkeypatch.setattr(gemv, "_ready", False)
    monkeypatch.setattr(gemv, "_conv_ready", False)


def audio(n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("card", ["small", "official"])
def test_traced_marker_equals_offline_through_a_message_change(card: str) -> None:
    torch.manual_seed(0)
    gen = AudioSealWM(
        small_card("generator") if card == "small" else OFFICIAL_CARDS["audioseal_wm_streaming"]
    ).eval()
    chunk, n = 2 * HOP, 16
    x = audio(chunk * n)
    a, b = [1, 0] * 8, [0, 0, 1, 1] * 4
    marker = TorchMarker(gen)
    marker.reset()
    out = np.concatenate(
        [marker.process(x[i * chunk : (i + 1) * chunk], a if i < 9 else b) for i in range(n)]
    )
    step = marker._step
    assert step is not None and step.eager_calls == 2 and step.traced_calls == n - 2
    marker.close()
    with torch.inference_mode():
        xt = torch.from_numpy(x).view(1, 1, -1)
        whole_a = gen.get_watermark(xt, message=torch.tensor([a])).reshape(-1).numpy()
    cut = 9 * chunk  # the message changed here; the state carried on
    np.testing.assert_allclose(out[:cut], whole_a[:cut], atol=TOL, rtol=0)
    with torch.inference_mode(), gen.streaming(1):
        gen.get_watermark(xt[..., :cut], message=torch.tensor([a]))
        rest = gen.get_watermark(xt[..., cut:], message=torch.tensor([b])).reshape(-1).numpy()
    np.testing.assert_allclose(out[cut:], rest, atol=TOL, rtol=0)
    assert np.abs(out[cut:] - whole_a[cut:]).max() > 1e-3  # the graph took the new message


def test_traced_graphs_hold_no_shape_arithmetic() -> None:
    """The sizes a trace recorded are folded to constants (the graph runs on those shapes
    only), and the outputs above stay the eager ones; a step at a new chunk size gets its
    own graph."""
    torch.manual_seed(0)
    gen = AudioSealWM(small_card("generator")).eval()
    marker = TorchMarker(gen)
    marker.reset()
    for n in (HOP, HOP, HOP, 2 * HOP, 2 * HOP, 2 * HOP):
        marker.process(audio(n), [1, 0] * 8)
    step = marker._step
    assert step is not None and len(step._graphs) == 2
    for graph in step._graphs.values():
        kinds = [node.kind() for node in graph.graph.nodes()]
        products = {"aten::linear", gemv.CONV_OP}  # (blocks.gemv: convolutions on 2 cores)
        assert products & set(kinds) and "aten::size" not in kinds
    marker.close()


def test_tracing_keeps_one_copy_of_each_stream_weight() -> None:
    """While tracing, sizes are tensors: weights keyed by them would be copied again for
    every graph (the official generator's 52 MB once per chunk size)."""
    torch.manual_seed(0)
    gen = AudioSealWM(small_card("generator")).eval()
    marker = TorchMarker(gen)
    marker.reset()
    for n in (HOP, HOP, HOP, 2 * HOP, 2 * HOP, 2 * HOP, HOP):
        marker.process(audio(n), [1, 0] * 8)
    keys = [k for m in gen.modules() if isinstance(m, StreamingModule) for k in m._weights]
    assert keys and all(type(gemv) is bool for _, gemv in keys)
    lstms = [sorted(m._layer_cache) for m in gen.modules() if hasattr(m, "_layer_cache")]
    assert lstms and all(rows == [1, 2] for rows in lstms)  # per row count, not per trace
    marker.close()


@pytest.mark.parametrize("phases", [4, 1])
def test_traced_detector_narrows_and_equals_eager(phases: int) -> None:
    """Narrowed to a layout warm_up traced (one signal at phase 0: a one-phase card), the
    stream goes on traced after one eager call; to any other layout it stays eager (no
    trace next to live callbacks)."""
    torch.manual_seed(1)
    det = AudioSealDetector(small_card("detector").replace(sync_phases=phases)).eval()
    x = audio(HOP * 5 * 12, seed=2)
    xx = np.stack([x, -x])

    def run(traced: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        d = TorchDetector(det, traced=traced)
        if traced:
            d.warm_up(5 * HOP)
            graphs = len(d._step._graphs)  # type: ignore[union-attr]
        d.reset(2)
        outs = []
        for i in range(12):
            block = xx[:, i * 5 * HOP : (i + 1) * 5 * HOP]
            if i == 6:
                d.narrow(1, det.phases - 1)
            outs.append(d.process(block if i < 6 else block[1:]))
        if traced:
            step = d._step
            assert step is not None and len(step._graphs) == graphs  # nothing traced live
            # warm-up: 1 traced call per layout; each stream (search, lock) starts with one
            # eager call, then runs traced: 5 of 6 searching, 5 of 6 locked if traced
            assert step.traced_calls == 2 + 5 + (5 if phases == 1 else 0)
        d.close()
        return outs

    for (p, bits), (p_ref, bits_ref) in zip(run(True), run(False), strict=True):
        np.testing.assert_allclose(p, p_ref, atol=TOL, rtol=0)
        np.testing.assert_allclose(bits, bits_ref, atol=TOL, rtol=0)


def test_nan_chunk_is_refused_before_it_reaches_the_state() -> None:
    torch.manual_seed(2)
    gen = AudioSealWM(small_card("generator")).eval()
    x = audio(HOP * 8, seed=3)
    msg = [1] * 16
    marker = TorchMarker(gen)
    marker.reset()
    clean = [marker.process(x[i * HOP : (i + 1) * HOP], msg) for i in range(8)]
    marker.reset()
    got = []
    for i in range(8):
        if i == 4:
            with pytest.raises(ValueError, match="NaN"):
                marker.process(np.full(HOP, np.nan, dtype=np.float32), msg)
        got.append(marker.process(x[i * HOP : (i + 1) * HOP], msg))
    marker.close()
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(clean))


def test_a_held_state_does_not_outlive_its_stream() -> None:
    """Without drop(): a reset_streaming() mid-stream, or leaving and re-entering streaming(),
    starts the traced step afresh too; and after tracing, a NaN chunk is still refused."""
    torch.manual_seed(0)
    gen = AudioSealWM(small_card("generator")).eval().requires_grad_(False)
    x = torch.from_numpy(audio(HOP * 12, seed=4)).view(1, 1, -1)
    msg = torch.tensor([[1, 0] * 8])
    chunks = list(x.split(HOP, -1))
    step = StreamStep(gen, lambda a, m: (gen.watermark_of(a, m),))

    def run(reset_at: int) -> torch.Tensor:
        out = []
        for i, c in enumerate(chunks):
            if i == reset_at:
                gen.reset_streaming()
            out.append(step(c, msg)[0] if step is not None else gen.watermark_of(c, msg))
        return torch.cat(out, -1)

    with torch.inference_mode():
        with gen.streaming(1):
            traced = run(6)
        assert step.traced_calls > 0
        with gen.streaming(1):  # re-entered: the step must not carry the old stream on
            again = torch.cat([step(c, msg)[0] for c in chunks[:4]], -1)
            with pytest.raises(ValueError, match="NaN"):
                step(torch.full_like(chunks[0], float("nan")), msg)
        step = None
        with gen.streaming(1):
            eager = run(6)
    torch.testing.assert_close(traced, eager, atol=TOL, rtol=0)
    torch.testing.assert_close(again, eager[..., : 4 * HOP], atol=TOL, rtol=0)


class Growing(StreamingModule):
    """A cache that grows every call: no fixed-shape graph can carry it."""

    _carried = ("_seen",)

    def __init__(self) -> None:
        super().__init__()
        self._seen: torch.Tensor | None = None

    def _reset_state(self) -> None:
        self._seen = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._seen = x if self._seen is None else torch.cat([self._seen, x], -1)
        return x * self._seen.shape[-1]


class Root(StreamingRoot):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Growing()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_a_state_that_changes_shape_stays_eager() -> None:
    root = Root()
    step = StreamStep(root, lambda x: (root(x),))
    x = torch.ones(1, 1, 4)
    with root.streaming(1):
        outs = [step(x)[0] for _ in range(5)]
    assert [float(o[0, 0, 0]) for o in outs] == [4.0, 8.0, 12.0, 16.0, 20.0]
    assert step.traced_calls == 0 and step.eager_calls == 5


@pytest.mark.parametrize("one_thread", [False, True])
def test_thread_choice_leaves_the_stream_and_the_threads_as_they_were(
    monkeypatch: pytest.MonkeyPatch, one_thread: bool
) -> None:
    # the choice is timed; force either outcome: one thread never / always counts as faster
    monkeypatch.setattr(traced, "THREADS_MIN_GAIN", float("inf") if one_thread else 0.0)
    torch_products(monkeypatch)  # (a graph with C products runs on one thread untimed)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        gen = AudioSealWM(small_card("generator")).eval().requires_grad_(False)
        step = StreamStep(gen, lambda x, m: (gen.get_watermark(x, message=m),))
        x = torch.from_numpy(audio(HOP * 8)).view(1, 1, -1)
        msg = torch.tensor([[1, 0] * 8])
        with torch.inference_mode():
            whole = gen.get_watermark(x, message=msg)
            with gen.streaming(1):
                parts = torch.cat([step(c, msg)[0] for c in x.split(HOP, dim=-1)], dim=-1)
                assert step.single_threaded == one_thread
        assert step.traced_calls == 6 and torch.get_num_threads() == 2
        # the timing trials ran on copies of the state: the stream did not move
        torch.testing.assert_close(parts, whole, atol=TOL, rtol=0)
    finally:
        torch.set_num_threads(threads)


def _forks(step: StreamStep) -> list[int]:
    return [
        sum(node.kind() == "prim::fork" for node in graph.graph.nodes())
        for graph in step._graphs.values()
        if graph is not None
    ]


@pytest.mark.parametrize("kind", ["generator", "detector"])
@pytest.mark.parametrize("one_thread", [True, False])
@pytest.mark.parametrize("products", ["torch", "c"])
def test_recurrent_products_run_ahead_only_on_one_thread_and_change_nothing(
    monkeypatch: pytest.MonkeyPatch, kind: str, one_thread: bool, products: str
) -> None:
    """At one hop per chunk on one intra-op thread, the LSTMs' h @ W_hh (wide enough to
    stream from memory: 16 x 16 = 256 wide here) is forked ahead of the convolutions; the stream is
    the same floats as without, and as offline. On 2 threads the graph forks nothing, nor
    where blocks.gemv's C products take the second core."""
    if products == "torch":
        torch_products(monkeypatch)
    elif not gemv.kernel():
        pytest.skip("no C products on this machine")
    monkeypatch.setattr(traced, "THREADS_MIN_GAIN", float("inf") if one_thread else 0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        card = small_card(kind, n_filters=16, dimension=32, lstm=2)  # type: ignore[arg-type]
        x = torch.from_numpy(audio(HOP * 10)).view(1, 1, -1)
        msg = torch.tensor([[1, 0] * 8])
        outs = []
        for parallel in (True, False):
            torch.manual_seed(0)
            model = AudioSealWM(card) if kind == "generator" else AudioSealDetector(card)
            model = model.eval().requires_grad_(False)
            for m in model.modules():
                if hasattr(m, "parallel_recurrent"):
                    m.parallel_recurrent = parallel
            if kind == "generator":
                step = StreamStep(model, lambda c, m=model: (m.get_watermark(c, message=msg),))
            else:
                step = StreamStep(model, lambda c, m=model: (m(c)[0],))
            with torch.inference_mode(), model.streaming(1):
                outs.append(torch.cat([step(c)[0] for c in x.split(HOP, dim=-1)], dim=-1))
                on_one = one_thread or products == "c"  # C products: on one, untimed
                assert step.single_threaded == on_one and step.traced_calls == 8
            assert _forks(step) == [1 if parallel and one_thread and products == "torch" else 0]
            assert torch.get_num_threads() == 2
        with torch.inference_mode():
            whole = model.get_watermark(x, message=msg) if kind == "generator" else model(x)[0]
        torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
        torch.testing.assert_close(outs[0], whole, atol=TOL, rtol=0)
    finally:
        torch.set_num_threads(threads)


def test_recurrent_products_started_for_a_stream_that_moved_on_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Products started from an h that is no longer the state (the stream was reset or
    narrowed before the chunk reached the LSTM) are never used. (Started by hand here, as
    a trace would: an eager step does not fork, a fork there would run at once.)"""
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        gen = AudioSealWM(small_card("generator", n_filters=16, dimension=32)).eval()
        x = torch.from_numpy(audio(HOP * 6)).view(2, 1, -1)
        msg = torch.tensor([[1, 0] * 8] * 2)
        lstms = [m for m in gen.modules() if hasattr(m, "parallel_recurrent")]
        with torch.inference_mode(), gen.streaming(2):
            for c in x[..., : 2 * HOP].split(HOP, dim=-1):
                gen.get_watermark(c, message=msg)
            gen._start_recurrent(x[..., :HOP])
            assert all(m._recurrent is not None for m in lstms)
            gen.select_streams([1])
            assert all(m._recurrent is None for m in lstms)
            gen._start_recurrent(x[1:, :, :HOP])
            gen.reset_streaming()
            assert all(m._recurrent is None for m in lstms)
            gen._start_recurrent(x[..., :HOP])  # no h yet: nothing to start from
            assert all(m._recurrent is None for m in lstms)
            streamed = [gen.get_watermark(c, message=msg) for c in x.split(HOP, dim=-1)]
        with torch.inference_mode():
            whole = gen.get_watermark(x, message=msg)
        torch.testing.assert_close(torch.cat(streamed, dim=-1), whole, atol=TOL, rtol=0)
    finally:
        torch.set_num_threads(threads)


def test_a_graph_traced_on_one_thread_stays_on_one_when_threads_change() -> None:
    """Traced on one thread, a graph may fork (above); raised to 2 threads later, the
    process must not run it there (the fork would open a second OpenMP team)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        gen = AudioSealWM(small_card("generator", n_filters=16, dimension=32)).eval()
        gen.requires_grad_(False)
        step = StreamStep(gen, lambda c, m: (gen.get_watermark(c, message=m),))
        x = torch.from_numpy(audio(HOP * 8)).view(1, 1, -1)
        msg = torch.tensor([[1, 0] * 8])
        seen = []
        with torch.inference_mode(), gen.streaming(1):
            parts = []
            for i, c in enumerate(x.split(HOP, dim=-1)):
                if i == 4:
                    torch.set_num_threads(2)
                parts.append(step(c, msg)[0])
                if step.traced_calls:
                    seen.append(torch.get_num_threads())
            assert step.single_threaded and _forks(step) == [1] and step.traced_calls == 6
        assert 2 in seen and torch.get_num_threads() == 2
        with torch.inference_mode():
            whole = gen.get_watermark(x, message=msg)
        torch.testing.assert_close(torch.cat(parts, dim=-1), whole, atol=TOL, rtol=0)
    finally:
        torch.set_num_threads(threads)


def test_a_graph_with_c_products_runs_on_one_thread_untimed(
    monkeypatch: pytest.MonkeyPatch, two_threads: None
) -> None:
    """Its products take the second core; torch's own two threads beside them lost every
    interleaved round (blocks.traced._prefers_one_thread), so no timing decides it."""
    if not gemv.kernel():
        pytest.skip("no C products on this machine")
    monkeypatch.setattr(traced, "THREADS_MIN_GAIN", 0.0)  # a timing would keep 2 threads
    torch.manual_seed(0)
    gen = AudioSealWM(small_card("generator")).eval().requires_grad_(False)
    step = StreamStep(gen, lambda x, m: (gen.get_watermark(x, message=m),))
    with torch.inference_mode(), gen.streaming(1):
        for c in torch.from_numpy(audio(HOP * 4)).view(1, 1, -1).split(HOP, dim=-1):
            step(c, torch.tensor([[1, 0] * 8]))
        assert step.single_threaded and step.traced_calls == 2


def api_generator_run(gen: AudioSealWM, traced: bool) -> tuple[torch.Tensor, int]:
    """The reference's streaming loop (no torch.no_grad(), parameters that require grad),
    through a message change, a chunk size change, a reset and a ragged last chunk; the
    traced calls it made."""
    x = torch.from_numpy(audio(HOP * 30 + 123, seed=7)).view(1, 1, -1)
    sizes = [HOP] * 6 + [2 * HOP] * 5 + [HOP] * 5 + [HOP] * 4 + [HOP * 4] + [HOP * 2 + 123]
    a, b = torch.tensor([[1, 0] * 8]), torch.tensor([[0, 0, 1, 1] * 4])
    outs, start, calls = [], 0, 0
    with gen.streaming(batch_size=1, traced=traced):
        for i, n in enumerate(sizes):
            if i == 16:
                gen.reset_streaming()
            chunk = x[..., start : start + n]
            outs.append(gen(chunk, sample_rate=16000, message=a if i < 8 else b, alpha=1.0))
            start += n
        calls = sum(s.traced_calls for s in gen.stream_steps.values())
    assert not gen.stream_steps  # dropped with the stream
    return torch.cat(outs, -1), calls


def test_api_streaming_traced_equals_eager() -> None:
    """streaming(traced=True) gives the eager stream's floats through every change of the
    stream, traces without the caller's torch.no_grad(), and hands back no autograd graph."""
    torch.manual_seed(3)
    gen = AudioSealWM(small_card("generator")).eval()
    eager, none = api_generator_run(gen, traced=False)
    traced, calls = api_generator_run(gen, traced=True)
    assert none == 0 and calls >= 10
    assert not traced.requires_grad and eager.requires_grad  # eager keeps the reference's
    assert all(p.requires_grad for p in gen.parameters())  # untouched by the trace
    torch.testing.assert_close(traced, eager.detach(), atol=1e-6, rtol=0)


def test_api_traced_detector_narrows_and_reads_like_eager() -> None:
    """A traced detector stream through select_streams (a new layout: eager once, traced
    again), with a direct frame_outputs() call in between that must see the live state."""
    torch.manual_seed(4)
    det = AudioSealDetector(small_card("detector").replace(sync_phases=4)).eval()
    x = torch.from_numpy(audio(HOP * 2 * 14, seed=8)).view(1, 1, -1)
    xx = torch.cat([x, -x])

    def run(traced: bool) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        with torch.inference_mode(), det.streaming(batch_size=2, traced=traced):
            for i, chunk in enumerate(xx.split(2 * HOP, -1)):
                if i == 6:
                    outs.extend(det.frame_outputs(chunk))  # eager, on the state the step held
                    continue
                if i == 8:
                    det.select_streams([1], phases=[2])
                outs.extend(det(chunk if i < 8 else chunk[1:]))
            if traced:
                assert det.stream_steps["forward"].traced_calls >= 8
        return outs

    for got, want in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_api_traced_stream_refuses_nan_and_goes_on() -> None:
    torch.manual_seed(5)
    gen = AudioSealWM(small_card("generator")).eval()
    chunks = list(torch.from_numpy(audio(HOP * 8, seed=9)).view(1, 1, -1).split(HOP, -1))
    msg = torch.tensor([[1] * 16])
    with torch.inference_mode():
        with gen.streaming(1):
            clean = torch.cat([gen(c, message=msg) for c in chunks], -1)
        with gen.streaming(1, traced=True):
            got = []
            for i, c in enumerate(chunks):
                if i == 5:
                    with pytest.raises(ValueError, match="NaN"):
                        gen(torch.full_like(c, float("nan")), message=msg)
                got.append(gen(c, message=msg))
    torch.testing.assert_close(torch.cat(got, -1), clean, atol=1e-6, rtol=0)


class DataDependent(StreamingRoot):
    """A step that decides on a tensor's value in Python (a graph would freeze the choice)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if float(x.sum()) > 0 else x


def test_a_step_the_tracer_cannot_record_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model the tracer fails on (here: made to fail) goes on eagerly, outputs intact."""
    root = DataDependent()
    step = StreamStep(root, lambda x: (root(x),))

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the tracer refuses this step")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    with root.streaming(1):
        outs = [step(torch.full((1, 1, 4), float(v)))[0] for v in (1, -1, 1, -1, 1)]
    assert [float(o[0, 0, 0]) for o in outs] == [2.0, -1.0, 2.0, -1.0, 2.0]
    assert step.traced_calls == 0 and step.eager_calls == 5


def test_a_slow_step_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that takes longer than EAGER_ENOUGH_S twice (here: made to) is not traced: its
    Python is noise there; a fast shape of the same stream still is."""
    torch.manual_seed(0)
    gen = AudioSealWM(small_card("generator")).eval()
    msg = torch.tensor([[1, 0] * 8])
    slow_size = 2 * HOP
    real = gen.watermark_of

    def watermark_of(x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        if x.shape[-1] == slow_size and not torch.jit.is_tracing():
            time.sleep(1.5 * traced.EAGER_ENOUGH_S)
        return real(x, m)

    monkeypatch.setattr(gen, "watermark_of", watermark_of)
    x = torch.from_numpy(audio(HOP * 20, seed=11)).view(1, 1, -1)
    with torch.inference_mode(), gen.streaming(1, traced=True):
        for c in x[..., : 4 * slow_size].split(slow_size, dim=-1):
            gen(c, message=msg)
        step = gen.stream_steps["watermark"]
        assert step.traced_calls == 0 and step.eager_calls == 4
        for c in x[..., 4 * slow_size :].split(HOP, dim=-1):
            gen(c, message=msg)
        assert step.traced_calls == 12 - 2
