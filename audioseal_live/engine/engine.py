"""The ``Engine`` facade: what the CLI and the window use. Configure, start, read, stop.

eng = Engine(EngineConfig(input="USB Mic", output="CABLE Input", message=0x1A2B))
eng.start()
snap = eng.snapshot()          # never blocks the audio path
eng.set_alpha(0.8)             # read by the worker once per chunk
eng.stop()
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from audioseal_live.engine.audio_io import (
    CallbackIO,
    CaptureStream,
    IOStats,
    SoundDeviceBackend,
    list_devices,
    resolve_device,
)
from audioseal_live.engine.metrics import NO_DETECTION, Detection, Snapshot
from audioseal_live.engine.model import FrameDetector, Marker
from audioseal_live.engine.monitor import DetectorMonitor
from audioseal_live.engine.native_io import make_callback_io
from audioseal_live.engine.recorder import Recorder
from audioseal_live.engine.worker import (
    Controls,
    OverloadPolicy,
    Worker,
    check_alpha,
    chunk_samples_16k,
)
from audioseal_live.errors import DeviceError, MessageError
from audioseal_live.message_bits import NBITS, bits_of

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005
STALL_S = 3.0  # no input processed for this long while running: the device is gone


@dataclass
class EngineConfig:
    input: str | int | None = None  # device name (substring) or index; None = default
    output: str | int | None = None
    monitor: str | int | None = "output"  # "output" (digital), a capture device, or None
    sample_rate: int | None = None  # None = the output device's default rate
    block_size: int = 0  # PortAudio block; 0 = let the host API choose
    latency: str | float = "low"
    chunk_ms: float = 20.0  # 20-200, multiple of 20 (the model hop)
    device: str = "cpu"  # torch device: cpu | cuda
    # torch intra-op threads. 1 by default: a 20 ms chunk is too small for intra-op
    # parallelism to pay; on a loaded 2-core box 2 threads measured 139 ms/chunk vs 7.8 ms.
    threads: int = 1
    model: str | None = None  # generator card name or path; None = shipped default
    detector: str | None = None
    message: Sequence[int] | None = None  # 16 bits; None = random, kept for the session
    alpha: float = 1.0
    input_channel: int | None = None  # None = mix all input channels
    overload: OverloadPolicy = "pass"  # when the worker falls behind: pass original or mute
    safety_ms: float = 5.0  # output-ring margin on top of one chunk + one block
    record: str | None = None  # marked output to WAV/FLAC
    record_input: str | None = None


def random_message(nbits: int = NBITS) -> tuple[int, ...]:
    return bits_of(secrets.randbits(nbits), nbits)


def check_message(bits: Sequence[int], nbits: int = NBITS) -> tuple[int, ...]:
    out = tuple(int(b) for b in bits)
    if len(out) != nbits or any(b not in (0, 1) for b in out):
        raise MessageError(f"message must be {nbits} bits of 0/1, got {list(bits)}")
    return out


def message_for(nbits: int, given: Sequence[int] | None) -> tuple[int, ...]:
    """The message a model of ``nbits`` carries: ``given`` (checked), or a random one. A
    message of another length says so (the window and ``--message`` take 16 bits)."""
    if given is None:
        return random_message(nbits)
    if len(given) != nbits:
        raise MessageError(
            f"the model carries {nbits}-bit messages, and the message given has "
            f"{len(given)} bits: leave it out for a random one"
        )
    return check_message(given, nbits)


class Backend:
    """What the engine needs from an audio backend (SoundDeviceBackend or a test fake)."""

    sample_rate: int
    stats: IOStats

    def open(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def block_estimate(self) -> int: ...


BackendFactory = Callable[[CallbackIO, "EngineConfig"], Any]


def sounddevice_backend(io: CallbackIO, cfg: EngineConfig) -> SoundDeviceBackend:
    in_dev = resolve_device(cfg.input, "input")
    out_dev = resolve_device(cfg.output, "output")
    rate = cfg.sample_rate or int(list_devices()[out_dev].default_samplerate)
    return SoundDeviceBackend(io, in_dev, out_dev, rate, cfg.block_size, cfg.latency)


class Engine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        marker: Marker | None = None,
        detector: FrameDetector | None = None,
        backend_factory: BackendFactory | None = None,
    ) -> None:
        self.config = cfg = config or EngineConfig()
        chunk_samples_16k(cfg.chunk_ms)  # validate early
        self._marker = marker
        self._detector = detector
        self._backend_factory = backend_factory or sounddevice_backend
        msg = check_message(cfg.message) if cfg.message is not None else random_message()
        self._controls = Controls(message=msg, alpha=check_alpha(cfg.alpha), overload=cfg.overload)
        self.worker: Worker | None = None
        self.monitor: DetectorMonitor | None = None
        self.backend: Any = None
        self._capture: CaptureStream | None = None
        self._recorders: list[Recorder] = []
        self._record_errors: list[str] = []  # recordings that could not be saved, at stop
        self.recordings: list[dict[str, object]] = []  # the last session's, once stopped
        self._final: Snapshot | None = None
        self._gc_frozen = False
        self._watch = (-1.0, time.monotonic())  # (stream time, when it last moved)
        self._threads_started = False

    # ----- live controls (read by the worker once per chunk) ---------------------------
    @property
    def message(self) -> tuple[int, ...]:
        return self._controls.message

    def _set(self, **changes: Any) -> None:
        self._controls = dataclasses.replace(self._controls, **changes)
        if self.worker is not None:
            self.worker.controls = self._controls

    def set_message(self, bits: Sequence[int]) -> None:
        nbits = int(getattr(self._marker, "nbits", NBITS))
        self._set(message=check_message(bits, nbits))

    def set_alpha(self, alpha: float) -> None:
        self._set(alpha=check_alpha(alpha))

    def set_bypass(self, bypass: bool) -> None:
        self._set(bypass=bool(bypass))

    def set_overload_policy(self, policy: OverloadPolicy) -> None:
        self._set(overload=policy)

    # ----- lifecycle ---------------------------------------------------------------------
    def _load_models(self) -> None:
        cfg = self.config
        need_det = cfg.monitor not in (None, "off", "none") and self._detector is None
        if self._marker is None or need_det:
            import torch

            torch.set_num_threads(max(1, cfg.threads))  # before any torch work
            from audioseal_live.engine.model import load_models

            marker, det = load_models(cfg.model, cfg.device, cfg.detector, need_detector=need_det)
            self._marker = self._marker or marker
            self._detector = self._detector or det
        elif "torch" in sys.modules:
            import torch

            torch.set_num_threads(max(1, cfg.threads))
        nbits = int(getattr(self._marker, "nbits", NBITS))
        if len(self._controls.message) != nbits:  # a model of other than 16 bits
            given = self._controls.message if cfg.message is not None else None
            self._set(message=message_for(nbits, given))

    def start(self, threads: bool = True) -> None:
        """Load + warm up the model, prefill, open streams, start the worker (and monitor).

        ``threads=False`` (tests) skips the worker/monitor threads: call ``pump()`` instead.
        An engine that was stopped starts again as a new session (new streams, counters and
        recordings; the loaded models are kept).
        """
        if self.worker is not None and self._final is None:
            raise DeviceError("the engine is already running: stop() it before starting again")
        self._final = None
        self._record_errors = []
        self.recordings = []
        self._watch = (-1.0, time.monotonic())
        self.worker = self.monitor = self._capture = self.backend = None
        cfg = self.config
        # Python callbacks need the GIL within a fraction of a block; the default 5 ms switch
        # interval is a whole JACK period at 256 frames, which showed up as xruns.
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._load_models()
        assert self._marker is not None
        io, in_ring, out_ring = make_callback_io(1 << 16, cfg.input_channel, started=False)
        self.backend = backend = self._backend_factory(io, cfg)
        rate = int(backend.sample_rate)
        backend.open()  # opened (latency known) but not started
        try:
            block = int(backend.block_estimate())
            w = Worker(
                self._marker,
                in_ring,
                out_ring,
                rate,
                self._controls,
                cfg.chunk_ms,
                block_size=block,
                io=backend.stats,
                threads=cfg.threads,
                device=cfg.device,
            )
            compute_s = w.warm_up()
            # Margin: the configured safety, or twice the measured p90 compute, whichever is
            # larger, so a slow machine gets a bit more latency rather than unmarked spans.
            # (capped at one chunk: slower than that is overload, handled by pass-through).
            safety = min(max(cfg.safety_ms / 1000, 2 * compute_s), w.chunk_ms / 1000)
            target = w.default_target(safety)
            if not getattr(backend, "duplex", True):
                # Two clocks: the fill wanders within the drift dead band; keep margin for it.
                target += w.drift.dead_band
            w.set_out_target(target)
            self.worker = w
            if cfg.monitor not in (None, "off", "none") and self._detector is not None:
                src = "output" if cfg.monitor == "output" else str(cfg.monitor)
                mon = DetectorMonitor(
                    self._detector, rate, lambda: self._controls.message, source=src
                )
                mon.warm_up()
                if src == "output":
                    w.monitor_ring = mon.ring
                else:
                    try:
                        dev = resolve_device(cfg.monitor, "input")
                    except DeviceError as exc:  # say which device setting it was
                        raise DeviceError(f"detector's capture device (monitor): {exc}") from None
                    # 4 s of slack before dropping, a power of two for the C callback
                    slack = 1 << (4 * rate - 1).bit_length()
                    self._capture = CaptureStream(dev, rate, slack)
                    mon.ring = self._capture.ring
                self.monitor = mon
                w.detection_source = lambda: mon.detection
            if cfg.record:
                self._recorders.append(Recorder(cfg.record, rate, what="output"))
                w.sinks.append(self._recorders[-1])
            if cfg.record_input:
                self._recorders.append(Recorder(cfg.record_input, rate, what="input"))
                w.input_sinks.append(self._recorders[-1])
            w.prefill()
            if threads:
                w.start()
                if self.monitor is not None:
                    self.monitor.start()
                self._threads_started = True
            elif self.monitor is not None:
                self.monitor.reset()
            # A full (gen 2) garbage collection walks every live object with the GIL held: in
            # a big process (the window, a test run) that took 130 ms, far past a 5 ms audio
            # period (xruns). Collect once now, then park the survivors where later
            # collections do not walk them; the audio path allocates few long-lived objects.
            gc.collect()
            gc.freeze()
            self._gc_frozen = True
            io.started = True
            backend.start()
            if self._capture is not None:
                self._capture.start()
        except BaseException:
            self._teardown(failed=True)
            self.worker = self.monitor = self._capture = None  # nothing runs: not started
            raise
        log.info(
            "engine running: %d Hz, chunk %.0f ms, block %d, target %d samples, budget %.1f ms, "
            "%s audio callback",
            rate,
            w.chunk_ms,
            block,
            w.out_target,
            1000 * w.latency_budget_s(),
            "C" if getattr(backend.stats, "native_callback", False) else "Python",
        )

    def pump(self) -> None:
        """Single-threaded step for tests: worker then monitor."""
        if self.worker is not None:
            while self.worker.step():
                pass
        if self.monitor is not None:
            self.monitor.step()

    def snapshot(self) -> Snapshot:
        if self._final is not None:
            return self._final
        if self.worker is None:
            return Snapshot()
        return self.worker.snapshot

    def device_problem(self, now: float | None = None) -> str:
        """Why the running session lost its audio ('' if fine): the streams stopped (a device
        unplugged or taken, a server gone), or no input arrived for ``STALL_S``. Polled by
        apps a few times a second (the window, ``run``)."""
        backend = self.backend
        if self.worker is None or self._final is not None or backend is None:
            return ""
        now = time.monotonic() if now is None else now
        if hasattr(backend, "active") and not backend.active:
            return "the audio device stopped (unplugged, or taken by another program)"
        t = self.worker.snapshot.time_s
        if t != self._watch[0]:
            self._watch = (t, now)
        elif now - self._watch[1] > STALL_S:
            return f"no audio arrived from the input for {STALL_S:.0f} s (device or server lost?)"
        return ""

    def detection(self) -> Detection:
        return self.monitor.detection if self.monitor is not None else NO_DETECTION

    def _teardown(self, failed: bool = False) -> None:
        """Stop everything that started; ``failed``: a start that did not finish, whose
        recordings are dropped (a half-opened session must not replace an earlier file)."""
        if self._gc_frozen:
            gc.unfreeze()
            self._gc_frozen = False
        if self.backend is not None:
            self.backend.stop()
            self.backend.close()
        if self._capture is not None:
            self._capture.close()
        if self.worker is not None:
            self.worker.stop()
        if self.monitor is not None:
            self.monitor.stop()
        for r in self._recorders:
            if failed:
                r.abort()
            else:
                r.close()  # never raises: a failure is in r.error and the log
                if r.error:
                    self._record_errors.append(r.error)
            self.recordings.append(r.summary(saved=not failed and not r.error))
        self._recorders = []
        if self._marker is not None:
            self._marker.close()

    def stop(self) -> Snapshot:
        """Stop streams, threads and recorders; returns the final snapshot."""
        if self._final is not None:
            return self._final
        if self.worker is None:
            raise DeviceError("engine was not started")
        self._teardown()
        self._final = self.worker.final_snapshot()
        return self._final

    @property
    def record_errors(self) -> list[str]:
        """Recordings that could not be saved (known once :meth:`stop` has returned)."""
        return list(self._record_errors)

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
