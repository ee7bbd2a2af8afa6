"""End to end through real PortAudio: a JACK dummy server, the engine on its "system" device,
a JACK client feeding real speech into the engine's input port and recording its output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_quality import bits_shortfall, quality_shortfall, shift_shortfall

from audioseal_live.engine.demo import speech
from audioseal_live.engine.jackloop import LoopResult, run_jack_loop, si_snr
from audioseal_live.engine.model import TorchDetector, TorchMarker
from audioseal_live.engine.resample import SoxrResampler
from audioseal_live.models.loader import default_model_dir

MSG = (1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0)
SECONDS = 22.0
pytestmark = pytest.mark.slow


def aligned(res: LoopResult) -> tuple[np.ndarray, np.ndarray]:
    """Input and output over the same samples, skipping the first second."""
    lag, skip = res.lag, res.rate
    n = res.fed.shape[0] - lag
    return res.fed[skip : n - res.rate // 10], res.recorded[lag + skip : lag + n - res.rate // 10]


def windowed_si_snr(
    x: np.ndarray,
    y: np.ndarray,
    rate: int,
    slips: int = 0,
    max_lag_ms: float = 250.0,
    win_s: float = 0.25,
) -> float:
    """The typical SI-SNR(y vs x) of the 0.25 s windows that no slip cut, each window at its
    own best lag: the median if there were no slips.

    A JACK xrun drops a period (5.3 ms here) on one side and shifts the rest of the recording
    against the feed; one global lag would then call the whole output distorted. The lag of
    each window is the peak of its cross-correlation (FFT) within ±max_lag, wide enough for
    the 40 xruns the check allows (213 ms). Short windows, because one with a slip inside
    scores low: with 1 s windows, ±12 ms, 20 slips in 22 s of speech + a -40 dB mark already
    read 3 dB (a real run once read -4.3); 0.25 s windows read 38 dB there, 26 dB at 40 slips.
    Silent windows (pauses in the speech) are skipped. With ``slips`` (JACK xruns) at random
    times, a fraction p = exp(-slips * win / length) of the windows is expected to hold none;
    their median is the (1 - p/2) quantile of all windows, the cut ones scoring lower (a CI
    run with 8.5 s of 22 stolen by the hypervisor had ~230 xruns: most windows held one and
    the plain median read 16 dB).
    """
    lag = int(rate * max_lag_ms / 1000)
    win = int(rate * win_s)
    floor = 1e-3 * float(np.mean(x * x)) * win
    values = []
    for start in range(lag, len(x) - win - lag, win):
        ref = x[start : start + win]
        if float(ref @ ref) < floor:
            continue
        seg = y[start - lag : start + win + lag]
        n = 1 << int(np.ceil(np.log2(seg.shape[0] + win)))
        xc = np.fft.irfft(np.fft.rfft(seg, n) * np.conj(np.fft.rfft(ref, n)), n)[: 2 * lag + 1]
        best = int(np.argmax(xc)) - lag
        values.append(si_snr(y[start + best : start + best + win], ref))
    clean = float(np.exp(-slips * win / max(1, len(x))))
    return float(np.quantile(values, 1.0 - clean / 2))


@pytest.mark.parametrize("slips", [0, 40, 230])
def test_windowed_si_snr_sees_through_slips_but_not_distortion(slips: int) -> None:
    rate = 48000
    x = speech(22.0, rate)
    rng = np.random.default_rng(slips)
    marked = x + 0.01 * float(np.std(x)) * rng.standard_normal(x.shape[0])  # 40 dB below
    loud = x + 0.3 * float(np.std(x)) * rng.standard_normal(x.shape[0])  # 10 dB below

    def slipped(y: np.ndarray) -> np.ndarray:
        # Each xrun skips a 256-frame period one way, and the engine's drift correction brings
        # the loop back: here every other slip drops a period, the next inserts one of zeros.
        cuts = np.sort(rng.choice(np.arange(rate, y.shape[0] - rate), slips, replace=False))
        parts, start = [], 0
        for i, c in enumerate(cuts):
            parts.append(y[start:c])
            if i % 2:
                parts.append(np.zeros(256, dtype=y.dtype))
                start = c
            else:
                start = c + 256
        parts.append(y[start:])
        return np.concatenate(parts)[: y.shape[0]]

    assert windowed_si_snr(x, slipped(marked), rate, slips=slips) >= 30.0
    assert windowed_si_snr(x, slipped(loud), rate, slips=slips) < 15.0  # the check asks 20


def check_audio_path(res: LoopResult, server: object, min_si_snr: float | None = 20.0) -> list[str]:
    """Assert the engine's duties; min_si_snr=None leaves the watermark level to the caller.

    Returns the shortfalls left to report (the caller marks the test an expected failure with
    them): JACK xruns the host caused, and output-ring underruns, which follow them.
    """
    snap, causes = res.snapshot, res.xrun_causes
    # PortAudio's xrun flags are JACK's and reach every client, whoever was late; on the shared
    # 2-core VMs they come and go with the host (0-16 per 22 s run in sessions 2-3, 24-224 in
    # session 4, 434 in one CI run; 1 and 181 in two back-to-back runs of a do-nothing
    # passthrough client in session 7). jackd's log says who was late at each xrun: the engine
    # answers for the xruns where its callback was still running and nothing else was late. A
    # slow or blocked callback misses nearly every one of the ~4,100 periods; the bound is
    # 40 per run, or 3x the xruns the host shows at the same time (timer late, feeder late).
    assert causes.engine_alone <= max(40, 3 * causes.host), causes.summary()
    assert snap.underruns <= 40, snap  # our output ring: in our hands
    known = []
    if snap.xruns:
        known.append(f"{snap.xruns} JACK xruns in {SECONDS:.0f} s ({causes.summary()})")
    if snap.underruns:
        known.append(f"{snap.underruns} output-ring underruns in {SECONDS:.0f} s")
    assert snap.callback_errors == 0, snap.last_error
    # The worker kept up with what JACK delivered to the engine (20 ms chunks): its input
    # callback's frames, not the wall clock nor what the feeder played -- with the host
    # stealing the CPU, JACK skips the cycles of a client that was not scheduled in time
    # (CI rehearsal, session 11: 1,038 chunks of 22 s fed, 15 s stolen, 354 cycles where the
    # engine was not yet scheduled; the engine alone answers for such cycles, asserted above).
    got_s = snap.input_frames / res.rate
    fed_s = len(res.fed) / res.rate
    assert snap.chunks >= got_s * 50 * 0.95, (
        f"{snap.chunks} chunks from {got_s:.2f} s of input ({fed_s:.2f} s fed); "
        f"input ring overflows "
        f"{snap.input_ring_overflows}, unmarked {snap.unmarked_s:.2f} s; " + causes.summary()
    )
    x, y = aligned(res)
    assert np.all(np.isfinite(res.recorded)), "NaN/inf in the output"
    assert np.max(np.abs(res.recorded)) <= 1.0, "output above full scale"
    if min_si_snr is not None:
        value = windowed_si_snr(x, y, res.rate, slips=snap.xruns)
        assert value >= min_si_snr, f"output is not input + small wm: {value:.1f} dB"
    lag_ms = 1000 * res.lag / res.rate
    # A JACK xrun drops a cycle for every client; the loop can stay a period longer until the
    # drift corrector pulls it back (CI rehearsal, session 6: 67.6 ms against a 62.0 ms budget
    # on a loaded run). With xruns the check allows that one period.
    slack = 1000 * server.period / res.rate if snap.xruns else 0.0  # type: ignore[attr-defined]
    assert 0 < lag_ms <= snap.latency_budget_ms + slack, (
        f"loop lag {lag_ms:.1f} ms > budget {snap.latency_budget_ms:.1f} + {slack:.1f} ms; "
        f"out-ring target {snap.out_ring_target}, underruns {snap.underruns} "
        f"({snap.underrun_samples} samples), drift edits {snap.drift_corrections}; "
        + causes.summary()
    )
    return known


def offline_probability(det: torch.nn.Module, x48k: np.ndarray, voiced: bool = False) -> np.ndarray:
    """P(marked) per 1 s window over a whole recording, as ``det(x)`` gives it (with a
    message code, the code's evidence counts too). ``voiced``: averaged over the window's
    20 ms frames that hold sound only (the engine keeps the mark 20 dB under the signal, so a
    pause carries none); windows without any are left out."""
    x16 = SoxrResampler(48000, 16000).process(x48k)
    x16 = x16[: x16.shape[0] // 16000 * 16000]
    with torch.inference_mode():
        probs, _ = det(torch.from_numpy(x16).view(-1, 1, 16000))
    p = probs[:, 1].numpy()
    if not voiced:
        return p.mean(axis=-1)
    frames = x16.reshape(p.shape[0], -1, 320)
    heard = np.sqrt((frames**2).mean(axis=-1)) > 10 ** (-55 / 20)  # (windows, 50)
    per_frame = p.reshape(frames.shape).mean(axis=-1)
    keep = heard.any(axis=1)
    return (per_frame * heard).sum(axis=1)[keep] / heard.sum(axis=1)[keep]


@pytest.fixture(params=["native", "python"])
def callback(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The audio callback the streams open with: the C one (engine/_rtio.c), or the Python one
    the engine falls back to."""
    from audioseal_live.engine.native_io import native_module

    if request.param == "python":
        monkeypatch.setenv("AUDIOSEAL_LIVE_PY_CALLBACK", "1")
    elif native_module() is None:
        pytest.skip("the C callback module is not built here")
    return request.param


def test_random_model_audio_path(jack_server: object, callback: str) -> None:
    """What needs no trained model: the audio path itself, with a random small generator;
    through the C callback (engine/_rtio.c) and through the Python one it falls back to."""
    from audioseal_live.models import AudioSealWM, small_card

    torch.manual_seed(0)
    marker = TorchMarker(AudioSealWM(small_card("generator")))
    # Random weights make a loud "watermark"; scale it to a trained model's level.
    probe = speech(1.0, 16000)
    with torch.inference_mode():
        wm = marker.gen.get_watermark(torch.from_numpy(probe).view(1, 1, -1))
    alpha = 0.03 * float(np.std(probe)) / max(1e-6, float(wm.std()))
    res = run_jack_loop(
        jack_server, SECONDS, marker=marker, message=MSG, alpha=alpha, monitor=None, chunk_ms=20
    )
    known = check_audio_path(res, jack_server)
    assert res.snapshot.native_callback == (callback == "native")
    x, y = aligned(res)
    assert np.max(np.abs(y - x)) > 1e-4, "no watermark was added"
    if known:
        pytest.xfail("; ".join(known))


@pytest.mark.skipif(
    not (default_model_dir() / "generator.json").is_file(),
    reason="the trained default model is not in assets/model yet (training in progress)",
)
def test_default_model_marks_and_detects(jack_server: object) -> None:
    from audioseal_live import AudioSeal

    gen, det = AudioSeal.load_generator(), AudioSeal.load_detector()
    res = run_jack_loop(
        jack_server,
        SECONDS,
        marker=TorchMarker(gen),
        detector=TorchDetector(det),
        message=MSG,
        monitor="output",
        chunk_ms=20,
    )
    known = check_audio_path(res, jack_server, min_si_snr=None)
    d = res.live_detection  # while speech was fed, not the silence after it
    assert d is not None and d.chunks > 0
    x, y = aligned(res)
    assert offline_probability(det, x).mean() < 0.5  # the unmarked input is not detected
    # What the model itself must deliver live: the mark found at whatever alignment the
    # chain gives, the right bits, a watermark 20 dB below the voice.
    marked = offline_probability(det, y, voiced=True)
    level = windowed_si_snr(x, y, res.rate, slips=res.snapshot.xruns)
    # The live monitor reads the digital output: host xruns cannot excuse it, so these hold
    # whatever the xrun count (unless the model itself is known to fall short).
    if not shift_shortfall():
        assert min(d.history) >= 0.9, d.history  # live monitor, last 10 s
    if not bits_shortfall(MSG):
        assert d.match and d.bits == MSG, d
    # What went through JACK (the recording) may carry the host's xruns.
    checks = (
        (shift_shortfall(), min(d.history) >= 0.9 and marked.min() >= 0.9),
        (bits_shortfall(MSG), d.match and d.bits == MSG),
        (quality_shortfall(20.0), level >= 20.0),
    )
    shortfalls = known + [why for why, ok in checks if why and not ok]
    if shortfalls:
        pytest.xfail(
            f"{'; '.join(shortfalls)}; live: P {min(d.history):.2f}-{max(d.history):.2f}, "
            f"offline on the recording {marked.min():.2f}, bits {d.bits}, SI-SNR {level:.1f} dB"
        )
    assert min(d.history) >= 0.9, d.history  # live monitor, last 10 s
    assert marked.min() >= 0.9, marked  # every 1 s window with sound, after the first second
    assert d.match and d.bits == MSG, d
    assert level >= 20.0, "output is not input + small watermark"
    assert not known


def test_capture_monitor_stream_receives_audio(jack_server: object, callback: str) -> None:
    """The monitor's capture input (a loopback or room mic) runs the same callbacks as the
    main streams: frames arrive in the ring the monitor reads, counted."""
    import time

    from audioseal_live.engine.audio_io import CaptureStream, resolve_device

    cap = CaptureStream(resolve_device("system", "input"), 48000, 1 << 18)
    try:
        cap.start()
        deadline = time.monotonic() + 5.0  # 0.3 s of audio; a loaded host may start late
        while cap.stats.frames_in < 48000 * 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        cap.close()
    assert cap.stats.callbacks_in > 10 and cap.stats.frames_in >= 48000 * 0.3
    assert cap.ring.fill == cap.stats.frames_in  # nothing read yet, nothing dropped
    assert cap.stats.native_callback == (callback == "native")


def test_a_rate_the_device_does_not_run_at_is_said_in_words(jack_server: object) -> None:
    """JACK runs at 48 kHz; 44.1 kHz asked: PortAudio's 'Invalid sample rate
    [PaErrorCode -9997]' reached the user as it was (review)."""
    from audioseal_live.engine.audio_io import CallbackIO, SoundDeviceBackend, resolve_device
    from audioseal_live.engine.ring import RingBuffer
    from audioseal_live.errors import DeviceError

    io = CallbackIO(RingBuffer(4096), RingBuffer(4096))
    devices = resolve_device("system", "input"), resolve_device("system", "output")
    with pytest.raises(DeviceError, match=r"does not run at 44100 Hz \(it runs at 48000 Hz\)"):
        SoundDeviceBackend(io, *devices, 44100)
    SoundDeviceBackend(io, *devices, 48000)  # its own rate: accepted


def test_demo_stats_json_says_how_the_session_went(jack_server: object, tmp_path: Path) -> None:
    """--stats-json held the figures only: not whether the recording was saved, why the
    session ended, or on which devices (review)."""
    import json

    import soundfile as sf

    from audioseal_live.cli import main

    rec, stats = tmp_path / "r.wav", tmp_path / "s.json"
    argv = ["demo", "--duration", "2", "--record", str(rec), "--stats-json", str(stats)]
    assert main(argv) == 0
    report = json.loads(stats.read_text())
    session = report["session"]
    assert session["stopped_by"] == "--duration" and session["input"] == "built-in speech"
    assert session["output"] and session["sample_rate"] == 48000
    [recording] = session["recordings"]
    assert recording["path"] == str(rec) and recording["what"] == "output"
    assert recording["saved"] and recording["error"] == "" and recording["silence_s"] == 0
    assert abs(recording["seconds"] - sf.info(rec).duration) < 1e-6 and recording["seconds"] > 1
    assert report["time_s"] > 1  # the figures are still there
