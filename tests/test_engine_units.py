"""Engine logic with fake model, fake backend and fake clock (no audio device, no torch)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from engine_fakes import FakeClock, FakeDetector, FakeMarker, fake_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from audioseal_live.engine import Engine, EngineConfig
from audioseal_live.engine.audio_io import CallbackIO
from audioseal_live.engine.delay import DelayLine
from audioseal_live.engine.limiter import SoftLimiter
from audioseal_live.engine.model import FrameDetector, polarity_from_message
from audioseal_live.engine.recorder import Recorder
from audioseal_live.engine.resample import PolyphaseResampler
from audioseal_live.engine.ring import RingBuffer
from audioseal_live.engine.worker import Controls, Worker, chunk_samples_16k
from audioseal_live.errors import AudioFileError, DeviceError, MessageError

if TYPE_CHECKING:
    from audioseal_live.engine.metrics import Detection
    from audioseal_live.engine.monitor import DetectorMonitor

MSG = (1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0)


def noise(seconds: float, rate: int = 48000, level: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(int(seconds * rate))).astype(np.float32)


# ----- ring ------------------------------------------------------------------------------
def test_ring_wraparound_and_overflow() -> None:
    r = RingBuffer(10)
    out = np.zeros(10, dtype=np.float32)
    data = np.arange(100, dtype=np.float32)
    pos = 0
    got = []
    for n_w, n_r in [(7, 5), (6, 8), (9, 4), (3, 8), (10, 10)]:
        pos += r.write(data[pos : pos + n_w])
        k = r.read_into(out[:n_r])
        got.extend(out[:k].tolist())
    got.extend(r.read(10).tolist())
    assert got == data[:pos].tolist()  # FIFO order across wraparounds
    assert r.fill == 0
    r.write(np.ones(8, dtype=np.float32))
    assert r.write(np.ones(5, dtype=np.float32)) == 2
    assert (r.overflow_events, r.overflow_samples) == (1, 3)


def test_ring_mixes_channels_without_losing_order() -> None:
    r = RingBuffer(7)
    x = np.stack([np.arange(5.0), 3 * np.arange(5.0)], axis=1).astype(np.float32)
    r.write(np.zeros(4, dtype=np.float32))
    r.discard(4)  # next write wraps
    r.write_scaled_sum(x, 0.5)
    np.testing.assert_allclose(r.read(5), 2 * np.arange(5.0))


# ----- resampling ------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [48000, 44100])
def test_resampler_round_trip_is_delayed_identity(rate: int) -> None:
    t = np.arange(rate) / rate
    x = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 3100 * t)).astype(np.float32)
    down, up = PolyphaseResampler(rate, 16000), PolyphaseResampler(16000, rate)
    rng = np.random.default_rng(1)
    ys, i = [], 0
    while i < x.shape[0]:  # random chunk schedule: streaming must not care
        n = int(rng.integers(1, 700))
        ys.append(up.process(down.process(x[i : i + n])))
        i += n
    y = np.concatenate(ys)
    delay = down.delay * rate / 16000 + up.delay
    d = round(delay)
    assert abs(y.shape[0] - x.shape[0]) <= 3
    err = y[d + 500 : -500] - x[500 : y.shape[0] - d - 500]
    tol = 2e-3 if d == delay else 2e-2  # 44.1 kHz: alignment rounded by < 0.15 sample
    assert np.max(np.abs(err)) < tol


def test_resampler_chunking_is_exact() -> None:
    x = noise(0.5, 44100)
    whole = PolyphaseResampler(44100, 16000).process(x)
    r = PolyphaseResampler(44100, 16000)
    parts = np.concatenate([r.process(x[i : i + 333]) for i in range(0, x.shape[0], 333)])
    np.testing.assert_allclose(parts, whole, atol=1e-6)


def test_resampler_rejects_aliases() -> None:
    t = np.arange(48000) / 48000
    x = np.sin(2 * np.pi * 12000 * t).astype(np.float32)  # above 16 kHz Nyquist
    y = PolyphaseResampler(48000, 16000).process(x)
    assert np.sqrt(np.mean(y[200:] ** 2)) < 1e-3  # < -60 dB


# ----- limiter and delay -----------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(-20, 20) | st.sampled_from([np.nan, np.inf, -np.inf]), min_size=1, max_size=400
    ),
    st.integers(1, 5),
)
def test_limiter_never_exceeds_full_scale(samples: list[float], chunks: int) -> None:
    lim = SoftLimiter(48000)
    x = np.array(samples, dtype=np.float32)
    for part in np.array_split(x, chunks):
        y = lim.process(part)
        assert np.all(np.isfinite(y))
        assert np.max(np.abs(y), initial=0.0) <= lim.ceiling


def test_limiter_leaves_quiet_audio_bit_exact() -> None:
    x = noise(0.2, level=0.1)
    np.testing.assert_array_equal(SoftLimiter(48000).process(x), x)


def test_delay_line() -> None:
    d = DelayLine(3)
    d.push(np.arange(1, 6, dtype=np.float32))
    assert d.pop(5).tolist() == [0, 0, 0, 1, 2]


# ----- engine with a fake backend -------------------------------------------------------
def run_engine(
    eng: Engine, seconds: float, block: int = 256, out_block: int | None = None, slow_every: int = 0
) -> None:
    """Interleave callbacks and worker steps like real time would."""
    b = eng.backend
    n = int(seconds * b.sample_rate / block)
    for i in range(n):
        b.feed(block)
        if not slow_every or i % slow_every == 0:
            eng.pump()
        b.drain(out_block or block)


def make_engine(
    marker: FakeMarker | None = None, detector: FrameDetector | None = None, **cfg: object
) -> Engine:
    """A started engine on the fake backend; with a detector, monitoring its output."""
    monitor = "output" if detector is not None else None
    config = EngineConfig(message=MSG, monitor=monitor, **cfg)  # type: ignore[arg-type]
    eng = Engine(
        config,
        marker=marker or FakeMarker(),
        detector=detector,
        backend_factory=fake_factory(),
    )
    eng.start(threads=False)
    return eng


def test_output_is_delayed_input_plus_watermark() -> None:
    eng = make_engine(FakeMarker(scale=0.0))
    eng.backend.source = x = noise(2.0)
    run_engine(eng, 2.0)
    snap = eng.stop()
    y = eng.backend.output()
    lag = eng.worker.out_target + eng.worker.path_delay
    # Zero watermark -> the untouched original, exactly, after a fixed latency.
    np.testing.assert_array_equal(y[lag:], x[: y.shape[0] - lag])
    assert snap.underruns == 0 and snap.xruns == 0 and snap.unmarked_spans == 0
    assert snap.input_frames == 256 * (96000 // 256)  # what the input callback received
    assert abs(snap.latency_ms - (1000 * lag / 48000 + snap.output_latency_ms)) < 6
    assert snap.latency_ms <= snap.latency_budget_ms


def test_a_stopped_engine_starts_again_as_a_new_session() -> None:
    eng = make_engine(FakeMarker(scale=0.0))
    eng.backend.source = noise(1.0)
    run_engine(eng, 0.5)
    first = eng.stop()
    assert first.input_frames > 0 and not eng.backend.started
    eng.start(threads=False)  # a new backend, worker and counters
    with pytest.raises(DeviceError, match="already running"):
        eng.start(threads=False)
    assert eng.snapshot() is not first and eng.snapshot().input_frames == 0
    eng.backend.source = x = noise(1.0)
    run_engine(eng, 1.0)
    second = eng.stop()
    assert second is not first and not eng.backend.started
    assert second.input_frames == 256 * (48000 // 256)
    y = eng.backend.output()  # the new session passes its own input through
    lag = eng.worker.out_target + eng.worker.path_delay
    np.testing.assert_array_equal(y[lag:], x[: y.shape[0] - lag])


def test_watermark_is_added_and_aligned() -> None:
    eng = make_engine(FakeMarker(scale=0.01))
    t = np.arange(96000) / 48000
    eng.backend.source = x = (0.2 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    run_engine(eng, 2.0)
    eng.stop()
    y = eng.backend.output()
    lag = eng.worker.out_target + eng.worker.path_delay
    wm = y[lag + 4800 : 90000] - x[4800 : 90000 - lag]
    # The fake watermark is 1% of the (band-limited) input: aligned means in phase.
    np.testing.assert_allclose(wm, 0.01 * x[4800 : 90000 - lag], atol=2e-4)


def test_gc_pause_passes_audio_through_and_counts() -> None:
    marker = FakeMarker(scale=0.01)
    eng = make_engine(marker)
    marker.calls = 0  # forget the warm-up
    eng.backend.source = noise(4.0)
    run_engine(eng, 1.0)
    for _ in range(40):  # a 200 ms stall: audio keeps flowing, the worker does not run
        eng.backend.feed(256)
        eng.backend.drain(256)
    run_engine(eng, 2.0)
    snap = eng.stop()
    assert snap.unmarked_spans >= 1 and snap.unmarked_s > 0
    assert marker.calls < snap.chunks  # some chunks skipped the model
    assert not snap.overloaded  # recovered
    assert eng.worker.resyncs == 0  # a short stall is played (unmarked), not dropped
    assert np.all(np.isfinite(eng.backend.output()))


def test_a_long_stall_drops_its_stale_input_instead_of_playing_it_late() -> None:
    eng = make_engine(FakeMarker(scale=0.01))
    eng.backend.source = noise(8.0)
    run_engine(eng, 1.0)
    w = eng.worker
    for _ in range(int(0.8 * 48000 / 256)):  # 0.8 s without the worker: a long GC pause
        eng.backend.feed(256)
        eng.backend.drain(256)
    run_engine(eng, 0.2)
    snap = eng.snapshot()
    assert w.resyncs == 1 and 0.5 < snap.stale_dropped_s < 0.8
    # latency is back right away: in flight within the dead band of the set point
    assert abs(w._in_flight() - w.drift.set_point) <= 2 * w.drift.dead_band + w.chunk_dev
    run_engine(eng, 2.0)
    snap = eng.stop()
    assert w.resyncs == 1 and snap.unmarked_spans <= 1
    assert abs(w.drift.smoothed_fill - w.drift.set_point) <= 2 * w.drift.dead_band


@pytest.mark.parametrize("policy", ["pass", "mute"])
def test_slow_model_is_detected_with_fake_clock(policy: str) -> None:
    clock = FakeClock()
    marker = FakeMarker(scale=0.0, clock=clock, cost_s=0.050)  # 50 ms per 20 ms chunk
    other = "mute" if policy == "pass" else "pass"
    eng = Engine(
        EngineConfig(message=MSG, monitor=None, overload=other),  # type: ignore[arg-type]
        marker=marker,
        backend_factory=fake_factory(),
    )
    eng.start(threads=False)
    eng.set_overload_policy(policy)  # type: ignore[arg-type]  # a live control: it wins
    eng.worker.clock = clock
    eng.worker._est_compute_s = 0.050  # as measured by the (real-clock) warm-up
    b = eng.backend
    b.source = noise(3.0, level=0.1) + 0.1
    busy_until = 0.0
    for i in range(int(3.0 * 48000 / 256)):
        now = (i + 1) * 256 / 48000
        b.feed(256)
        if now >= busy_until:  # the worker is blocked while the slow model runs
            clock.t = now
            eng.pump()
            busy_until = clock.t
        b.drain(256)
    snap = eng.stop()
    assert snap.unmarked_spans >= 1 and snap.unmarked_s > 1.0
    assert snap.ms_per_chunk_p99 >= 49
    y = b.output()[48000:]
    if policy == "mute":
        assert np.mean(y == 0) > 0.5  # overload muted
    else:
        assert np.mean(np.abs(y) > 0) > 0.9  # original passed through


def test_nan_from_the_input_device_is_silenced_and_reported() -> None:
    eng = make_engine(FakeMarker())
    x = noise(3.0)
    x[48000:48100] = np.nan
    x[50000] = np.inf
    eng.backend.source = x
    run_engine(eng, 3.0)
    snap = eng.stop()
    y = eng.backend.output()
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0
    assert eng.worker.bad_input_samples == 101 and "101 NaN/inf" in snap.last_error
    assert snap.unmarked_spans == 0 and eng.worker.worker_errors == 0  # the model kept marking


@pytest.mark.parametrize(
    "setting", [{"chunk_ms": 37}, {"chunk_ms": 300}, {"alpha": -1}, {"alpha": float("nan")}]
)
def test_settings_out_of_range_are_clear_errors(setting: dict[str, float]) -> None:
    from audioseal_live.cli import main
    from audioseal_live.errors import SettingError

    with pytest.raises(SettingError, match="chunk must|alpha"):
        Engine(EngineConfig(**setting), marker=FakeMarker(), backend_factory=fake_factory())
    flag, value = next(iter(setting.items()))
    argv = ["run", f"--{flag.replace('_', '-')}", str(value), "--duration", "1"]
    assert main(argv) == 2  # one line on stderr, before any device or model is touched


def test_drift_corrections_keep_fill_bounded() -> None:
    # Output clock ~500 ppm off (5x a poor sound card): one sample more/less every 8 blocks.
    for out_block, kind in [(257, "inserts"), (255, "drops")]:
        eng = make_engine(FakeMarker(scale=0.0))
        eng.backend.source = noise(40.0)
        fills = []
        b = eng.backend
        for i in range(int(30 * 48000 / 256)):
            b.feed(256)
            eng.pump()
            b.drain(out_block if i % 8 == 0 else 256)
            fills.append(eng.worker.out_ring.fill)
        snap = eng.stop()
        drift = eng.worker.drift
        assert getattr(drift, kind) > 300, kind  # ~440 needed over 30 s
        assert snap.drift_corrections == drift.corrections
        late = np.array(fills[len(fills) // 2 :])
        lo, hi = late.min(), late.max()
        assert lo > 0 and hi < eng.worker.out_target + 2 * drift.dead_band
        assert snap.underruns == 0


class CounterMarker(FakeMarker):
    """A watermark that counts the samples it has marked: any edit after marking shows."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = 0

    def process(self, x16k: np.ndarray, message: Sequence[int]) -> np.ndarray:
        n = x16k.shape[0]
        self.pos += n
        return (1e-5 * (np.arange(self.pos - n, self.pos) % 10000)).astype(np.float32)


