"""A JACK dummy server and a JACK client that plays into / records from another client's ports.

With the dummy driver there is no sound card: the server runs a real-time-paced graph, Debian's
libportaudio2 exposes it to sounddevice as the "system" JACK device, and our feeder client
hears exactly what a user's app (Zoom, OBS) would record from the engine's output ports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audioseal_live.errors import AudioSealLiveError


class JackUnavailable(AudioSealLiveError, RuntimeError):
    """No JACK to run the loop on (jackd2, libjack, or the JACK-Client package: the dev extra)."""


@dataclass
class JackServer:
    name: str
    rate: int
    period: int
    proc: subprocess.Popen[bytes]
    log: Path
    realtime: bool
    baseline_xruns: int = 0  # xruns of the idle server (no engine) over ``baseline_s``
    baseline_s: float = 0.0

    def log_mark(self) -> int:
        """Where jackd's log ends now: pass it to :func:`xrun_causes` after a run."""
        return self.log.stat().st_size


@dataclass(frozen=True)
class XrunCauses:
    """Who jackd says was late at each missed cycle of a run (from its log).

    JACK's xrun callback reaches every client, whoever missed the deadline, once per late
    client and once more if the timer was late: one missed cycle can count 2-3 xruns (the
    xrun counts of the engine and the feeder). jackd logs, per missed cycle, whether its own
    timer woke late and which clients had not finished, and in which state: "Triggered" (its
    thread not yet scheduled) or "Running" (inside its callback). Only a cycle where our
    client was running and nothing else was late can be the engine's doing (a slow callback,
    a lock, the GIL); the rest is the host's.
    """

    events: int = 0
    timer_late: int = 0  # the server's own timer woke late
    others_late: int = 0  # another client (the feeder: a trivial callback) had not finished
    engine_waiting: int = 0  # ours had not been scheduled yet
    engine_running: int = 0  # ours was in its callback (with or without others late)
    engine_alone: int = 0  # ours was in its callback and nothing else was late
    engine_waiting_alone: int = 0  # ours not yet scheduled, nothing else late
    steal_s: float | None = None  # CPU time the hypervisor gave to other guests meanwhile

    @property
    def host(self) -> int:
        """Events where the server's timer or another client was late too: the machine's."""
        return self.events - self.engine_waiting_alone - self.engine_alone

    def summary(self) -> str:
        return (
            f"{self.events} missed cycles in jackd's log: server timer late {self.timer_late}, "
            f"other clients late {self.others_late}, engine not yet scheduled "
            f"{self.engine_waiting}, engine in its callback {self.engine_running} "
            f"({self.engine_alone} with nothing else late)"
            + (f"; CPU stolen by the hypervisor {self.steal_s:.2f} s" if self.steal_s else "")
        )


