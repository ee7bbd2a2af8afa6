"""A streaming model's per-chunk step as a traced TorchScript graph, with the carried state
passed in and out explicitly.

Eager streaming of a 20 ms chunk spends most of its time in Python, not in arithmetic: module
calls, cache bookkeeping, hundreds of tiny view ops. Measured on the project's 2-core VM, one
torch thread: the default generator 5.7 ms per 320 samples eager, 1.8-2.5 ms traced; the
official-size generator 12-14 ms -> 8-9 ms (2 threads); the default detector's 4-phase step
5.4 -> 3.8 ms. The outputs are the same floats (the same aten ops run in the same order).

How: the first calls with a given input shape run eagerly (the first pads the stream's
start), and leave every cache at its steady shape, which the same chunk shape keeps for good
(chunks are whole hops, so every layer takes whole strides). When a shape comes a second
time, the state after that call is the example for ``torch.jit.trace`` of one step
``(inputs, state) -> (outputs, new state)`` (~0.2 s for the default model); from the next call
on the graph runs and this object holds the state. Whatever changes the stream's layout
(``select_streams``, a new chunk shape) first puts the held state back into the modules
(:meth:`StreamStep.release`), runs eagerly once and traces again for the new shape.

A trace records every shape the Python code asked for (``x.shape[-1] // stride``...) as graph
nodes: half of the default generator's 2,049 nodes were ``aten::size`` and the integer
arithmetic on it. A graph here only ever runs on the shapes it was traced for, so those sizes
are constants; :func:`specialize_sizes` folds them before the first run (nodes 2,049 -> 1,150;
interleaved A/B on the 2-core VM, 320-sample chunks: generator 2.62 -> 2.14 ms p50 on
2 threads, 1.42 -> 1.12 on 1; detector 1.13 -> 0.95 and 1.32 -> 1.12).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from audioseal_live.blocks import gemv

log = logging.getLogger(__name__)

# A traced step runs on one intra-op thread unless torch's threads time clearly faster (by
# this factor, best of THREAD_TRIALS calls each, when the graph is new). The default model's
# 20 ms step is hundreds of ops of microseconds: splitting them saves about nothing on a quiet
# machine, and on a busy one every op waits for the thread that is not running (2-core VM, one
# CPU hog beside: the default detector's step p90 6.2 ms on 2 threads, 1.0 on one; the
# official detector's 42-82 ms vs 4.6). The official cards' 100 ms steps gain 10-20 % on 2.
THREADS_MIN_GAIN = 1.1
THREAD_TRIALS = 5
# A shape whose first two eager steps both took longer than this stays eager: a graph saves
# ~1 ms of Python per step, and at 1 s chunks the official generator's graph ran slower than
# its eager step (42.5 vs 36.9 ms; its copies and elementwise ops 2-4x the eager ones).
EAGER_ENOUGH_S = 0.025

Slot = tuple[Any, str]  # (object, attribute) that holds carried state


def carried_slots(model: nn.Module) -> list[Slot]:
    """Every attribute of ``model`` and its submodules that carries stream state (its
    ``_carried`` names: a Tensor, a tuple of Tensors, or None)."""
    return [(m, name) for m in model.modules() for name in getattr(m, "_carried", ())]


def _flatten(values: list[Any]) -> tuple[list[Tensor], tuple[Hashable, ...]]:
    """Slot values -> their tensors and a spec (None / tensor / tuple length, with shapes)."""
    flat: list[Tensor] = []
    spec: list[Hashable] = []
    for v in values:
        if v is None:
            spec.append(None)
        elif isinstance(v, Tensor):
            flat.append(v)
            spec.append(("t", tuple(v.shape)))
        else:
            flat.extend(v)
            spec.append(("tuple", tuple(tuple(t.shape) for t in v)))
    return flat, tuple(spec)


def _unflatten(flat: list[Tensor] | tuple[Tensor, ...], spec: tuple[Hashable, ...]) -> list[Any]:
    out: list[Any] = []
    i = 0
    for s in spec:
        if s is None:
            out.append(None)
        elif s[0] == "t":  # type: ignore[index]
            out.append(flat[i])
            i += 1
        else:
            n = len(s[1])  # type: ignore[index]
            out.append(tuple(flat[i : i + n]))
            i += n
    return out


def specialize_sizes(graph: Any) -> int:
    """Replace every ``aten::size`` of a value whose traced shape is complete by a constant,
    then fold the arithmetic on it and drop what is dead. Returns how many were replaced.

    Only valid for a graph that runs on the exact shapes it was traced with, as StreamStep's
    graphs do (one per input shape and layout; the carried state keeps its shapes).
    """
    replaced = 0
    for node in list(graph.nodes()):
        if node.kind() != "aten::size":
            continue
        inputs = list(node.inputs())
        sizes = getattr(inputs[0].type(), "sizes", lambda: None)()
        if sizes is None or any(s is None for s in sizes):
            continue
        if len(inputs) == 1:
            value: Any = list(sizes)
        else:
            dim = inputs[1].toIValue()
            if dim is None:
                continue
            value = sizes[dim]
        with graph.insert_point_guard(node):
            const = graph.insertConstant(value)
        node.output().replaceAllUsesWith(const)
        replaced += 1
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_dce(graph)
    return replaced


class StreamStep:
    """Runs ``fn(*inputs) -> tuple of tensors`` on a model that is streaming, through a
    traced graph once the stream is in its steady state for that input shape.

    ``layout`` returns what else the graph depends on (e.g. the detector's running phases);
    a change of it, like a change of input shapes, means an eager call and a new trace.
    Inference only: the graph runs without autograd (run it under ``torch.no_grad()``).
    """

    def __init__(
        self,
        model: nn.Module,
        fn: Callable[..., tuple[Tensor, ...]],
        layout: Callable[[], Hashable] = lambda: None,
    ) -> None:
        self.fn = fn
        self.layout = layout
        self.slots = carried_slots(model)
        self._params = list(model.parameters())  # frozen while tracing (see _trace)
        self._graphs: dict[Hashable, Any] = {}  # key -> traced graph, or None: stay eager
        self._specs: dict[Hashable, tuple[Hashable, ...]] = {}  # key -> its state's layout
        self._seen: dict[Hashable, float] = {}  # keys called once (eagerly): seconds it took
        self._held: list[Tensor] | None = None  # state while the graph runs the stream
        self._held_key: Hashable = None
        # the model's stream epoch when the state was taken: a reset since makes it stale
        self._epoch: Callable[[], int] = lambda: getattr(model, "stream_epoch", 0)
        self._held_epoch = -1
        self._spec: tuple[Hashable, ...] = ()
        self._one_thread: set[Hashable] = set()  # keys whose graph runs on one thread
        self._products: set[Hashable] = set()  # ... whose graph has C products (blocks.gemv)
        self.traced_calls = 0
        self.eager_calls = 0

    def _read(self) -> list[Any]:
        return [getattr(obj, name) for obj, name in self.slots]

    def _write(self, values: list[Any]) -> None:
        for (obj, name), v in zip(self.slots, values, strict=True):
            setattr(obj, name, v)

    def release(self) -> None:
        """Put the held state back into the modules (before an eager call or a layout
        change such as ``select_streams``)."""
        if self._held is not None:
            self._write(_unflatten(self._held, self._spec))
            self._held = None

    def drop(self) -> None:
        """Forget the held state (the model's stream was reset or left); graphs stay."""
        self._held = None

    def _key(self, inputs: tuple[Tensor, ...]) -> Hashable:
        return (
            tuple(tuple(x.shape) for x in inputs),
            tuple(x.dtype for x in inputs),
            self.layout(),
        )

    def traced_for(self, *inputs: Tensor) -> bool:
        """Whether a graph for inputs like these (and the current layout) is traced already."""
        return self._graphs.get(self._key(inputs)) is not None

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        key = self._key(inputs)
        if self._held is not None and self._epoch() != self._held_epoch:
            self._held = None  # the model's stream started afresh (reset, re-entered)
        if self._held is not None and key == self._held_key:
            # The graph skips the models' own input checks (fixed when it was traced); a NaN
            # would stay in the carried state for good.
            for x in inputs:  # a NaN or inf anywhere makes the sum one (5x cheaper a test)
                if x.is_floating_point() and not math.isfinite(float(x.sum())):
                    raise ValueError("a chunk holds NaN or inf samples; refused")
            outs = self._run(key, inputs, self._held)
            n = len(outs) - len(self._held)
            self._held = list(outs[n:])
            self.traced_calls += 1
            return tuple(outs[:n])
        self.release()
        t0 = time.perf_counter()
        outs = self.fn(*inputs)
        spent = time.perf_counter() - t0
        self.eager_calls += 1
        if key not in self._graphs and key not in self._seen:
            # Trace a shape once it repeats: a file's short last chunk is not worth 0.2 s.
            self._seen[key] = spent
            return outs
        if key not in self._graphs and min(spent, self._seen[key]) > EAGER_ENOUGH_S:
            log.info("a step of %.0f ms: its Python is noise, staying eager", 1e3 * spent)
            self._graphs[key] = None
        if self._graphs.get(key, True) is None:  # traced before: its state changes layout
            return outs
        flat, spec = _flatten(self._read())
        if key not in self._graphs:
            self._graphs[key] = self._trace(inputs, flat, spec)
            self._specs[key] = spec
            if torch.get_num_threads() == 1:  # it may fork: keep it on one if threads change
                self._one_thread.add(key)
            elif self._graphs[key] is not None and self._could_run_on_one(inputs, flat):
                # traced anew on one thread: a model may hand work to another thread then
                # (models.base: the LSTMs' recurrent products), which it must not on more
                with _intra_op_threads(1):
                    single = self._trace(inputs, flat, spec)
                if single is not None and self._prefers_one_thread(key, single, inputs, flat):
                    self._graphs[key] = single
                    self._one_thread.add(key)
            if self._graphs[key] is not None:
                if _has_products(self._graphs[key]):
                    self._products.add(key)
                self._warm(key, inputs, flat)
        # The graph runs only on the state shapes it was traced with (its sizes are constants):
        # any other state (a stream not yet settled) goes on eagerly.
        if self._graphs[key] is not None and flat and spec == self._specs[key]:
            self._held, self._held_key, self._spec = flat, key, spec
            self._held_epoch = self._epoch()
        return outs

    def _run(self, key: Hashable, inputs: tuple[Tensor, ...], state: list[Tensor]) -> Any:
        if key not in self._one_thread or torch.get_num_threads() == 1:
            return self._graphs[key](*inputs, *state)
        with gemv.ops_on_one_thread(wake=key in self._products):
            return self._graphs[key](*inputs, *state)

    def _warm(self, key: Hashable, inputs: tuple[Tensor, ...], flat: list[Tensor]) -> None:
        """Run a new graph through TorchScript's profiling runs now, on copies of the state
        (the stream does not advance): the first runs of a graph record shapes and then
        optimise it, and took 6-8x a step (official generator, 100 ms chunks: 61 and 47 ms,
        then 8): late chunks at a live stream's start, and a benchmark's first timings."""
        for _ in range(warm_up_runs()):
            self._run(key, inputs, [t.clone() for t in flat])

    @property
    def single_threaded(self) -> bool:
        """Whether the graph running the stream now runs on one intra-op thread."""
        return self._held_key in self._one_thread and torch.get_num_threads() > 1

    @staticmethod
    def _could_run_on_one(inputs: tuple[Tensor, ...], flat: list[Tensor]) -> bool:
        return torch.get_num_threads() > 1 and all(t.device.type == "cpu" for t in (*inputs, *flat))

    def _prefers_one_thread(
        self, key: Hashable, single: Any, inputs: tuple[Tensor, ...], flat: list[Tensor]
    ) -> bool:
        """Whether the graph traced on one thread (``single``) should run the stream rather
        than the one on torch's threads (see ``THREADS_MIN_GAIN``): each timed on its
        threads, on copies of the state (the stream does not advance); the first calls of a
        graph also optimise it, so each keeps its best call.

        A graph with C products (blocks.gemv) runs on one: its products then use the second
        core, and that beat torch's two threads on every round of an interleaved A/B
        (official cards, 20 ms chunks, 5 rounds: generator p50 2.7-4.1 vs 4.3-5.7 ms,
        detector 1.3-1.5 vs 1.7-2.5), where five timed calls each often picked wrong.
        """
        if _has_products(single):
            log.info("traced step: its big products in C on 2 cores, other ops on one")
            return True
        threads = torch.get_num_threads()
        graphs = {threads: self._graphs[key], 1: single}
        best: dict[int, float] = {}
        for n in (threads, 1) * THREAD_TRIALS:
            state = [t.clone() for t in flat]
            with _intra_op_threads(n):
                t0 = time.perf_counter()
                graphs[n](*inputs, *state)
                best[n] = min(best.get(n, float("inf")), time.perf_counter() - t0)
        one = best[1] < THREADS_MIN_GAIN * best[threads]
        log.info(
            "traced step: %.2f ms on %d threads, %.2f ms on one: %s",
            1e3 * best[threads],
            threads,
            1e3 * best[1],
            "runs on one" if one else f"keeps {threads}",
        )
        return one

    def _trace(self, inputs: tuple[Tensor, ...], flat: list[Tensor], spec: tuple) -> Any:
        """Trace one step from this state; None if the state would not keep its layout."""

        def step(*args: Tensor) -> tuple[Tensor, ...]:
            self._write(_unflatten(args[len(inputs) :], spec))
            outs = self.fn(*args[: len(inputs)])
            new, new_spec = _flatten(self._read())
            if new_spec != spec:
                raise _LayoutChanged(f"{spec} -> {new_spec}")
            return (*outs, *new)

        # The trace runs one step; it must not advance the stream: restore the state after.
        examples = tuple(x.clone() for x in inputs) + tuple(flat)
        try:
            # The tracer warns about every Python-side shape decision: all of them are fixed
            # for a fixed input shape and layout, which is what the graph is keyed by. It also
            # says it is deprecated for torch.export, whose graphs run through Python again.
            with torch.no_grad(), _frozen(self._params), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                graph = torch.jit.trace(step, examples, check_trace=False)
            try:  # before its first run: the executor copies the graph then
                specialize_sizes(graph.graph)
            except Exception:  # torch._C passes: a torch without them runs the plain graph
                log.warning("could not fold the traced step's shapes", exc_info=True)
        except _LayoutChanged as exc:
            log.info("stream state changes layout from call to call (%s): staying eager", exc)
            graph = None
        except Exception:  # a model the tracer cannot record: it still streams, eagerly
            log.warning("could not trace the streaming step: staying eager", exc_info=True)
            graph = None
        finally:
            self._write(_unflatten(flat, spec))
        return graph


def warm_up_runs() -> int:
    """How many runs TorchScript's profiling executor takes before a graph is optimised."""
    return getattr(torch._C, "_jit_get_num_profiled_runs", lambda: 1)() + 1


def _has_products(graph: Any) -> bool:
    return any(node.kind() == gemv.OP for node in graph.graph.nodes())


@contextlib.contextmanager
def _frozen(params: list[Tensor]) -> Iterator[None]:
    """No parameter requires grad meanwhile: a trace records those it reads as constants,
    which it refuses to do for tensors that require grad (the graph runs without autograd)."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``n`` for this thread meanwhile, restored after; on
    one, the C products (blocks.gemv) keep the threads the caller had (official generator,
    20 ms chunks: ~3.2 ms vs ~4 with either on one)."""
    if n == 1:
        with gemv.ops_on_one_thread():
            yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _LayoutChanged(RuntimeError):
    pass