class NoCap:
    """The mark as the model made it, whatever the signal's level."""

    def apply(self, signal: np.ndarray, mark: np.ndarray) -> np.ndarray:
        return mark


def test_drift_edits_leave_the_watermark_unbroken() -> None:
    """Drift edits go in before marking: the mark's frame grid runs on through the output."""
    eng = Engine(
        EngineConfig(message=MSG, sample_rate=16000),
        marker=CounterMarker(),
        backend_factory=fake_factory(rate=16000),
    )
    eng.start(threads=False)
    eng.worker.mark_cap = NoCap()  # on silence the cap would remove the mark (tested apart)
    b = eng.backend
    b.source = np.zeros(16000 * 40, dtype=np.float32)  # silence: the output is the mark alone
    for i in range(int(30 * 16000 / 256)):
        b.feed(256)
        eng.pump()
        b.drain(255 if i % 8 == 0 else 256)  # a fast output clock: samples must be dropped
    eng.stop()
    assert eng.worker.drift.drops > 30  # past the dead band (9 ms) after ~19 s
    y = b.output().astype(np.float64)
    y = y[np.argmax(y > 0) :]  # from the first marked sample
    steps = np.diff(y)
    wraps = np.isclose(steps, 1e-5 - 0.1, atol=2e-7)  # the counter wraps every 10,000
    assert np.allclose(steps[~wraps], 1e-5, atol=2e-7)  # every sample of the mark, in order
    assert 0 < wraps.sum() < len(y) / 9000


