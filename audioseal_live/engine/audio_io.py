"""Audio I/O with sounddevice (PortAudio): devices, streams, and real-time-safe callbacks.

Callbacks only copy between PortAudio's buffers and preallocated rings and bump counters: no
allocation beyond numpy views, no locks, no logging, no torch, no file I/O. Every callback body
is guarded: an exception would silently stop a PortAudio stream, so it is counted, remembered
and the output is filled with zeros instead.

Channel policy: the model is mono. Input: the mean of all channels (or one chosen channel).
Output: the marked mono signal on every output channel.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from audioseal_live.engine.ring import RingBuffer
from audioseal_live.errors import DeviceError

log = logging.getLogger(__name__)

MAX_BLOCK = 1 << 16  # largest callback block we preallocate for


class IOStats:
    """Counters written by the callbacks (plain int stores, read by the worker)."""

    def __init__(self) -> None:
        self.input_overflows = 0
        self.output_underflows = 0
        self.underruns = 0  # output callbacks that found the ring short
        self.underrun_samples = 0
        self.callbacks_in = 0
        self.callbacks_out = 0
        self.frames_in = 0
        self.frames_out = 0
        self.max_block = 0
        self.callback_errors = 0
        self.last_error = ""
        self.io_balance = 0  # total captured - total played, at the last output callback
        self.native_callback = False  # set by the backend: the C callback runs the streams
        self.input_latency = 0.0  # seconds, as PortAudio reports
        self.output_latency = 0.0


class CallbackIO:
    """The callback bodies, free of sounddevice so fakes can drive them."""

    def __init__(
        self,
        in_ring: RingBuffer,
        out_ring: RingBuffer,
        input_channel: int | None = None,
        stats: IOStats | None = None,
        started: bool = True,
    ) -> None:
        self.in_ring = in_ring
        self.out_ring = out_ring
        self.input_channel = input_channel
        self.stats = stats or IOStats()
        self._scratch = np.zeros(MAX_BLOCK, dtype=np.float32)
        # Underruns are only counted once audio has flowed (the first callback may race start).
        self.started = started

    def _report(self, exc: BaseException) -> None:
        self.stats.callback_errors += 1
        self.stats.last_error = f"audio callback: {exc!r}"

    def on_input(self, indata: np.ndarray, frames: int, input_overflow: bool) -> None:
        try:
            st = self.stats
            st.callbacks_in += 1
            st.frames_in += frames
            if input_overflow:
                st.input_overflows += 1
            ch = indata.shape[1]
            if self.input_channel is not None:
                self.in_ring.write(indata[:frames, self.input_channel])
            elif ch == 1:
                self.in_ring.write(indata[:frames, 0])
            else:
                self.in_ring.write_scaled_sum(indata[:frames], 1.0 / ch)
        except Exception as exc:
            self._report(exc)

    def on_output(self, outdata: np.ndarray, frames: int, output_underflow: bool) -> None:
        try:
            st = self.stats
            st.callbacks_out += 1
            st.frames_out += frames
            if frames > st.max_block:
                st.max_block = frames
            if output_underflow:
                st.output_underflows += 1
            buf = self._scratch[:frames]
            n = self.out_ring.read_into(buf)
            if n < frames:
                buf[n:] = 0.0  # always fill the whole output
                if self.started:
                    st.underruns += 1
                    st.underrun_samples += frames - n
            outdata[:frames] = buf[:, None]  # mono to every channel (broadcast, no copy)
            # Captured minus played, taken here where no callback can interleave; the worker
            # adds what it holds to get the samples in flight (its drift measure).
            st.io_balance = self.in_ring._w - self.out_ring._r
        except Exception as exc:
            outdata.fill(0)
            self._report(exc)


# ----- devices -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    default_low_input_latency: float
    default_low_output_latency: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _sd() -> Any:
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio library missing
        raise DeviceError(f"PortAudio is not available ({exc}); install libportaudio2") from None
    global _jack_servers
    if _jack_servers is None:  # PortAudio was initialised on import: note its JACK server
        _jack_servers = _note_jack_servers(sd)
        atexit.register(_leave_portaudio_at_exit)
    return sd


# PortAudio's JACK host keeps a client of the server it found at initialisation. Once that
# server is gone (killed, crashed, restarted), terminating PortAudio aborts the process
# (pa_jack.c: "Terminate: Assertion `err == 0'") or crashes it -- at exit, and in a device
# rescan. So the server's processes are noted at initialisation and looked up again before
# PortAudio is terminated: if none of them is alive, PortAudio is left alone (Linux: /proc).
# Only the server PortAudio connects to (JACK_DEFAULT_SERVER, else "default") counts: another
# jackd left running (another user's, a test's) kept a dead one "alive" (review: abort at exit).
JACK_SERVER_NAMES = ("jackd", "jackdbus", "pipewire")
_jack_servers: frozenset[int] | None = None  # None: not looked yet; empty: no JACK host


def jack_server_name(args: list[str], env_name: str | None = None) -> str:
    """The server name a jackd serves: -n NAME / --name NAME on its command line, else its
    environment's JACK_DEFAULT_SERVER (``env_name``), else "default"."""
    name = env_name or "default"
    for i, arg in enumerate(args[1:], 1):
        if arg in ("-d", "--driver") or arg.startswith(("-d", "--driver=")):
            break  # the driver's own options follow (ALSA's -n is its periods)
        if arg in ("-n", "--name") and i + 1 < len(args):
            name = args[i + 1]
        elif arg.startswith("--name="):
            name = arg[len("--name=") :]
        elif arg.startswith("-n") and not arg.startswith("--") and len(arg) > 2:
            name = arg[2:]
    return name


