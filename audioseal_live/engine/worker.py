"""The worker: input ring -> 16 kHz -> streaming generator -> device rate -> + original -> out.

Runs on its own thread (never in an audio callback). ``step()`` does one pass over what the
input ring holds and is what tests drive directly with a fake clock; ``run()`` loops it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from audioseal_live.engine.delay import DelayLine
from audioseal_live.engine.drift import DriftCorrector
from audioseal_live.engine.limiter import SoftLimiter
from audioseal_live.engine.mark_level import MarkLevelCap
from audioseal_live.engine.metrics import NO_DETECTION, Detection, Snapshot, TimingWindow
from audioseal_live.engine.model import HOP, MODEL_RATE, Marker
from audioseal_live.engine.resample import live_resampler
from audioseal_live.engine.ring import Fifo, RingBuffer
from audioseal_live.errors import SettingError

log = logging.getLogger(__name__)

OverloadPolicy = Literal["pass", "mute"]
RELAX_AFTER_S = 10  # seconds without an underrun before the raised set point relaxes
# A stall that leaves more than this of surplus in flight (a long GC pause, a GPU hiccup, a
# suspended laptop) makes the waiting input stale: it is dropped rather than played late.
# Shorter stalls are played (passed through unmarked) and their surplus cut in spans.
RESYNC_S = 0.25


@dataclass(frozen=True)
class Controls:
    """Settings the apps may change live. The engine swaps the whole (immutable) object; the
    worker reads the reference once per chunk, so one chunk never mixes two settings."""

    message: tuple[int, ...]
    alpha: float = 1.0
    bypass: bool = False
    overload: OverloadPolicy = "pass"


class IOCounters(Protocol):
    input_overflows: int
    output_underflows: int
    underruns: int
    underrun_samples: int
    callback_errors: int
    last_error: str
    input_latency: float
    output_latency: float


class Sink(Protocol):
    def push(self, x: np.ndarray) -> None: ...


MAX_ALPHA = 2.0  # the window's slider: 0-200 %; beyond, the mark grows audible, not safer


def check_alpha(alpha: float) -> float:
    """Watermark strength: 0 (off) to MAX_ALPHA; 1 is the level the model was trained at."""
    a = float(alpha)
    if not 0.0 <= a <= MAX_ALPHA:  # also refuses NaN
        raise SettingError(f"strength (alpha) must be 0-{MAX_ALPHA:g}, got {alpha}")
    return a


def chunk_samples_16k(chunk_ms: float) -> int:
    """Chunk length at 16 kHz: 20-200 ms, a whole number of 320-sample hops."""
    if not 20 <= chunk_ms <= 200:
        raise SettingError(f"chunk must be 20-200 ms, got {chunk_ms:g}")
    hops = round(chunk_ms * MODEL_RATE / 1000 / HOP)
    if abs(hops * HOP * 1000 / MODEL_RATE - chunk_ms) > 1e-6:
        raise SettingError(
            f"chunk must be a multiple of 20 ms (the model's hop): 20, 40, ... 200; "
            f"got {chunk_ms:g}"
        )
    return hops * HOP


class Worker:
    def __init__(
        self,
        marker: Marker,
        in_ring: RingBuffer,
        out_ring: RingBuffer,
        sample_rate: int,
        controls: Controls,
        chunk_ms: float = 20.0,
        out_target: int | None = None,
        block_size: int = 256,
        clock: Callable[[], float] = time.perf_counter,
        io: IOCounters | None = None,
        monitor_ring: RingBuffer | None = None,
        sinks: Sequence[Sink] = (),
        input_sinks: Sequence[Sink] = (),
        threads: int = 0,
        device: str = "cpu",
        max_backlog_chunks: float = 2.0,
    ) -> None:
        self.marker = marker
        self.in_ring = in_ring
        self.out_ring = out_ring
        self.rate = int(sample_rate)
        self.controls = controls
        self.chunk16 = chunk_samples_16k(chunk_ms)
        self.chunk_ms = 1000.0 * self.chunk16 / MODEL_RATE
        self.chunk_dev = math.ceil(self.chunk16 * self.rate / MODEL_RATE)
        self.block_size = int(block_size)
        self.clock = clock
        self.io = io
        self.monitor_ring = monitor_ring
        self.sinks = list(sinks)
        self.input_sinks = list(input_sinks)
        self.threads = threads
        self.device = device
        self.max_backlog = int(max_backlog_chunks * self.chunk_dev)
        self.down = live_resampler(self.rate, MODEL_RATE)
        self.up = live_resampler(MODEL_RATE, self.rate)
        # Exact group delay of down+up in device samples (rounded for 44.1 kHz: < 12 us off).
        self.path_delay = round(self.down.delay * self.rate / MODEL_RATE + self.up.delay)
        self.orig = DelayLine(self.path_delay)
        self.fifo16 = Fifo(4 * self.chunk16)
        self.wm = Fifo(4 * self.chunk_dev)
        self.gain = Fifo(4 * self.chunk_dev)  # 1 = original, 0 = muted (overload policy)
        self.limiter = SoftLimiter(self.rate)
        self.mark_cap = MarkLevelCap(self.rate)  # the mark stays under the voice it joins
        # Dead band: half a callback block (phase of separate streams) plus 1 ms.
        self.drift = DriftCorrector(
            0,
            dead_band=self.block_size // 2 + self.rate // 1000,
            rate=self.rate,
            max_extra=self.chunk_dev // 2,
        )
        self._underrun_seen = 0  # io.underrun_samples already answered by the set point
        self._fed_since_underrun = 0  # output samples produced since the last underrun
        self.out_target = 0
        self.set_out_target(
            int(out_target) if out_target is not None else self.default_target(0.005)
        )
        self.timing = TimingWindow()
        self._est_compute_s = 0.0
        # counters
        self.chunks = 0
        self.model_chunks = 0
        self.unmarked_chunks = 0
        self.unmarked_spans = 0
        self._in_unmarked = False
        self.worker_errors = 0
        self.bad_input_samples = 0
        self.resyncs = 0  # long stalls whose stale input was dropped
        self.stale_dropped_samples = 0
        self.last_error = ""
        self.samples_in = 0
        self.samples_out = 0
        self._levels = (0.0, 0.0, 0.0, 0.0)
        self.detection_source: Callable[[], Detection] | None = None
        self._snapshot = Snapshot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False

    # ----- setup -------------------------------------------------------------------------
    def default_target(self, safety_s: float) -> int:
        """Output-ring fill to keep: one chunk (the worker's period) + one callback block
        (input arrives in blocks) + a safety margin for compute and scheduling jitter."""
        return self.chunk_dev + self.block_size + int(safety_s * self.rate)

    def set_out_target(self, target: int) -> None:
        self.out_target = int(target)
        self.drift.target_fill = self.out_target + self.path_delay  # samples in flight

    def warm_up(self, seconds: float = 0.5) -> float:
        """Run the model on silence (allocations, kernels, caches), then reset its stream.
        Returns the p90 compute time per chunk in seconds."""
        n = max(8, int(seconds * MODEL_RATE / self.chunk16))
        times = []
        self.marker.reset()
        z = np.zeros(self.chunk16, dtype=np.float32)
        # Untimed: first-call allocations, the step's trace (~0.2 s) and the graph executor's
        # own first runs, which optimise it: at 200 ms chunks calls 3-4 still took 84-91 ms
        # against 6-8 after, and their p90 became ~190 ms of needless latency (review).
        for _ in range(6):
            self.marker.process(z, self.controls.message)
        for _ in range(n):
            t0 = time.perf_counter()
            self.marker.process(z, self.controls.message)
            times.append(time.perf_counter() - t0)
        self.marker.reset()
        self._est_compute_s = float(np.percentile(times, 90))
        return self._est_compute_s

    def prefill(self) -> None:
        self.out_ring.write(np.zeros(self.out_target, dtype=np.float32))

    # ----- the loop ----------------------------------------------------------------------
    def _behind(self) -> bool:
        """Would running the model now make the output run dry? Then pass through instead."""
        if self.in_ring.fill > self.max_backlog:
            return True
        return self.out_ring.fill < self._est_compute_s * self.rate

    def _in_flight(self) -> int:
        """Samples captured and not yet played: conserved on a single clock, so its drift is
        the clock drift, whatever the chunk/block phase. The callback side comes from one
        value the output callback published: reading two rings here races the callbacks (a
        GIL switch between the reads is a block)."""
        held = len(self.orig) - self.in_ring.total_read + self.out_ring.total_written
        if self.io is not None and hasattr(self.io, "io_balance"):
            return int(self.io.io_balance) + held
        return self.in_ring.fill + len(self.orig) + self.out_ring.fill

    def _resync(self) -> None:
        """After a long stall, drop the stale input down to the set point (as a VoIP jitter
        buffer does): the listener has heard the gap already; playing what piled up would
        keep the whole delay, and cutting it in spans takes ~4 s per second of it."""
        if self.in_ring.fill <= self.max_backlog or not self.drift.calibrated:
            return
        surplus = self._in_flight() - self.drift.set_point
        if surplus < RESYNC_S * self.rate:
            return
        n = self.in_ring.discard(min(surplus, self.in_ring.fill - self.chunk_dev))
        self.drift.moved(-n)
        self.resyncs += 1
        self.stale_dropped_samples += n
        log.warning("a %.0f ms stall: dropped its stale input", 1000 * n / self.rate)

    def step(self) -> bool:
        """Process what the input ring holds. Returns False when there was nothing to do."""
        self._resync()
        avail = self.in_ring.fill
        if avail <= 0:
            return False
        x = self.in_ring.read(min(avail, 4 * self.chunk_dev))
        self.samples_in += x.shape[0]
        if not np.isfinite(x).all():
            # A broken driver or virtual device: silence those samples here, once, so that
            # neither the recording, the resampler's history nor the model's stream sees them.
            bad = int(np.count_nonzero(~np.isfinite(x)))
            self.bad_input_samples += bad
            self.last_error = f"input: {self.bad_input_samples} NaN/inf samples set to silence"
            if self.bad_input_samples == bad:
                log.warning("the input device delivers NaN/inf samples: set to silence")
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        for sink in self.input_sinks:
            sink.push(x)
        # Drift edits (a sample dropped or repeated) go in before the watermark, not after:
        # the mark's 20 ms frame grid then runs on unbroken through the output, where a
        # reader locks onto it (an edit after marking shifted the grid: ~10 a second in the
        # JACK loop while the set point settled, and the live code window lost its sync).
        x = self.drift.apply(x)
        self.orig.push(x)
        self.fifo16.push(self.down.process(x))
        produced = False
        while len(self.fifo16) >= self.chunk16:
            self._process_block(self.fifo16.pop(self.chunk16))
            produced = True
        n = len(self.wm)
        if n:
            self._adapt_set_point(n)
            self.drift.observe(self._in_flight(), self._underrun_seen)
            self._emit(self.orig.pop(n), self.wm.pop(n), self.gain.pop(n))
        if produced:
            self._publish()
        return True

    def _adapt_set_point(self, produced: int) -> None:
        """Underruns raise the output set point by what they lacked; calm lowers it again."""
        lacked = (self.io.underrun_samples if self.io is not None else 0) - self._underrun_seen
        if lacked > 0:
            self._underrun_seen += lacked
            self.drift.grow(lacked)
            self._fed_since_underrun = 0
            return
        self._fed_since_underrun += produced
        calm = self._fed_since_underrun - RELAX_AFTER_S * self.rate
        if self.drift.extra and calm >= 0:
            self.drift.relax(self.rate // 1000)  # 1 ms ...
            self._fed_since_underrun -= self.rate  # ... per second of calm

    def _process_block(self, block: np.ndarray) -> None:
        ctl = self.controls  # read once per chunk
        t0 = self.clock()
        marked = False
        wm: np.ndarray | None = None
        behind = self._behind()
        if behind and not ctl.bypass:
            # Let a stale estimate (a GPU hiccup, a GC pause) fade so the model gets retried.
            self._est_compute_s *= 0.97
        if not ctl.bypass and not behind:
            try:
                wm = self.marker.process(block, ctl.message)
                if wm.shape != block.shape or not np.all(np.isfinite(wm)):
                    raise ValueError(f"model returned bad watermark (shape {wm.shape} or NaN)")
                if ctl.alpha != 1.0:
                    wm = wm * np.float32(ctl.alpha)
                marked = True
                self.model_chunks += 1
            except Exception as exc:  # a model failure must not stop the audio
                self.worker_errors += 1
                self.last_error = f"model: {exc!r}"
                if self.worker_errors <= 3:
                    log.exception("watermark model failed; passing audio through unmarked")
                wm = None
        if wm is None:
            wm = np.zeros_like(block)
        up = self.up.process(wm)
        self.wm.push(up)
        mute = not marked and not ctl.bypass and ctl.overload == "mute"
        self.gain.push(np.full(up.shape[0], 0.0 if mute else 1.0, dtype=np.float32))
        if not marked and not ctl.bypass:
            self.unmarked_chunks += 1
            if not self._in_unmarked:
                self.unmarked_spans += 1
        self._in_unmarked = not marked and not ctl.bypass
        elapsed = self.clock() - t0
        if marked:  # estimate from real model runs only
            self._est_compute_s = 0.9 * self._est_compute_s + 0.1 * elapsed
        self.timing.add(1000.0 * elapsed, self.chunk_ms)
        self.chunks += 1

    def _emit(self, orig: np.ndarray, wm: np.ndarray, gain: np.ndarray) -> None:
        out = orig * gain + self.mark_cap.apply(orig, wm)
        out = self.limiter.process(out)
        self.out_ring.write(out)
        self.samples_out += out.shape[0]
        if self.monitor_ring is not None:
            self.monitor_ring.write(out)
        for sink in self.sinks:
            sink.push(out)
        # In and out over the same span (the input as it went out, before the mark): the
        # last input fragment read could be a few samples of a pause (-120 dB beside speech).
        self._levels = (
            float(np.max(np.abs(orig))) if orig.size else 0.0,
            float(np.sqrt(np.mean(orig * orig))) if orig.size else 0.0,
            float(np.max(np.abs(out))),
            float(np.sqrt(np.mean(out * out))),
        )

    # ----- metrics -----------------------------------------------------------------------
    def latency_budget_s(self) -> float:
        io = self.io
        pa = (io.input_latency + io.output_latency) if io else 0.0
        # Samples in flight = out target (+ the most underruns raised it by this run) + path
        # delay (conserved on one clock) + drift band + one block of callback scheduling.
        flight = (
            self.out_target
            + self.drift.peak_extra
            + self.path_delay
            + self.drift.dead_band
            + self.block_size
        )
        return pa + flight / self.rate

    def _publish(self, fresh: bool = False) -> None:
        io = self.io
        p50, p99, rtf = self.timing.stats(fresh)
        in_fill, out_fill = self.in_ring.fill, self.out_ring.fill
        pa_in = io.input_latency if io else 0.0
        pa_out = io.output_latency if io else 0.0
        # Everything captured but not yet played sits in one of these (fifo16 is mirrored
        # in orig, which holds the original until its watermark is out).
        flight = in_fill + len(self.orig) + out_fill
        ctl = self.controls
        xr_in = io.input_overflows if io else 0
        xr_out = io.output_underflows if io else 0
        errors = (io.callback_errors if io else 0) + self.worker_errors
        last = (io.last_error if io and io.last_error else "") or self.last_error
        self._snapshot = Snapshot(
            running=self._running,
            time_s=self.samples_in / self.rate,
            input_frames=io.frames_in if io else 0,
            sample_rate=self.rate,
            chunk_ms=self.chunk_ms,
            threads=self.threads,
            device=self.device,
            message=tuple(ctl.message),
            alpha=ctl.alpha,
            bypass=ctl.bypass,
            peak_in=self._levels[0],
            rms_in=self._levels[1],
            peak_out=self._levels[2],
            rms_out=self._levels[3],
            chunks=self.chunks,
            ms_per_chunk=self.timing.last_ms(),
            ms_per_chunk_p50=p50,
            ms_per_chunk_p99=p99,
            rtf=rtf,
            in_ring_fill=in_fill,
            out_ring_fill=out_fill,
            out_ring_target=self.out_target + self.drift.extra,
            input_latency_ms=1000 * pa_in,
            output_latency_ms=1000 * pa_out,
            pipeline_delay_ms=1000 * self.path_delay / self.rate,
            latency_ms=1000 * (pa_in + pa_out + flight / self.rate),
            latency_budget_ms=1000 * self.latency_budget_s(),
            input_overflows=xr_in,
            output_underflows=xr_out,
            xruns=xr_in + xr_out,
            underruns=io.underruns if io else 0,
            underrun_samples=io.underrun_samples if io else 0,
            input_ring_overflows=self.in_ring.overflow_events,
            stale_dropped_s=self.stale_dropped_samples / self.rate,
            native_callback=bool(getattr(io, "native_callback", False)),
            unmarked_spans=self.unmarked_spans,
            unmarked_s=self.unmarked_chunks * self.chunk_ms / 1000,
            overloaded=self._in_unmarked,
            drift_drops=self.drift.drops,
            drift_inserts=self.drift.inserts,
            limiter_samples=self.limiter.active_samples,
            callback_errors=errors,
            last_error=last,
            detection=self.detection_source() if self.detection_source else NO_DETECTION,
        )

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def final_snapshot(self) -> Snapshot:
        self._publish(fresh=True)
        return dataclasses.replace(self._snapshot, running=False)

    # ----- thread ------------------------------------------------------------------------
    def run(self) -> None:
        ctx: Any = None
        if "torch" in sys.modules:  # inference_mode is per thread: enter it here
            import torch

            ctx = torch.inference_mode()
            ctx.__enter__()
        idle = min(0.002, 0.25 * self.block_size / self.rate)
        try:
            while not self._stop.is_set():
                try:
                    if not self.step():
                        time.sleep(idle)
                except Exception as exc:  # noqa: BLE001 - a dead worker would mean silence
                    # Model failures are handled inside step(); this is anything else (a sink,
                    # the resampler): count it, show it, and keep serving the stream.
                    self.worker_errors += 1
                    self.last_error = f"worker: {exc!r}"
                    if self.worker_errors <= 3:
                        log.exception("worker step failed; the stream goes on")
                    with contextlib.suppress(Exception):
                        self._publish(fresh=True)
                    time.sleep(idle)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)

    def start(self) -> None:
        self._stop.clear()
        self._running = True
        self._thread = threading.Thread(target=self.run, name="audioseal-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._running = False