def test_underruns_raise_the_set_point_then_calm_lowers_it() -> None:
    """A stall that underruns makes the ring keep more (not drop the late samples), capped;
    after RELAX_AFTER_S of clean output the set point comes back down by 1 ms per second."""
    from audioseal_live.engine.worker import RELAX_AFTER_S

    eng = make_engine(FakeMarker(scale=0.0))
    b, w = eng.backend, eng.worker
    b.source = noise(60.0)
    run_engine(eng, 2.0)
    base = w.out_target
    budget0 = eng.snapshot().latency_budget_ms
    for _ in range(7):  # the worker stalls for 37 ms: the output ring runs dry
        b.feed(256)
        b.drain(256)
    run_engine(eng, 2.0)
    snap = eng.snapshot()
    lacked = snap.underrun_samples
    assert snap.underruns > 0 and lacked > 0
    assert w.drift.extra == min(lacked, w.drift.max_extra) > 0
    assert snap.out_ring_target == base + w.drift.extra
    assert w.drift.drops < 50  # the late samples stay as margin (a fixed set point drops them)
    assert snap.latency_budget_ms > budget0  # the budget owns up to the extra
    run_engine(eng, RELAX_AFTER_S + w.drift.extra / 48 + 3.0)  # 48 samples per second at 48 k
    snap = eng.stop()
    assert w.drift.extra == 0 and snap.out_ring_target == base
    assert snap.underruns == eng.snapshot().underruns  # no new underruns while relaxing
    assert abs(w.drift.smoothed_fill - w.drift.set_point) <= 2 * w.drift.dead_band
    # a long stall: the set point grows by at most half a chunk, the rest is dropped as before
    eng = make_engine(FakeMarker(scale=0.0))
    eng.backend.source = noise(10.0)
    run_engine(eng, 2.0)
    for _ in range(16):
        eng.backend.feed(256)
        eng.backend.drain(256)
    run_engine(eng, 3.0)
    drift = eng.worker.drift
    assert drift.extra == drift.max_extra == eng.worker.chunk_dev // 2
    # the rest of the late samples went as crossfaded spans: back at the set point in < 3 s
    # (single-sample edits, 4 per chunk, would have needed ~18 s for these ~3,600 samples)
    assert drift.drops > 0 and drift.spans > 0
    assert abs(drift.smoothed_fill - drift.set_point) <= 2 * drift.dead_band
    eng.stop()


def test_surplus_is_cut_as_one_crossfaded_span_in_a_pause() -> None:
    """A stall's surplus goes at once, crossfaded, where the block is quiet; never inside the
    voice unless the surplus exceeds a whole block."""
    from audioseal_live.engine.drift import DriftCorrector, cut_span

    rate, n = 48000, 960
    t = np.arange(n) / rate
    voice = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    voice[600:800] *= 1e-3  # a pause
    cut = cut_span(voice, 100, 96, force=False)
    assert cut is not None and cut.shape[0] == n - 100
    assert np.array_equal(cut[:600], voice[:600]) and np.array_equal(cut[-160:], voice[-160:])
    assert np.max(np.abs(np.diff(cut))) <= np.max(np.abs(np.diff(voice))) + 1e-6  # no click
    assert cut_span(np.full(n, 0.3, dtype=np.float32), 100, 96, force=False) is None
    assert cut_span(voice, 900, 96, force=True) is None  # wider than the block

    drift = DriftCorrector(2000, dead_band=176, rate=rate, calibrate=0)
    drift.observe(2000 + 1500)  # 31 ms over the set point (a stall's late samples)
    out = drift.apply(voice)
    assert drift.spans == 1 and out.shape[0] == n - n // 4 and drift.drops == n // 4
    steady = np.full(n, 0.3, dtype=np.float32)
    drift._avg = 2000.0 + 600  # > twice the dead band, < a block: no quiet span, no force
    assert drift.apply(steady).shape[0] == n - 3 and drift.spans == 1  # single-sample edits
    drift._avg = 2000.0 + 1500  # > a block: cut even where nothing is quiet
    assert drift.apply(steady).shape[0] == n - n // 4 and drift.spans == 2


def test_startup_underruns_do_not_become_the_set_point() -> None:
    from audioseal_live.engine.drift import DriftCorrector

    drift = DriftCorrector(0, dead_band=176, rate=48000, calibrate=4)
    for _ in range(4):
        drift.observe(2300 + 960, surplus=960)  # an underrun's late samples in the ring
    assert drift.target_fill == 2300


def test_same_clock_needs_no_drift_correction() -> None:
    eng = make_engine(FakeMarker(scale=0.0))
    eng.backend.source = noise(10.0)
    run_engine(eng, 10.0)
    assert eng.stop().drift_corrections == 0


def test_callback_exceptions_are_caught_and_reported() -> None:
    io = CallbackIO(RingBuffer(1024), RingBuffer(1024))
    io.on_input(None, 256, False)  # type: ignore[arg-type]
    out = np.full((256, 2), 5.0, dtype=np.float32)
    io.out_ring = None  # type: ignore[assignment]
    io.on_output(out, 256, True)
    assert io.stats.callback_errors == 2
    assert "audio callback" in io.stats.last_error
    assert np.all(out == 0)  # output still filled


def test_underrun_gives_zeros_and_is_counted() -> None:
    io = CallbackIO(RingBuffer(1024), RingBuffer(1024))
    io.out_ring.write(np.ones(100, dtype=np.float32))
    out = np.full((256, 2), 7.0, dtype=np.float32)
    io.on_output(out, 256, False)
    assert np.all(out[:100] == 1) and np.all(out[100:] == 0)
    assert (io.stats.underruns, io.stats.underrun_samples) == (1, 156)