def _server_pids(name: str | None = None) -> set[int]:
    """Processes of JACK servers: all of them, or those serving ``name`` (a jackdbus or a
    PipeWire serves "default")."""
    pids = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry.name}/comm") as fh:
                    comm = fh.read().strip()
                if comm not in JACK_SERVER_NAMES:
                    continue
                if name is not None:
                    served = "default"
                    if comm == "jackd":
                        with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                            args = fh.read().decode(errors="replace").split("\0")
                        served = jack_server_name([a for a in args if a], _env_server(entry.name))
                    if served != name:
                        continue
                pids.add(int(entry.name))
    return pids


def _env_server(pid: str) -> str | None:
    """JACK_DEFAULT_SERVER in a process's environment (None: unset, or not ours to read)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as fh:
        for item in fh.read().split(b"\0"):
            if item.startswith(b"JACK_DEFAULT_SERVER="):
                return item.split(b"=", 1)[1].decode(errors="replace") or None
    return None


def _note_jack_servers(sd: Any) -> frozenset[int]:
    try:
        apis = [str(api["name"]) for api in sd.query_hostapis()]
    except Exception:  # noqa: BLE001 - no host APIs: nothing to watch
        return frozenset()
    if not any("JACK" in name for name in apis):
        return frozenset()
    # the server PortAudio connected to; if none answers to that name (one whose process we
    # cannot read), every server: then at worst a dead one is taken for alive, as before
    mine = _server_pids(os.environ.get("JACK_DEFAULT_SERVER") or "default")
    return frozenset(mine or _server_pids())


def jack_server_gone() -> bool:
    """Whether PortAudio's JACK server has gone since PortAudio was initialised."""
    return bool(_jack_servers) and not (_jack_servers & _server_pids())


def _leave_portaudio_at_exit() -> None:
    # Runs before sounddevice's own exit handler (atexit runs in reverse order of
    # registration, and this module registers after importing sounddevice).
    if jack_server_gone():
        _abandon("its JACK server went away")


def _abandon(why: str) -> None:
    global _abandoned
    if not _abandoned:
        log.warning("the audio system is gone (%s): PortAudio is left as it is", why)
    _abandoned = True
    with contextlib.suppress(Exception):
        atexit.unregister(_sd()._exit_handler)


# How long a stream's stop/close may take. PortAudio's JACK host waits for a process cycle
# that never comes once the server is gone (killed, crashed): the call never returns, and
# the session's recording and statistics were lost with it (review: `run` hung for good).
STOP_TIMEOUT_S = 2.0
_abandoned = False  # a stream would not stop: PortAudio is left alone from then on