def cpu_steal_s() -> float | None:
    """CPU time stolen from this virtual machine so far, all CPUs (Linux /proc/stat), or
    None where the kernel does not say: a VM whose vCPUs wait for the host misses deadlines
    that no code inside it can meet."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


_LATE = re.compile(r"client = (.+) was not finished, state = (\w+)")


def xrun_causes(log: Path, since: int = 0, engine: str = "PortAudio") -> XrunCauses:
    """Read jackd 1.9's per-xrun lines after byte ``since`` of its log.

    Each xrun is logged as optional "JackTimedDriver::Process XRun" (timer late) and
    "JackEngine::XRun: client = NAME was not finished, state = S" lines, closed by
    "ProcessGraphAsyncMaster: Process error".
    """
    with open(log, "rb") as fh:
        fh.seek(since)
        text = fh.read().decode(errors="replace")
    n = dict.fromkeys(("events", "timer", "others", "wait", "run", "alone", "wait_alone"), 0)
    timer, late = False, {}
    for line in text.splitlines():
        if "Process XRun" in line:
            timer = True
        elif m := _LATE.search(line):
            late[m.group(1)] = m.group(2)
        elif "Process error" in line:
            ours = late.pop(engine, None)
            n["events"] += 1
            n["timer"] += timer
            n["others"] += bool(late)
            n["wait"] += ours == "Triggered"
            n["run"] += ours == "Running"
            nothing_else = not timer and not late
            n["alone"] += ours == "Running" and nothing_else
            n["wait_alone"] += ours == "Triggered" and nothing_else
            timer, late = False, {}
    return XrunCauses(
        n["events"], n["timer"], n["others"], n["wait"], n["run"], n["alone"], n["wait_alone"]
    )


@contextlib.contextmanager
def jack_dummy_server(
    rate: int = 48000, period: int = 256, realtime: bool = False
) -> Iterator[JackServer]:
    """Start ``jackd -d dummy`` under a unique server name; stop it after.

    ``realtime=True`` asks for SCHED_FIFO (``-R``; root or rtprio limits needed): on a loaded
    machine the non-realtime server misses its own deadlines (xruns with no client at all).
    If the realtime server fails to start, it falls back to ``--no-realtime``.
    """
    jackd = shutil.which("jackd")
    if jackd is None:
        raise JackUnavailable("jackd is not installed (Debian: apt-get install jackd2)")
    try:
        import jack
    except (ImportError, OSError) as exc:
        raise JackUnavailable(
            f"JACK-Client/libjack unavailable ({exc}): pip install 'audioseal-live[dev]' and "
            "apt-get install jackd2"
        ) from None
    name = f"asl{os.getpid()}"
    old = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_AUDIO_RESERVATION")}
    # The server name must be set before PortAudio's JACK host API connects (rescan below).
    os.environ["JACK_DEFAULT_SERVER"] = name
    os.environ["JACK_NO_AUDIO_RESERVATION"] = "1"  # no D-Bus device reservation (root, CI)
    log = Path(tempfile.mkstemp(prefix="jackd-", suffix=".log")[1])

    def launch(rt: bool) -> subprocess.Popen[bytes]:
        mode = ["-R"] if rt else ["--no-realtime"]
        cmd = [jackd, *mode, "-n", name, "-d", "dummy", "-r", str(rate), "-p", str(period)]
        with open(log, "wb") as fh:
            return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)

    proc = launch(realtime)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None and realtime:
                realtime = False
                proc = launch(False)
            elif proc.poll() is not None:
                raise JackUnavailable(
                    f"jackd exited ({proc.returncode}): {log.read_text(errors='replace')[-500:]}"
                )
            try:
                c = jack.Client("asl-probe", no_start_server=True, servername=name)
                c.close()
                break
            except jack.JackError:
                if time.monotonic() > deadline:
                    raise JackUnavailable(
                        f"jackd did not come up: {log.read_text(errors='replace')[-500:]}"
                    ) from None
                time.sleep(0.2)
        from audioseal_live.engine.audio_io import rescan_devices

        rescan_devices()
        server = JackServer(name, rate, period, proc, log, realtime)
        server.baseline_xruns, server.baseline_s = idle_xruns(name, 3.0), 3.0
        yield server
    finally:
        # PortAudio must let go of the server before it dies (its JACK host API asserts
        # otherwise), and rescan once it is gone.
        with contextlib.suppress(Exception):
            import sounddevice as sd

            sd._terminate()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        with contextlib.suppress(Exception):
            import sounddevice as sd

            sd._initialize()


def idle_xruns(server: str, seconds: float) -> int:
    """Xruns of the server with no audio client: does this machine keep JACK's deadlines?"""
    import jack

    count = [0]
    c = jack.Client("asl-xrun-probe", no_start_server=True, servername=server)

    def on_xrun(delay: float) -> None:
        count[0] += 1

    c.set_xrun_callback(on_xrun)
    c.activate()
    time.sleep(seconds)
    c.deactivate()
    c.close()
    return count[0]