def test_model_failure_passes_through_and_is_reported() -> None:
    marker = FakeMarker(scale=0.0)
    eng = make_engine(marker)
    marker.fail = True
    eng.backend.source = x = noise(1.0)
    run_engine(eng, 1.0)
    snap = eng.stop()
    assert snap.callback_errors > 0 and "model exploded" in snap.last_error
    y = eng.backend.output()
    lag = eng.worker.out_target + eng.worker.path_delay
    np.testing.assert_array_equal(y[lag:], x[: y.shape[0] - lag])


def test_controls_are_read_per_chunk() -> None:
    eng = make_engine(FakeMarker(scale=0.0))
    eng.set_alpha(0.5)
    eng.set_bypass(True)
    assert eng.worker.controls.alpha == 0.5 and eng.worker.controls.bypass
    with pytest.raises(MessageError):
        eng.set_message([0, 1, 2])
    eng.stop()


def test_chunk_sizes() -> None:
    assert chunk_samples_16k(20) == 320 and chunk_samples_16k(200) == 3200
    for bad in (10, 30, 220):
        with pytest.raises(ValueError):
            chunk_samples_16k(bad)


def test_worker_chunk_of_100ms_at_44k() -> None:
    w = Worker(
        FakeMarker(0.0),
        RingBuffer(1 << 16),
        RingBuffer(1 << 16),
        44100,
        Controls(message=MSG),
        chunk_ms=100,
    )
    w.in_ring.write(noise(1.0, 44100))
    while w.step():
        pass
    assert w.chunks == 10 and w.out_ring.fill > 0.85 * 44100


# ----- monitor ---------------------------------------------------------------------------
@pytest.mark.parametrize(("sign", "phases"), [(1.0, 1), (-1.0, 1), (1.0, 4)])
def test_monitor_detects_bits_and_polarity(sign: float, phases: int) -> None:
    # with several grid phases, the bits come from the surest one (here the last)
    eng = make_engine(
        FakeMarker(0.0), detector=FakeDetector(MSG, level=0.05, phases=phases, sync=phases - 1)
    )
    eng.backend.source = np.full(48000 * 3, 0.2 * sign, dtype=np.float32)
    run_engine(eng, 3.0)
    det = eng.stop().detection
    assert det.prob_smoothed > 0.85
    assert det.bits == MSG and det.match
    assert det.inverted == (sign < 0)
    assert min(det.bit_confidence) > 0.7  # sigmoid(2) -> 0.76


