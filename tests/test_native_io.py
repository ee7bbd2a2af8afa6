"""The C audio callback (engine/_rtio.c), called here exactly as PortAudio calls it, on the
rings and counters the engine's Python side shares with it."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from audioseal_live.engine import native_io
from audioseal_live.engine.audio_io import CallbackIO
from audioseal_live.engine.native_io import NativeCallbackIO, make_callback_io, native_module

RT = native_module()
needs_native = pytest.mark.skipif(RT is None, reason="the C callback module is not built here")

PA_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
)
INPUT_OVERFLOW, OUTPUT_UNDERFLOW = 0x2, 0x4


def test_the_module_is_built_where_ci_requires_it() -> None:
    """CI sets AUDIOSEAL_LIVE_REQUIRE_NATIVE=1: its install must have compiled the callback
    (the extension is optional for users, so a failed build would pass silently)."""
    if os.environ.get("AUDIOSEAL_LIVE_REQUIRE_NATIVE") != "1":
        pytest.skip("only where AUDIOSEAL_LIVE_REQUIRE_NATIVE=1 (CI)")
    assert RT is not None, "audioseal_live.engine._rtio did not build or import"


def call(io: NativeCallbackIO, inp: np.ndarray | None, out: np.ndarray | None, flags: int = 0):
    """One PortAudio callback on interleaved float32 buffers (frames, channels)."""
    frames = (inp if inp is not None else out).shape[0]  # type: ignore[union-attr]
    fn = PA_CALLBACK(io.callback)
    ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    return fn(ptr(inp), ptr(out), frames, None, flags, io.userdata)


@needs_native
def test_input_mixes_or_selects_a_channel_into_the_ring() -> None:
    io = NativeCallbackIO(RT, 1024)
    io.set_channels(2, 1)
    x = np.random.default_rng(0).standard_normal((256, 2)).astype(np.float32)
    assert call(io, x, None, INPUT_OVERFLOW) == 0  # paContinue
    np.testing.assert_allclose(io.in_ring.read(1000), x.mean(axis=1), rtol=1e-6)
    st = io.stats
    assert (st.callbacks_in, st.frames_in, st.input_overflows) == (1, 256, 1)

    sel = NativeCallbackIO(RT, 1024, input_channel=1)
    sel.set_channels(2, 1)
    call(sel, x, None)
    np.testing.assert_array_equal(sel.in_ring.read(1000), x[:, 1])


@needs_native
def test_a_full_input_ring_drops_the_excess_and_counts_it() -> None:
    io = NativeCallbackIO(RT, 512)
    x = np.arange(300, dtype=np.float32).reshape(-1, 1)
    call(io, x, None)
    call(io, x, None)  # 212 of these fit
    assert io.in_ring.fill == 512
    assert io.in_ring.overflow_events == 1 and io.in_ring.overflow_samples == 88
    got = io.in_ring.read(512)
    np.testing.assert_array_equal(got, np.concatenate([x[:, 0], x[:212, 0]]))
    call(io, x, None)  # the ring wraps: indices keep growing, samples stay in order
    np.testing.assert_array_equal(io.in_ring.read(512), x[:, 0])


@needs_native
def test_output_plays_the_ring_to_every_channel_and_counts_underruns() -> None:
    io = NativeCallbackIO(RT, 1024, started=False)
    io.set_channels(1, 2)
    out = np.full((256, 2), 7.0, dtype=np.float32)
    call(io, None, out)  # before start: silence, not an underrun
    assert np.all(out == 0) and io.stats.underruns == 0
    io.started = True
    y = np.linspace(-1, 1, 100, dtype=np.float32)
    io.out_ring.write(y)
    call(io, None, out, OUTPUT_UNDERFLOW)
    np.testing.assert_array_equal(out[:100], np.stack([y, y], axis=1))
    assert np.all(out[100:] == 0)
    st = io.stats
    assert (st.underruns, st.underrun_samples, st.output_underflows) == (1, 156, 1)
    assert (st.callbacks_out, st.frames_out, st.max_block) == (2, 512, 256)
    assert io.out_ring.fill == 0 and io.out_ring.total_read == 100


@needs_native
def test_duplex_balance_is_captured_minus_played() -> None:
    io = NativeCallbackIO(RT, 4096)
    io.set_channels(1, 1)
    io.out_ring.write(np.zeros(300, dtype=np.float32))  # the worker's prefill
    x = np.ones((256, 1), dtype=np.float32)
    out = np.zeros((256, 1), dtype=np.float32)
    for _ in range(3):
        call(io, x, out)
    assert io.stats.io_balance == 3 * 256 - 300  # 300 played from the prefill, then dry
    assert io.stats.underruns == 2


@needs_native
def test_python_callback_bodies_work_on_the_shared_state() -> None:
    """The demo source and the test fakes drive CallbackIO's Python bodies: same rings."""
    io = NativeCallbackIO(RT, 1024)
    x = np.arange(64, dtype=np.float32).reshape(-1, 1)
    io.on_input(x, 64, True)
    out = np.zeros((64, 1), dtype=np.float32)
    io.out_ring.write(io.in_ring.read(64))
    io.on_output(out, 64, False)
    np.testing.assert_array_equal(out, x)
    assert io.stats.input_overflows == 1 and io.stats.callbacks_out == 1
    assert io.stats.io_balance == 0


def test_switch_off_gives_the_python_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSEAL_LIVE_PY_CALLBACK", "1")
    assert native_io.native_module() is None
    io, a, b = make_callback_io(1 << 10)
    assert type(io) is CallbackIO and a is io.in_ring and b is io.out_ring
    assert native_io.stream_callback(io, 2, 2) is None
    assert io.stats.native_callback is False


def test_a_callback_that_did_not_build_is_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Installed without a compiler (the Quickstart lacked gcc and python3-dev), the engine
    ran the Python callback with one INFO line to show for it."""
    import sys

    monkeypatch.delenv("AUDIOSEAL_LIVE_PY_CALLBACK", raising=False)
    import audioseal_live.engine as engine_package

    monkeypatch.setitem(sys.modules, "audioseal_live.engine._rtio", None)  # ImportError
    monkeypatch.delattr(engine_package, "_rtio", raising=False)
    monkeypatch.setattr(native_io, "_said_missing", False)
    with caplog.at_level("WARNING", logger="audioseal_live.engine.native_io"):
        assert native_module() is None and native_module() is None
    said = [r.getMessage() for r in caplog.records if "not built" in r.getMessage()]
    assert len(said) == 1 and "gcc python3-dev" in said[0]