class Feeder:
    """JACK client: plays ``signal`` into the target's input ports, records its output ports.

    Both happen in the same process cycle, indexed by the same frame counter, so the lag
    between the two arrays is the target's true input->output latency in samples.
    """

    def __init__(self, server: str, signal: np.ndarray, record_s: float) -> None:
        import jack

        self.client = jack.Client("asl-feeder", no_start_server=True, servername=server)
        self.rate = self.client.samplerate
        self.signal = np.ascontiguousarray(signal, dtype=np.float32)
        n = int(record_s * self.rate)
        self.fed = np.zeros(n, dtype=np.float32)
        self.recorded = np.zeros(n, dtype=np.float32)
        self.pos = 0
        self.running = False
        self.done = threading.Event()
        self.out = self.client.outports.register("out")
        self.inp = self.client.inports.register("in")
        self.xruns = 0
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)

    def _xrun(self, delay: float) -> None:
        self.xruns += 1

    def _process(self, frames: int) -> None:
        out = self.out.get_array()
        if not self.running or self.pos >= self.fed.shape[0]:
            out.fill(0)
            if self.running:
                self.done.set()
            return
        n = min(frames, self.fed.shape[0] - self.pos)
        src = self.signal[self.pos % self.signal.shape[0] :][:n]
        out[: src.shape[0]] = src
        out[src.shape[0] :] = 0
        self.fed[self.pos : self.pos + n] = out[:n]
        self.recorded[self.pos : self.pos + n] = self.inp.get_array()[:n]
        self.pos += n

    def connect_to(self, prefix: str = "PortAudio") -> tuple[list[str], list[str]]:
        """Wire our ports to the ``prefix`` client's ports (and unplug it from system:*)."""
        c: Any = self.client
        ins = [p.name for p in c.get_ports(prefix, is_audio=True, is_input=True)]
        outs = [p.name for p in c.get_ports(prefix, is_audio=True, is_output=True)]
        if not ins or not outs:
            raise RuntimeError(f"no {prefix} ports: {[p.name for p in c.get_ports()]}")
        for p in ins + outs:
            for q in c.get_all_connections(p):
                if q.name.startswith("system:"):
                    a, b = (q.name, p) if p in ins else (p, q.name)
                    c.disconnect(a, b)
        for p in ins:
            c.connect(self.out, p)
        c.connect(outs[0], self.inp)
        return ins, outs

    def __enter__(self) -> Feeder:
        self.client.activate()
        return self

    def start(self) -> None:
        self.running = True

    def __exit__(self, *exc: object) -> None:
        self.client.deactivate()
        self.client.close()


def si_snr(est: np.ndarray, ref: np.ndarray) -> float:
    ref = ref - ref.mean()
    est = est - est.mean()
    s = (est @ ref) / (ref @ ref) * ref
    return float(10 * np.log10((s @ s) / max(1e-12, float((est - s) @ (est - s)))))


def measured_lag(fed: np.ndarray, recorded: np.ndarray, max_lag: int) -> int:
    """Lag (samples) of ``recorded`` behind ``fed`` by cross-correlation (FFT)."""
    n = fed.shape[0] + max_lag
    size = 1 << int(np.ceil(np.log2(n)))
    f = np.fft.rfft(fed, size)
    r = np.fft.rfft(recorded, size)
    xc = np.fft.irfft(r * np.conj(f), size)[:max_lag]
    return int(np.argmax(xc))