class BothPolarities(FakeDetector):
    """Finds the mark in x and -x, a little surer in -x (as the shipped default does)."""

    def process(self, x16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, logits = super().process(x16k)
        p[1] = np.minimum(p[1] + 0.05, 1.0)  # batch row 1 is the monitor's inverted copy
        return p, logits


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_monitor_locks_onto_the_marked_phase_then_searches_again_when_lost(sign: float) -> None:
    det = FakeDetector(MSG, level=0.05, phases=4, sync=2)
    eng = make_engine(FakeMarker(0.0), detector=det)
    mon = eng.monitor
    assert mon is not None
    marked = np.full(48000 * 5, 0.2 * sign, dtype=np.float32)
    # silence: held as a pause for QUIET_HOLD_S (5 s), then unmarked for unlock_s (2 s)
    eng.backend.source = np.concatenate([marked, np.zeros(48000 * 9, np.float32), marked])
    run_engine(eng, 2.5)
    assert mon.lock is None and det.calls[-1] == 2 * 4  # searching: x and -x, every phase
    run_engine(eng, 2.0)
    assert mon.lock == (int(sign < 0), 2)  # the marked polarity and the surest phase
    assert det.calls[-1] == 1  # an eighth of the work
    d = eng.snapshot().detection
    assert d.bits == MSG and d.match and d.inverted == (sign < 0) and d.prob_smoothed > 0.85
    run_engine(eng, 8.0)  # the mark is gone (silence) for longer than the hold + unlock_s
    assert mon.lock is None and det.calls[-1] == 8 and mon.locks == 1
    run_engine(eng, 5.0)  # and back: found and locked again
    assert mon.lock == (int(sign < 0), 2) and mon.locks == 2
    d = eng.stop().detection
    assert d.bits == MSG and d.match


def test_monitor_searches_again_on_schedule_without_a_dip() -> None:
    det = FakeDetector(MSG, level=0.05, phases=4, sync=1)
    eng = make_engine(FakeMarker(0.0), detector=det)
    mon = eng.monitor
    assert mon is not None
    eng.backend.source = np.full(48000 * 40, 0.2, dtype=np.float32)
    run_engine(eng, 5.0)
    assert mon.lock == (0, 1) and mon.locks == 1
    run_engine(eng, 25.0)  # past 3 s + relock_s (20 s) + 3 s: searched again, locked again
    assert mon.locks == 2 and mon.lock == (0, 1)
    assert 8 in det.calls[-300:]  # the search ran (x and -x, every phase)
    d = eng.stop().detection
    assert min(d.history) > 0.85  # the smoothed probability did not dip
    assert d.bits == MSG and d.match


def test_monitor_calls_polarity_inverted_only_on_clear_evidence() -> None:
    eng = make_engine(FakeMarker(0.0), detector=BothPolarities(MSG, level=-1.0))
    eng.backend.source = np.full(48000 * 2, -0.2, dtype=np.float32)
    run_engine(eng, 2.0)
    det = eng.stop().detection
    assert det.prob_smoothed > 0.85 and det.bits == MSG
    assert not det.inverted  # 0.95 vs 0.90 is no evidence of an inverted chain


def test_status_line_says_an_inverted_chain_and_whether_the_message_told_it() -> None:
    from audioseal_live.engine.metrics import Detection, Snapshot

    det = Detection(0.9, 0.9, MSG, (1.0,) * 16, True)
    lines = [
        Snapshot(detection=d).status_line()
        for d in (
            det,
            dataclasses.replace(det, inverted=True),
            dataclasses.replace(det, inverted=True, polarity_from_message=True),
        )
    ]
    assert [line.rstrip()[-7:] for line in lines] == ["0010 ok", " ok inv", "ok inv?"]
    # one width whatever it says: redrawn with "\r", a shorter line would leave a stale tail
    assert len({len(line) for line in lines}) == 1
    # on a terminal: within its width (a wrapped line cannot be redrawn), the figures kept
    busy = dataclasses.replace(
        Snapshot(detection=det), time_s=12.3, latency_ms=48.9, xruns=198, underruns=11
    )
    assert len(busy.status_line()) > 120
    for width in (80, 120):
        line = busy.status_line(width)
        assert len(line) == width - 1
        assert all(s in line for s in ("t=12.3s", "lat 49 ms", "xruns 198 under 11", "P 0.90 ok"))
    assert busy.status_line(200) == busy.status_line().ljust(199)
    assert len(busy.status_line(20)) == 19  # a tiny terminal: cut, never wrapped


def test_status_line_says_when_no_detector_listens() -> None:
    from audioseal_live.engine.metrics import NO_DETECTION, Snapshot

    snap = Snapshot(detection=NO_DETECTION)
    assert snap.status_line().endswith("| detector off") and "P 0.00" not in snap.status_line()
    assert "detector off" in snap.status_line(80)


def test_a_lost_device_or_a_stalled_input_is_said() -> None:
    eng = make_engine()
    run_engine(eng, 0.5)
    assert eng.device_problem(now=100.0) == ""
    assert eng.device_problem(now=102.0) == ""  # no input for 2 s: not yet
    assert "no audio arrived from the input for 3 s" in eng.device_problem(now=103.5)
    run_engine(eng, 0.1)  # input again: fine again
    assert eng.device_problem(now=104.0) == ""
    eng.backend.active = False  # what PortAudio says once a device is gone
    assert "the audio device stopped" in eng.device_problem(now=104.1)
    eng.stop()
    assert eng.device_problem() == ""  # a stopped session has nothing to lose


def test_a_portaudio_call_that_never_returns_is_left_behind(monkeypatch) -> None:
    """PortAudio's JACK host never returns from a stream stop once the server is gone: the
    session must still end and save (the process went on hanging, review)."""
    import threading

    from audioseal_live.engine import audio_io

    unregistered: list[object] = []
    monkeypatch.setattr(audio_io, "_abandoned", False)
    monkeypatch.setattr(audio_io.atexit, "unregister", unregistered.append)
    assert audio_io.portaudio_call(lambda: None, "quick") is True
    hang = threading.Event()
    t0 = time.monotonic()
    assert audio_io.portaudio_call(hang.wait, "stuck", timeout=0.2) is False
    assert time.monotonic() - t0 < 2 and audio_io._abandoned
    assert unregistered  # not terminated at exit either (its JACK host would abort)
    assert audio_io.portaudio_call(lambda: None, "after") is False  # left alone from then
    with pytest.raises(DeviceError, match="restart the program"):
        audio_io.rescan_devices()
    with pytest.raises(DeviceError, match="restart the program"):  # no new Start either
        audio_io.check_portaudio_usable()
    hang.set()


def test_a_jack_server_gone_since_portaudio_started_is_never_terminated(monkeypatch) -> None:
    """A JACK server killed or restarted under an idle window: PortAudio's terminate (a
    rescan, the exit) aborted or crashed the process (review); now it is refused in words."""
    from audioseal_live.engine import audio_io

    unregistered: list[object] = []
    monkeypatch.setattr(audio_io, "_abandoned", False)
    monkeypatch.setattr(audio_io.atexit, "unregister", unregistered.append)
    monkeypatch.setattr(audio_io, "_server_pids", lambda: {4242})
    monkeypatch.setattr(audio_io, "_jack_servers", frozenset({4242}))
    assert not audio_io.jack_server_gone()
    audio_io.check_portaudio_usable()  # the server PortAudio knows is still there
    monkeypatch.setattr(audio_io, "_server_pids", lambda: {4343})  # restarted: another one
    assert audio_io.jack_server_gone()
    with pytest.raises(DeviceError, match="restart the program"):
        audio_io.rescan_devices()
    assert unregistered and audio_io._abandoned
    monkeypatch.setattr(audio_io, "_jack_servers", frozenset())  # no JACK host: no watch
    assert not audio_io.jack_server_gone()


def test_only_the_jack_server_portaudio_uses_is_watched(monkeypatch) -> None:
    """Another jackd left running kept a dead server 'alive': PortAudio was terminated at
    exit and aborted the process (pa_jack.c assertion, review)."""
    import shutil
    import subprocess
    import sys

    from audioseal_live.engine import audio_io

    name = audio_io.jack_server_name
    assert name(["jackd", "-d", "dummy"]) == "default"
    assert name(["jackd", "--no-realtime", "-n", "a", "-d", "dummy"]) == "a"
    assert name(["jackd", "-nb", "-d", "dummy"]) == name(["jackd", "--name=b"]) == "b"
    assert name(["jackd", "-d", "alsa", "-n", "3"]) == "default"  # ALSA's periods
    assert name(["jackd", "--driver=alsa", "-n", "3"]) == "default"
    assert name(["jackd", "-d", "dummy"], "e") == "e"  # JACK_DEFAULT_SERVER=e jackd ...
    assert name(["jackd", "-n", "a", "-d", "dummy"], "e") == "a"
    if shutil.which("jackd") is None or not sys.platform.startswith("linux"):
        pytest.skip("needs jackd and /proc")
    env = {**os.environ, "JACK_NO_AUDIO_RESERVATION": "1"}
    tag = f"w{os.getpid()}"
    # one named by its environment (as JACK's clients are), one on its command line; one
    # after the other (two starting at once race on JACK's registry: one exited)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for i in (0, 1):
            servers.append(
                subprocess.Popen(
                    ["jackd", "--no-realtime", *(["-n", f"{tag}{i}"] if i else []), "-d", "dummy"],
                    env={**env, "JACK_DEFAULT_SERVER": f"{tag}{i}"},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not os.path.exists(
                f"/dev/shm/jack_{tag}{i}_{os.getuid()}_0"
            ):  # up: its server file is there
                assert servers[i].poll() is None, "jackd did not start"
                time.sleep(0.05)
        assert audio_io._server_pids(f"{tag}0") == {servers[0].pid}
        assert audio_io._server_pids(f"{tag}1") == {servers[1].pid}
        assert {s.pid for s in servers} <= audio_io._server_pids()

        class JackHost:
            def query_hostapis(self) -> list[dict[str, str]]:
                return [{"name": "JACK Audio Connection Kit"}]

        monkeypatch.setenv("JACK_DEFAULT_SERVER", f"{tag}0")
        monkeypatch.setattr(audio_io, "_jack_servers", audio_io._note_jack_servers(JackHost()))
        assert audio_io._jack_servers == {servers[0].pid}
        servers[0].terminate()
        servers[0].wait(10)
        assert audio_io.jack_server_gone()  # though the other server still runs
    finally:
        # SIGTERM, not SIGKILL: a killed jackd leaves its entry in JACK's shared registry,
        # and after a few of those no server starts ("Too many servers already active")
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_stop_signals_end_a_live_session_as_ctrl_c_does() -> None:
    import signal

    from audioseal_live.engine.commands import _stop_signals_ignored, _stop_signals_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), _stop_signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    with _stop_signals_ignored():  # while the session is saved: nothing interrupts
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) == before


def marked_second(mon: DetectorMonitor, seconds: float = 1.0) -> Detection:
    """Feed the monitor ``seconds`` of a constant the fake detectors call marked, one step;
    its detection after."""
    mon.ring.write(np.full(round(48000 * seconds), 0.2, np.float32))
    mon.step()
    return mon.detection


def test_monitor_never_locks_onto_a_polarity_read_off_the_message() -> None:
    """The network finds the mark in x and -x alike and the code's own check cannot tell:
    the polarity shown comes from the message, and stays marked as such (no lock on it)."""
    from audioseal_live.engine.model import CodeReadout
    from audioseal_live.engine.monitor import DetectorMonitor

    class Undecided:  # a sign code read as the message's complement, its check undecided
        sync_min = 1.0

        def reset(self, keep_polarity: bool = False) -> None: ...

        def push(self, x: np.ndarray) -> None: ...

        def read(self) -> CodeReadout:
            z = -3.0 * (2 * np.array(MSG, float) - 1)
            return CodeReadout(z, sync=5.0, p_marked=0.99, inverted=None)

    class BothAlike(FakeDetector):
        def process(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            p, logits = super().process(x)
            return np.full_like(p, 0.9), logits

        def code_stream(self, seconds: float | None) -> Undecided:
            return Undecided()

    mon = DetectorMonitor(BothAlike(MSG), 48000, message=lambda: MSG)
    mon.reset()
    for _ in range(6):
        d = marked_second(mon)
        assert d.match and d.inverted and d.polarity_from_message and mon.lock is None, d


def test_the_codes_polarity_check_overrules_a_lock_on_the_other_polarity() -> None:
    """Locked onto -x (an earlier check said inverted: a re-routed chain since), the code's
    check then says 'as recorded': the bits follow the check (they read complemented,
    MISMATCH, in the window's live test) and the lock is searched again. Before the code has
    decided, the network's higher score for -x does not tell the polarity (a detector
    trained with flips finds the mark in both)."""
    from audioseal_live.engine.model import CodeReadout
    from audioseal_live.engine.monitor import DetectorMonitor

    class Checked:
        sync_min = 1.0
        inverted: bool | None = None  # undecided at first

        def reset(self, keep_polarity: bool = False) -> None: ...

        def push(self, x: np.ndarray) -> None: ...

        def read(self) -> CodeReadout:
            z = 3.0 * (2 * np.array(MSG, float) - 1)  # the message, as recorded
            return CodeReadout(z, sync=8.0, p_marked=0.99, inverted=self.inverted)

    code = Checked()

    class FavoursInverted(FakeDetector):
        def process(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            p, logits = super().process(x)
            p = np.full_like(p, 0.3)
            p[-1] = 0.95  # the last row of the batch (-x while searching) scores higher
            return p, logits

        def code_stream(self, seconds: float | None) -> Checked:
            return code

    mon = DetectorMonitor(FavoursInverted(MSG), 48000, message=lambda: MSG)
    mon.reset()
    for _ in range(3):  # undecided: shown as recorded, whatever the network scores
        d = marked_second(mon)
        assert not d.inverted and d.bits == MSG and mon.lock is None, d
    code.inverted = True  # an earlier check: inverted (the bits then read complemented)
    for _ in range(8):
        marked_second(mon)
    assert mon.lock is not None and mon.lock[0] == 1  # locked onto -x
    code.inverted = False  # the code's check: as recorded
    d = marked_second(mon, 0.1)
    assert d.match and not d.inverted and d.bits == MSG, d
    assert mon.lock is None or mon.lock[0] == 0


def test_a_quiet_chain_is_not_called_inverted_and_weak_codes_show_no_bits() -> None:
    """A loopback 20 dB down: the network scored x and -x 0.16 and 0.26 (both noise) and the
    window said 'polarity inverted' with the message's complement; and bits read from a
    window without the code (sync under its floor) showed as MISMATCH (review)."""
    from audioseal_live.engine.model import CodeReadout, inverted_wins, polarity_told
    from audioseal_live.engine.monitor import DetectorMonitor

    assert not inverted_wins(0.16, 0.26) and not polarity_told(0.16, 0.26)
    assert inverted_wins(0.1, 0.9) and polarity_told(0.9, 0.1)

    class Weak:
        sync_min = 5.0
        sync = 8.0

        def reset(self, keep_polarity: bool = False) -> None: ...

        def push(self, x: np.ndarray) -> None: ...

        def read(self) -> CodeReadout:
            z = 3.0 * (2 * np.array(MSG, float) - 1)  # the message, as recorded
            p_marked = 0.99 if self.sync >= self.sync_min else 0.1
            return CodeReadout(z, sync=self.sync, p_marked=p_marked, inverted=None)

    code = Weak()

    class Quiet(FakeDetector):
        def process(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            p, logits = super().process(x)
            p = np.full_like(p, 0.16)
            p[-1] = 0.26  # -x "higher", both far under the threshold
            return p, logits

        def code_stream(self, seconds: float | None) -> Weak:
            return code

    mon = DetectorMonitor(Quiet(MSG), 48000, message=lambda: MSG)
    mon.reset()
    for _ in range(4):
        d = marked_second(mon)
        assert not d.inverted and d.bits == MSG and d.match, d  # the code holds: as recorded
    code.sync = 3.0  # the code's window no longer holds it
    mon.ring.write(np.full(4800, 0.2, np.float32))
    mon.step()
    d = mon.detection
    assert d.bits == () and d.match is None and not d.inverted, d


def test_a_noisy_pause_under_the_code_does_not_lose_the_lock_or_its_polarity() -> None:
    """In a noisy pause the network's P fell to 0.16 while the code still read sync 7.6: the
    lock counted as lost, the reset forgot the code's polarity verdict and the network then
    picked -x: 'inverted' and the complement for ~3 s (review)."""
    from audioseal_live.engine.model import CodeReadout
    from audioseal_live.engine.monitor import DetectorMonitor

    class Present:
        sync_min = 5.0
        inverted: bool | None = False  # decided: as recorded
        resets: list[bool] = []

        def reset(self, keep_polarity: bool = False) -> None:
            self.resets.append(keep_polarity)
            if not keep_polarity:
                self.inverted = None

        def push(self, x: np.ndarray) -> None: ...

        def read(self) -> CodeReadout:
            z = 3.0 * (2 * np.array(MSG, float) - 1)
            return CodeReadout(z, sync=7.6, p_marked=0.99, inverted=self.inverted)

    code = Present()
    level = {"p": 0.9}

    class Fading(FakeDetector):
        def process(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            p, logits = super().process(x)
            return np.full_like(p, level["p"]), logits

        def code_stream(self, seconds: float | None) -> Present:
            return code

    mon = DetectorMonitor(Fading(MSG), 48000, message=lambda: MSG)
    mon.reset()
    code.inverted = False  # the code's check has decided: as recorded
    for _ in range(6):
        marked_second(mon)
    assert mon.lock == (0, 0)
    level["p"] = 0.16  # the network loses it; the code does not
    for _ in range(5):  # 5 s, past the 2 s that unlock
        d = marked_second(mon)
        assert not d.inverted and d.bits == MSG and d.match, d
    assert mon.lock == (0, 0) and code.inverted is False
    code.inverted = True  # a lock lost for good keeps a decided verdict through its reset
    mon._update_lock(0, 0.0, code_there=False)
    mon._lost = mon._n_unlock
    mon._update_lock(0, 0.0, code_there=False)
    assert code.resets[-1] is True and code.inverted is True


def test_an_undecided_polarity_recheck_keeps_the_last_verdict() -> None:
    """The code stream's polarity check every 3 s: an undecided one (the bit head reads
    nothing in this second) replaced a decided 'as recorded' with None (review)."""
    import torch

    from audioseal_live.engine.model import TorchCodeStream

    class Read:
        sync = torch.tensor([9.0])
        z = torch.zeros(1, 16)

    class Reader:
        def reset(self, keep_polarity: bool = False) -> None: ...

        def push(self, x: torch.Tensor) -> None: ...

        def read(self) -> Read:
            return Read()

    signs = [1.0, 0.0, -1.0]

    class Det:
        class code:  # noqa: N801 - as the detector's attribute
            @staticmethod
            def read_offline(x: torch.Tensor) -> Read:
                return Read()

        @staticmethod
        def code_polarity(x: torch.Tensor, read: Read, undecided: float) -> torch.Tensor:
            return torch.tensor([signs.pop(0)])

    stream = TorchCodeStream(Reader(), Det(), recheck_s=1.0)
    seen = []
    for _ in range(3):
        stream.push(np.zeros(16000, np.float32))
        seen.append(stream.read().inverted)
    assert seen == [False, False, True]  # decided, undecided (kept), decided


def test_the_code_stream_warms_up_before_the_audio_and_stays_empty() -> None:
    """The monitor's warm-up runs the code stream's polarity check once on silence (cold, it
    took 128 ms when the code was first found live), and leaves the window as it was."""
    from audioseal_live import AudioSeal
    from audioseal_live.engine.model import TorchDetector

    stream = TorchDetector(AudioSeal.load_detector()).code_stream(3.0)
    assert stream is not None
    calls: list[int] = []
    check = stream.det.code_polarity
    stream.det.code_polarity = lambda *a, **k: calls.append(1) or check(*a, **k)  # type: ignore[method-assign]
    stream.warm_up()
    assert calls == [1] and stream.read() is None and stream.inverted is None


def test_polarity_from_the_message_only_for_its_exact_complement() -> None:
    expected = (1, 0) * 8
    z = np.where(np.array(expected) > 0, 2.0, -2.0)
    assert polarity_from_message(z, expected) is z  # read as sent: left as it is
    np.testing.assert_array_equal(polarity_from_message(-z, expected), z)  # the complement
    one_off = -z.copy()
    one_off[3] *= -1  # 15 of 16 flipped: not the complement, left as read
    assert polarity_from_message(one_off, expected) is one_off
    silent = np.zeros(16)  # no sign at all (silence): not the complement of anything
    assert polarity_from_message(silent, (1,) * 16) is silent
    flipped = -z
    assert polarity_from_message(flipped, None) is flipped  # no message known: as read
    assert polarity_from_message(flipped, ()) is flipped


# ----- recorder --------------------------------------------------------------------------
def test_recorder_is_atomic(tmp_path) -> None:
    import soundfile as sf

    path = tmp_path / "rec.flac"
    rec = Recorder(path, 48000)
    rec.push(noise(0.5))
    assert not path.exists()  # only a hidden temp file while recording
    rec.close()
    data, sr = sf.read(path)
    assert sr == 48000 and data.shape[0] == 24000
    assert [p.name for p in tmp_path.iterdir()] == ["rec.flac"]
    with pytest.raises(AudioFileError):
        Recorder(tmp_path / "x.mp3", 48000)


def test_xrun_causes_reads_who_was_late(tmp_path) -> None:
    """jackd 1.9's log of four xruns (lines as it prints them): only the last is the engine's."""
    from audioseal_live.engine.jackloop import xrun_causes

    err = "JackAudioDriver::ProcessGraphAsyncMaster: Process error"
    late = "JackEngine::XRun: client = {} was not finished, state = {}"
    log = tmp_path / "jackd.log"
    log.write_text("jackdmp 1.9.21\n")
    since = log.stat().st_size
    lines = [
        "JackTimedDriver::Process XRun = 5324 usec",
        late.format("PortAudio", "Running"),
        err,  # the server's timer woke late: the host
        late.format("PortAudio", "Triggered"),
        late.format("asl-feeder", "Running"),
        err,  # the feeder (first in the graph) ran late: the host
        late.format("PortAudio", "Triggered"),
        err,  # ours not yet scheduled, nothing else late
        late.format("PortAudio", "Running"),
        err,  # ours still in its callback, everything else on time: the engine's
    ]
    with open(log, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    c = xrun_causes(log, since)
    assert (c.events, c.timer_late, c.others_late) == (4, 1, 1)
    engine = (c.engine_waiting, c.engine_running, c.engine_alone, c.engine_waiting_alone)
    assert engine == (2, 2, 1, 1)
    assert c.host == 2
    assert xrun_causes(log, log.stat().st_size).events == 0  # only what came after the mark


# ----- failure paths (session 10 review) -----------------------------------------------
def test_a_failed_start_leaves_an_earlier_recording_alone(tmp_path) -> None:
    """The first recorder opens, the second path is bad: the start fails and the file the
    user already had under the first name is untouched (no empty file renamed over it)."""
    import soundfile as sf

    take = tmp_path / "take1.wav"
    sf.write(take, noise(1.0), 48000)
    cfg = EngineConfig(monitor=None, record=str(take), record_input=str(tmp_path / "in.mp3"))
    eng = Engine(cfg, marker=FakeMarker(), backend_factory=fake_factory())
    with pytest.raises(AudioFileError, match="in.mp3"):
        eng.start(threads=False)
    assert sf.info(take).frames == 48000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take1.wav"]  # no temp file left


def test_recording_paths_that_cannot_be_written_are_clear_errors(tmp_path) -> None:
    (tmp_path / "out.wav").mkdir()
    with pytest.raises(AudioFileError, match="it is a folder"):
        Recorder(tmp_path / "out.wav", 48000)
    with pytest.raises(AudioFileError, match="folder does not exist"):
        Recorder(tmp_path / "missing" / "out.wav", 48000)
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        if os.access(ro, os.W_OK):  # root writes anywhere: make creating the file fail
            ro.chmod(0o700)
            ro = ro / "not-a-folder"
            ro.write_text("")
        with pytest.raises(AudioFileError, match="cannot write"):
            Recorder(ro / "out.wav", 48000)
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_recorder_keeps_time_when_the_disk_falls_behind(tmp_path) -> None:
    """Past its queue, the recorder drops audio but writes as much silence in its place:
    the file is as long as what was pushed, and the loss is counted."""
    import threading

    import soundfile as sf

    path = tmp_path / "rec.wav"
    rec = Recorder(path, 48000, max_queue_s=0.05)  # 2400 samples of queue
    gate = threading.Event()
    real = rec._file.write
    rec._file.write = lambda x: (gate.wait(), real(x))  # a disk that stalls
    blocks = [np.full(256, 0.5 + k / 100, np.float32) for k in range(40)]
    for b in blocks:
        rec.push(b)
    gate.set()
    rec.close()
    data, _ = sf.read(path, dtype="float32")
    assert data.shape[0] == 40 * 256 and rec.dropped > 0 and rec.frames == 40 * 256
    silent = sum(int(np.all(data[k * 256 : (k + 1) * 256] == 0)) for k in range(40))
    assert silent * 256 == rec.dropped  # every dropped block became silence, in place
    assert np.allclose(data[:256], blocks[0], atol=1e-6)


def test_worker_survives_an_error_outside_the_model() -> None:
    """An exception anywhere in a worker step (here a sink) is counted and shown, and the
    worker thread keeps running instead of leaving the output silent."""

    class BadSink:
        def push(self, x: np.ndarray) -> None:
            raise RuntimeError("sink exploded")

    factory = fake_factory()
    eng = Engine(EngineConfig(monitor=None), marker=FakeMarker(), backend_factory=factory)
    eng.start(threads=True)
    try:
        eng.worker.input_sinks.append(BadSink())
        be = factory.holder["backend"]
        for _ in range(20):
            be.feed(256)
            be.drain(256)
            time.sleep(0.005)
        assert eng.worker._thread.is_alive()
        snap = eng.snapshot()
        assert snap.callback_errors > 0 and "sink exploded" in snap.last_error
    finally:
        eng.stop()


def test_ms_per_chunk_is_the_latest_chunk_after_the_window_wraps() -> None:
    from audioseal_live.engine.metrics import TimingWindow

    t = TimingWindow(size=500)
    for _ in range(500):
        t.add(5.0, 20.0)
    t.add(50.0, 20.0)
    assert t.last_ms() == 50.0


def test_input_stream_is_closed_when_the_output_stream_fails(monkeypatch) -> None:
    import types

    from audioseal_live.engine import audio_io, native_io
    from audioseal_live.engine.audio_io import SoundDeviceBackend

    opened: list[object] = []

    class FakeStream:
        def __init__(self, **kw: object) -> None:
            self.closed, self.latency = False, 0.01
            opened.append(self)

        def close(self) -> None:
            self.closed = True

        def stop(self) -> None:
            pass

    class FailingOut(FakeStream):
        def __init__(self, **kw: object) -> None:
            raise RuntimeError("Device unavailable [PaErrorCode -9985]")

    sd = types.SimpleNamespace(
        query_devices=lambda i: {"max_input_channels": 2, "max_output_channels": 2},
        check_input_settings=lambda **k: None,
        check_output_settings=lambda **k: None,
        Stream=FakeStream,
        InputStream=FakeStream,
        OutputStream=FailingOut,
    )
    monkeypatch.setattr(audio_io, "_sd", lambda: sd)
    monkeypatch.setattr(native_io, "stream_callback", lambda io, a, b: None)
    io = CallbackIO(RingBuffer(1024), RingBuffer(1024))
    backend = SoundDeviceBackend(io, input_device=0, output_device=1, sample_rate=48000)
    with pytest.raises(DeviceError, match="cannot open audio streams"):
        backend.open()
    assert len(opened) == 1 and opened[0].closed  # type: ignore[attr-defined]


def test_detector_pairing_renames_the_file_not_its_folders() -> None:
    from audioseal_live.engine.model import _paired_detector

    assert _paired_detector("audioseal_wm_streaming") == "audioseal_detector_streaming"
    assert _paired_detector("my_generators/v1") == "my_generators/v1"  # a model folder
    assert _paired_detector("my_generators/generator.json") == "my_generators/detector.json"
    assert _paired_detector(None) is None


def test_mark_cap_keeps_the_mark_under_the_signal_and_is_chunking_independent() -> None:
    from audioseal_live.engine.mark_level import MarkLevelCap

    rng = np.random.default_rng(1)
    rate, n = 48000, 48000
    sig = np.zeros((n, 2), dtype=np.float32)
    sig[:, 0] = 0.1 * rng.standard_normal(n)  # left: a signal; right: digital silence
    sig[: n // 2, 0] += 0.3  # a DC offset masks nothing: the level ignores it
    mark = (0.003 * rng.standard_normal(n)).astype(np.float32)  # -30 dB under the left
    whole = MarkLevelCap(rate, 2).apply(sig, mark)
    assert np.all(whole[:, 1] == 0)  # a silent channel gets no mark
    steady = slice(rate // 10, n)
    np.testing.assert_allclose(whole[steady, 0], mark[steady], rtol=1e-6)  # under: untouched
    assert abs(whole[0, 0]) < 0.01 * abs(mark[0])  # a stream fades its mark in
    assert np.all(np.abs(whole[:100, 0]) <= np.abs(mark[:100]) + 1e-9)
    loud = MarkLevelCap(rate, 2).apply(sig, 30 * mark)  # +0 dB: capped to -20 dB
    ratio = np.sqrt(
        np.mean(loud[steady, 0] ** 2) / np.mean((sig[steady, 0] - sig[steady, 0].mean()) ** 2)
    )
    assert 0.05 < ratio < 0.11
    cap, parts, i = MarkLevelCap(rate, 2), [], 0
    while i < n:  # any chunking gives the same gains
        k = int(rng.integers(1, 2000))
        parts.append(cap.apply(sig[i : i + k], mark[i : i + k]))
        i += k
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-7)
    mono = MarkLevelCap(rate).apply(np.zeros(480, dtype=np.float32), mark[:480])
    assert mono.shape == (480,) and not mono.any()  # silence in, no mark out


def test_pcm_files_are_rounded_and_long_wavs_are_rf64(tmp_path: Path) -> None:
    import soundfile as sf

    from audioseal_live.engine.recorder import AtomicSoundFile

    lsb = 1 / 32768
    x = np.array([[0.7 * lsb], [-0.3 * lsb], [1.6 * lsb], [-1.6 * lsb], [2.0]], np.float32)
    for name in ("r.wav", "r.flac"):  # libsndfile's WAV writer truncated: 0.7 -> 0, -0.3 -> -1
        with AtomicSoundFile(tmp_path / name, 48000, 1, like="PCM_16", frames=5) as f:
            f.write(x)
        y, _ = sf.read(tmp_path / name, dtype="int16")
        assert y.tolist() == [1, 0, 2, -2, 32767], name
    with AtomicSoundFile(tmp_path / "big.wav", 48000, 2, frames=1 << 30) as f:  # > 4 GiB
        f.write(np.zeros((10, 2), np.float32))
    assert sf.info(tmp_path / "big.wav").format == "RF64"
    with AtomicSoundFile(tmp_path / "rec.wav", 48000, 1) as f:  # a recording: length unknown
        f.write(np.zeros((10, 1), np.float32))
    assert (tmp_path / "rec.wav").read_bytes()[:4] == b"RIFF"  # stayed small: a plain header


def test_monitor_holds_through_a_pause_but_not_a_silence() -> None:
    """The engine keeps no mark in pauses: a pause must not read as 'unmarked', but a chain
    gone mute for longer than QUIET_HOLD_S must not read as marked forever either."""
    from audioseal_live.engine.monitor import QUIET_HOLD_S, DetectorMonitor

    mon = DetectorMonitor(FakeDetector(MSG), 48000, message=lambda: MSG)
    mon.reset()

    def feed(value: float, seconds: float) -> None:
        for _ in range(int(seconds * 10)):
            mon.ring.write(np.full(4800, value, np.float32))
            mon.step()

    feed(0.2, 3)  # marked speech (the fake detects samples above its level)
    assert mon.detection.prob_smoothed > 0.8
    feed(0.0, 2)  # a pause
    d = mon.detection
    assert d.quiet and d.prob_smoothed > 0.7, d
    feed(0.0, QUIET_HOLD_S + 1.5)  # silence: the chain may be gone
    assert mon.detection.prob_smoothed < 0.5
    feed(0.2, 1.5)
    assert not mon.detection.quiet and mon.detection.prob_smoothed > 0.8


def test_a_detector_without_a_message_reads_no_phase_warning() -> None:
    import warnings

    from audioseal_live.engine.model import best_phase, decode_bits

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" for 0 bits
        assert best_phase(np.zeros((2, 0))) == 0
        assert decode_bits(np.zeros(0)) == ((), ())