def portaudio_call(fn: Callable[[], Any], what: str, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Run a PortAudio stop/close on a helper thread for at most ``timeout`` seconds. False
    if it did not return: the audio system is gone, and PortAudio is then abandoned (not
    terminated at exit either, where its JACK host would abort the process)."""
    if _abandoned:
        return False
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except Exception as exc:  # already stopped or device vanished: closing follows
            errors.append(exc)

    t = threading.Thread(target=run, name=f"audioseal-{what}", daemon=True)
    t.start()
    t.join(timeout)
    if errors:
        log.debug("%s failed: %s", what, errors[0])
    if not t.is_alive():
        return True
    _abandon(f"{what} did not return")
    return False


ABANDONED = (
    "the audio system stopped answering (its server went away or restarted); restart the program"
)


def check_portaudio_usable() -> None:
    """Refuse to open streams or rescan once PortAudio was abandoned or its JACK server has
    gone: it then fails with unrelated errors ("Insufficient memory", "Invalid sample rate"),
    a stream it did open could not be closed, and a rescan would crash the process."""
    if not _abandoned and jack_server_gone():
        _abandon("its JACK server went away")
    if _abandoned:
        raise DeviceError(ABANDONED)


def rescan_devices() -> None:
    """Re-initialise PortAudio so devices (or a JACK server) that appeared later are seen."""
    global _jack_servers
    check_portaudio_usable()
    sd = _sd()
    sd._terminate()
    sd._initialize()
    _jack_servers = _note_jack_servers(sd)  # a JACK server started since is watched now


def list_devices() -> list[DeviceInfo]:
    sd = _sd()
    apis = sd.query_hostapis()
    out = []
    for i, d in enumerate(sd.query_devices()):
        out.append(
            DeviceInfo(
                index=i,
                name=str(d["name"]),
                hostapi=str(apis[d["hostapi"]]["name"]),
                max_input_channels=int(d["max_input_channels"]),
                max_output_channels=int(d["max_output_channels"]),
                default_samplerate=float(d["default_samplerate"]),
                default_low_input_latency=float(d["default_low_input_latency"]),
                default_low_output_latency=float(d["default_low_output_latency"]),
            )
        )
    return out


SEE_DEVICES = (
    "(see `audioseal-live devices`)"  # the hint device errors end with (an app may swap it)
)


def resolve_device(spec: str | int | None, kind: str) -> int:
    """Device index from an index, a name (exact, then case-insensitive substring) or None
    (the default). Names survive re-plugging; indices do not."""
    sd = _sd()
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    devices = list_devices()
    if spec is None or spec == "":
        idx = sd.default.device[0 if kind == "input" else 1]
        if idx is None or idx < 0:
            cands = [d for d in devices if getattr(d, key) > 0]
            if not cands:
                raise DeviceError(f"no {kind} device found {SEE_DEVICES}")
            return cands[0].index
        return int(idx)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        idx = int(spec)
        if not 0 <= idx < len(devices):
            raise DeviceError(f"no device with index {idx} {SEE_DEVICES}")
        if getattr(devices[idx], key) <= 0:
            raise DeviceError(f"device {idx} ({devices[idx].name!r}) has no {kind} channels")
        return idx
    usable = [d for d in devices if getattr(d, key) > 0]
    exact = [d for d in usable if d.name == spec]
    if exact:
        return exact[0].index
    sub = [d for d in usable if spec.lower() in d.name.lower()]
    if not sub:
        names = ", ".join(repr(d.name) for d in usable) or "none"
        raise DeviceError(f"no {kind} device matches {spec!r}; {kind} devices: {names}")
    if len(sub) > 1:
        log.info("%s device %r matches %d devices; using %r", kind, spec, len(sub), sub[0].name)
    return sub[0].index


# ----- streams -------------------------------------------------------------------------------
def open_stream(sd: Any, kind: str, native: Any, python_callback: Any, **settings: Any) -> Any:
    """A PortAudio stream ("duplex", "input" or "output") running the C callback
    (engine/_rtio.c) when ``native`` holds its (function, userdata) pointers, else
    ``python_callback``. sounddevice's stream base class passes a C function pointer straight
    to Pa_OpenStream."""
    if native is not None:
        cb, user = native
        return sd._StreamBase(kind=kind, callback=cb, userdata=user, wrap_callback=None, **settings)
    cls = {"duplex": sd.Stream, "input": sd.InputStream, "output": sd.OutputStream}[kind]
    return cls(callback=python_callback, **settings)


class SoundDeviceBackend:
    """Opens PortAudio streams: one duplex stream when input and output are the same device,
    otherwise separate input and output streams (each on its own clock: drift is handled by
    the worker)."""

    def __init__(
        self,
        io: CallbackIO,
        input_device: int,
        output_device: int,
        sample_rate: int,
        block_size: int = 0,
        latency: str | float = "low",
    ) -> None:
        self.io = io
        self.stats = io.stats
        self.input_device = input_device
        self.output_device = output_device
        self.sample_rate = int(sample_rate)
        self.block_size = int(block_size)
        self.latency = latency
        self._streams: list[Any] = []
        self._native: tuple[Any, Any] | None = None  # (C callback, userdata) when native
        sd = _sd()
        dev_in = sd.query_devices(input_device)
        dev_out = sd.query_devices(output_device)
        self.input_name = str(dev_in.get("name", input_device))  # for reports
        self.output_name = str(dev_out.get("name", output_device))
        self.in_channels = int(dev_in["max_input_channels"])
        self.out_channels = int(dev_out["max_output_channels"])
        # Up to 2 channels each way: enough for mono/stereo, cheap for 64-channel interfaces.
        self.in_channels = max(1, min(self.in_channels, 2))
        self.out_channels = max(1, min(self.out_channels, 2))
        if io.input_channel is not None:
            self.in_channels = max(self.in_channels, io.input_channel + 1)
        self._check(sd)

    def _check(self, sd: Any, with_input: bool = True) -> None:
        """PortAudio's own check of rate and channels, as one clear error."""
        check_portaudio_usable()  # (a gone JACK server answers "Invalid sample rate")
        checks = [("output", self.output_device, self.out_channels, sd.check_output_settings)]
        if with_input:
            checks.insert(
                0, ("input", self.input_device, self.in_channels, sd.check_input_settings)
            )
        for kind, device, channels, check in checks:
            try:
                check(
                    device=device, channels=channels, dtype="float32", samplerate=self.sample_rate
                )
            except Exception as exc:
                info = sd.query_devices(device)
                name, default = info["name"], float(info["default_samplerate"])
                if "sample rate" in str(exc).lower() and default != self.sample_rate:
                    raise DeviceError(
                        f"the {kind} device {name!r} does not run at {self.sample_rate:g} Hz "
                        f"(it runs at {default:g} Hz): choose {default:g} Hz or the device's "
                        "default rate"
                    ) from None
                raise DeviceError(
                    f"{kind} device {name!r}: settings not supported: {exc}"
                ) from None

    @property
    def duplex(self) -> bool:
        return self.input_device == self.output_device

    def open(self) -> None:
        from audioseal_live.engine.native_io import stream_callback

        sd = _sd()  # (usable: checked by _check when this backend was made)
        io = self.io

        def cb_in(indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
            io.on_input(indata, frames, bool(status.input_overflow))

        def cb_out(outdata: np.ndarray, frames: int, time: Any, status: Any) -> None:
            io.on_output(outdata, frames, bool(status.output_underflow))

        def cb_duplex(
            indata: np.ndarray, outdata: np.ndarray, frames: int, time: Any, status: Any
        ) -> None:
            io.on_input(indata, frames, bool(status.input_overflow))
            io.on_output(outdata, frames, bool(status.output_underflow))

        self._native = stream_callback(io, self.in_channels, self.out_channels)
        try:
            if self.duplex:
                devices = (self.input_device, self.output_device)
                channels = (self.in_channels, self.out_channels)
                s = self._stream(sd, "duplex", devices, channels, cb_duplex)
                self._streams = [s]
                self.stats.input_latency, self.stats.output_latency = map(float, s.latency)
            else:
                si = self._stream(sd, "input", self.input_device, self.in_channels, cb_in)
                self._streams = [si]  # so that close() below lets it go if the output fails
                so = self._stream(sd, "output", self.output_device, self.out_channels, cb_out)
                self._streams = [so, si]
                self.stats.input_latency = float(si.latency)
                self.stats.output_latency = float(so.latency)
        except Exception as exc:
            self.close()
            raise DeviceError(f"cannot open audio streams: {exc}") from None

    def _stream(self, sd: Any, kind: str, device: Any, channels: Any, python_callback: Any) -> Any:
        return open_stream(
            sd,
            kind,
            self._native,
            python_callback,
            device=device,
            channels=channels,
            samplerate=self.sample_rate,
            blocksize=self.block_size,
            dtype="float32",
            latency=self.latency,
        )

    def start(self) -> None:
        for s in self._streams:
            s.start()

    def stop(self) -> None:
        for s in self._streams:
            portaudio_call(s.stop, "stream stop")

    def close(self) -> None:
        for s in self._streams:
            portaudio_call(s.close, "stream close")
        self._streams = []

    @property
    def active(self) -> bool:
        return bool(self._streams) and all(s.active for s in self._streams)

    def block_estimate(self) -> int:
        """Callback block size: fixed if asked for, else what the output latency implies."""
        if self.block_size:
            return self.block_size
        est = round(self.stats.output_latency * self.sample_rate)
        return int(min(max(est, 64), 2048)) if est > 0 else 512


class CaptureStream:
    """A second input (loopback or room mic) that feeds the detector monitor's ring."""

    def __init__(self, device: int, sample_rate: int, capacity: int) -> None:
        """``capacity``: samples of slack (a power of two); the monitor reads ``self.ring``."""
        check_portaudio_usable()
        from audioseal_live.engine.native_io import make_callback_io, stream_callback

        self.device = device
        self._io, self.ring, _ = make_callback_io(capacity)  # its output ring goes unused
        self.stats = self._io.stats
        sd = _sd()
        ch = max(1, min(int(sd.query_devices(device)["max_input_channels"]), 2))
        native = stream_callback(self._io, ch, 1)

        def cb(indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
            self._io.on_input(indata, frames, bool(status.input_overflow))

        settings = dict(device=device, channels=ch, samplerate=sample_rate, dtype="float32")
        try:
            self._stream = open_stream(sd, "input", native, cb, **settings)
        except Exception as exc:
            raise DeviceError(f"cannot open monitor input: {exc}") from None

    def start(self) -> None:
        self._stream.start()

    def close(self) -> None:
        if portaudio_call(self._stream.stop, "monitor input stop"):
            portaudio_call(self._stream.close, "monitor input close")


BackendFactory = Callable[[CallbackIO, int], Any]