# ----- the loop: engine on the JACK "system" device, fed and recorded by the Feeder ----------
@dataclass
class LoopResult:
    fed: np.ndarray  # what went into the engine's input port
    recorded: np.ndarray  # what came out of its output port, same frame clock
    lag: int  # measured input->output latency in samples (cross-correlation)
    rate: int
    snapshot: Any  # final engine Snapshot
    compute_ms: np.ndarray  # per-chunk compute times
    rss_start_mb: float
    rss_end_mb: float
    feeder_xruns: int
    rss_trace_mb: list[float] = field(default_factory=list)  # every 5 s
    live_detection: Any = None  # the monitor's Detection when speech last reached the input
    xrun_causes: XrunCauses = field(default_factory=XrunCauses)  # jackd's log of this run


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_jack_loop(
    server: JackServer,
    seconds: float,
    marker: Any = None,
    detector: Any = None,
    signal: np.ndarray | None = None,
    **config: Any,
) -> LoopResult:
    """Run the engine on the JACK dummy server's "system" device for ``seconds`` of speech."""
    from audioseal_live.engine.demo import speech
    from audioseal_live.engine.engine import Engine, EngineConfig

    rate = server.rate
    sig = speech(seconds + 1, rate) if signal is None else signal
    cfg = EngineConfig(input="system", output="system", sample_rate=rate, **config)
    eng = Engine(cfg, marker=marker, detector=detector)
    feeder = FeederProcess(server, sig, seconds)
    rss0 = 0.0
    mark = server.log_mark()
    steal0 = cpu_steal_s()
    try:
        eng.start()
        rss0 = rss_mb()  # after model load and warm-up: growth from here would be a leak
        trace: list[float] = []
        done = threading.Event()
        live: list[Any] = [None]

        def sample() -> None:
            # RSS every 5 s (a plateau is allocator warm-up, a slope a leak), and the monitor's
            # view every 0.1 s while speech still reaches the input: after the feed ends the
            # engine runs on silence until it is stopped, and the monitor rightly says
            # "not marked" there.
            polls = 0
            while not done.wait(0.1):
                polls += 1
                snap = eng.snapshot()
                if snap.peak_in > 1e-3:
                    live[0] = snap.detection
                if polls % 50 == 0:
                    trace.append(round(rss_mb(), 1))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            fed, recorded, feeder_xruns = feeder.result()
        finally:
            done.set()
            sampler.join()
        assert eng.worker is not None
        compute = eng.worker.timing.all_ms()
    finally:
        snap = eng.stop() if eng.worker is not None else None
        if feeder.proc.poll() is None:
            feeder.proc.kill()
    rss1 = rss_mb()
    lag = measured_lag(fed, recorded, max_lag=rate // 2)
    causes = xrun_causes(server.log, mark)
    steal1 = cpu_steal_s()
    if steal0 is not None and steal1 is not None:
        causes = dataclasses.replace(causes, steal_s=steal1 - steal0)
    return LoopResult(
        fed, recorded, lag, rate, snap, compute, rss0, rss1, feeder_xruns, trace, live[0], causes
    )


class FeederProcess:
    """The Feeder in its own process, as the user's recording app would be: in ours its
    Python callback would compete with the engine's callback for the GIL. Started (and its
    imports paid: numpy and JACK only, run by file path) before the engine opens its streams;
    it waits for the engine's ports, lets the graph settle, then plays and records."""

    def __init__(self, server: JackServer, signal: np.ndarray, seconds: float) -> None:
        self._dir = tempfile.TemporaryDirectory()
        d = Path(self._dir.name)
        src, self.dst = d / "signal.npy", d / "result.npz"
        np.save(src, signal.astype(np.float32))
        self.seconds = seconds
        cmd = [sys.executable, __file__, server.name, str(src), str(seconds), str(self.dst)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> tuple[np.ndarray, np.ndarray, int]:
        try:
            _, err = self.proc.communicate(timeout=3 * self.seconds + 90)
            if self.proc.returncode != 0 or not self.dst.is_file():
                raise RuntimeError(f"JACK feeder failed ({self.proc.returncode}): {err[-800:]}")
            with np.load(self.dst) as z:
                return z["fed"], z["recorded"], int(z["xruns"])
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._dir.cleanup()


def _feeder_main(argv: list[str]) -> int:
    import jack

    server, src, seconds, dst = argv
    signal = np.load(src)
    with Feeder(server, signal, float(seconds)) as feeder:
        deadline = time.monotonic() + 120  # the engine loads and warms up its model meanwhile
        while not feeder.client.get_ports("PortAudio", is_audio=True, is_output=True):
            if time.monotonic() > deadline:
                return 4
            time.sleep(0.05)
        time.sleep(0.5)
        try:
            feeder.connect_to("PortAudio")
        except jack.JackError:
            return 5
        feeder.xruns = 0
        feeder.start()
        if not feeder.done.wait(3 * float(seconds) + 30):
            return 3
    np.savez(dst, fed=feeder.fed, recorded=feeder.recorded, xruns=feeder.xruns)
    return 0


def live_benchmark(
    seconds: float = 60.0,
    model: str | None = None,
    chunk_ms: float = 20.0,
    threads: int = 1,
    device: str = "cpu",
    monitor: bool = True,
    period: int = 256,
) -> dict[str, Any]:
    """`audioseal-live bench --live`: the JACK loop with the given model; figures, no asserts."""
    # Realtime scheduling where permitted (as the tests do): a non-realtime dummy server on a
    # busy machine misses its own deadlines, and those xruns say nothing about the engine.
    with jack_dummy_server(period=period, realtime=True) as server:
        res = run_jack_loop(
            server,
            seconds,
            model=model,
            chunk_ms=chunk_ms,
            threads=threads,
            device=device,
            monitor="output" if monitor else None,
        )
        # Baselines in the same run, the same server with no engine (an idle client only):
        # as long again idle, then with one thread of plain CPU load in another process. On
        # a shared VM a busy vCPU loses time to the hypervisor, and JACK's realtime threads
        # miss deadlines with it (this VM: idle 1 xrun in 30 s, one busy thread 15).
        idle = _baseline(server, seconds, load=False)
        loaded = _baseline(server, seconds, load=True)
    s = res.snapshot
    ms = res.compute_ms
    return {
        "seconds": seconds,
        "sample_rate": res.rate,
        "jack_period": server.period,
        "jack_realtime": server.realtime,
        "jack_idle_xruns": server.baseline_xruns,
        "chunk_ms": chunk_ms,
        "threads": threads,
        "device": device,
        "latency_measured_ms": 1000 * res.lag / res.rate,
        "latency_budget_ms": s.latency_budget_ms,
        "latency_reported_ms": s.latency_ms,
        # where the budget goes: PortAudio's own latencies, the resamplers, the output ring
        "portaudio_in_out_ms": (s.input_latency_ms, s.output_latency_ms),
        "pipeline_delay_ms": s.pipeline_delay_ms,
        "out_ring_target_ms": 1000 * s.out_ring_target / res.rate,
        "ms_per_chunk_p50": float(np.percentile(ms, 50)) if ms.size else 0.0,
        "ms_per_chunk_p99": float(np.percentile(ms, 99)) if ms.size else 0.0,
        "rtf": s.rtf,
        "xruns": s.xruns,
        "underruns": s.underruns,
        "unmarked_spans": s.unmarked_spans,
        "stale_dropped_s": s.stale_dropped_s,
        "drift_corrections": s.drift_corrections,
        "native_callback": s.native_callback,
        "feeder_xruns": res.feeder_xruns,
        "xrun_causes": res.xrun_causes.summary(),
        "idle_server_xruns": f"{idle} with no engine",
        "loaded_server_xruns": f"{loaded} with no engine, one busy thread beside",
        "rss_start_mb": res.rss_start_mb,
        "rss_end_mb": res.rss_end_mb,
        "rss_every_5s_mb": res.rss_trace_mb,
        # Leaks show as growth once the audio runs: the first second grows each thread's
        # allocator arena to its working set (the worker's, the monitor's: ~20-30 MB here).
        "rss_growth_after_5s_mb": _growth(res.rss_trace_mb),
        # the monitor while speech was fed (after the feed it hears silence)
        "detection_prob": (res.live_detection or s.detection).prob_smoothed,
        "detection_match": (res.live_detection or s.detection).match,
    }


_BUSY = (  # one thread of plain CPU work for argv[1] seconds
    "import sys, time\nend = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end: pass"
)


def _baseline(server: JackServer, seconds: float, load: bool) -> str:
    """Xruns of ``server`` over ``seconds`` with no engine, and the CPU time stolen meanwhile;
    ``load``: with a busy thread in another process (a load of no audio at all)."""
    busy = subprocess.Popen([sys.executable, "-c", _BUSY, str(seconds + 1)]) if load else None
    try:
        steal0 = cpu_steal_s()
        n = idle_xruns(server.name, seconds)
        steal1 = cpu_steal_s()
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    stolen = "?" if steal0 is None or steal1 is None else f"{steal1 - steal0:.2f}"
    return f"{n} xruns in {seconds:g} s (CPU stolen: {stolen} s)"


def _growth(trace: list[float]) -> str:
    if len(trace) < 2:
        return "(run under 10 s: no figure)"
    return f"{trace[-1] - trace[0]:+.1f} MB in {5 * (len(trace) - 1)} s"


if __name__ == "__main__":
    sys.exit(_feeder_main(sys.argv[1:]))
