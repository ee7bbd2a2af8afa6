"""CLI commands of the engine: devices, run, demo, embed, detect.

``register(subparsers)`` is called by ``audioseal_live.cli``; heavy imports (torch, models,
sounddevice) happen inside the command functions so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audioseal_live.errors import (
    AudioFileError,
    AudioSealLiveError,
    DeviceError,
    MessageError,
    SettingError,
)
from audioseal_live.message_bits import NBITS, bits_hex, parse_message_text

log = logging.getLogger(__name__)


def parse_message(text: str | None) -> tuple[int, ...] | None:
    """hex (0x1a2b), decimal (6699) or 16 binary digits; None = random."""
    return None if text is None else parse_message_text(text, NBITS)


MAX_USER_BLOCK = 16384  # PortAudio frames per callback: 341 ms at 48 kHz

# Below this rate a file cannot hold the message code's band (300-3400 Hz), read at 8 kHz.
LOW_RATE = 8000


def _device_arg(text: str | None) -> str | int | None:
    if text is None:
        return None
    return int(text) if text.strip().isdigit() else text


# ----- devices ---------------------------------------------------------------------------
def cmd_devices(args: argparse.Namespace) -> int:
    from audioseal_live.engine.audio_io import _sd, list_devices

    devices = list_devices()
    sd = _sd()
    default_in, default_out = sd.default.device
    if args.json:
        print(json.dumps([d.to_dict() for d in devices], indent=2))
        return 0
    if not devices:
        # PortAudio lists the sound cards and the servers it reaches: none means no card, no
        # running server, or (in a container) no access to either
        print(
            "no audio devices found: no sound card, and no running audio server (PipeWire, "
            "PulseAudio or JACK) this program can reach; start one, or check that this user "
            "may use the sound devices ('audio' group)"
        )
        return 0
    for d in devices:
        mark = ("<" if d.index == default_in else " ") + (">" if d.index == default_out else " ")
        print(
            f"{mark} {d.index:3d} {d.name}  [{d.hostapi}]  in {d.max_input_channels}, "
            f"out {d.max_output_channels}, {d.default_samplerate:.0f} Hz"
        )
    print("(< default input, > default output; pick devices by name or index)")
    return 0


# ----- run / demo ------------------------------------------------------------------------
def check_compute_device(device: str) -> None:
    """A torch device the user named: parsed, and CUDA only where torch sees a GPU."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = "meta"  # not a device: said below
    if kind == "meta":  # shapes only, no data
        raise DeviceError(f"--device {device!r}: use cpu or cuda (cuda:N)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but torch sees no CUDA GPU")
    try:  # any other device torch knows but this build lacks (mps, xpu, ...): try it
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise DeviceError(f"--device {device!r} cannot be used here: {why}") from None


def _distinct_files(**paths: str | None) -> None:
    """Recordings and the demo's source must be different files (one would overwrite the
    other: a recording over its own source, two recordings into one file)."""
    seen: dict[Path, str] = {}
    for flag, path in paths.items():
        if path is None:
            continue
        key = Path(path).expanduser().resolve()
        if key in seen:
            a, b = seen[key].replace("_", "-"), flag.replace("_", "-")
            raise AudioFileError(f"--{a} and --{b} name the same file {path}: use two files")
        seen[key] = flag


def _engine_config(args: argparse.Namespace, **over: Any) -> Any:
    from audioseal_live.engine.engine import EngineConfig

    monitor: str | int | None = args.monitor
    if isinstance(monitor, str) and monitor.lower() in ("off", "none"):
        monitor = None
    elif isinstance(monitor, str) and monitor != "output":
        monitor = _device_arg(monitor)
    check_compute_device(args.device)
    if args.block > MAX_USER_BLOCK:  # the rings hold 65536 samples: a bigger block overflows
        raise SettingError(
            f"--block {args.block}: at most {MAX_USER_BLOCK} frames (0 lets the host choose)"
        )
    _distinct_files(
        record=args.record,
        record_input=args.record_input,
        source=getattr(args, "source", None),
        stats_json=args.stats_json,
    )
    cfg = dict(
        input=_device_arg(getattr(args, "input", None)),
        output=_device_arg(args.output),
        monitor=monitor,
        sample_rate=args.rate,
        block_size=args.block,
        chunk_ms=args.chunk_ms,
        device=args.device,
        threads=args.threads,
        model=args.model,
        detector=args.detector,
        message=parse_message(args.message),
        alpha=args.alpha,
        record=args.record,
        record_input=args.record_input,
        overload=args.overload,
    )
    cfg.update(over)
    return EngineConfig(**cfg)  # a plain record: every value was checked above or is later


def _live(args: argparse.Namespace, engine: Any) -> int:
    tty = sys.stderr.isatty()
    from audioseal_live.engine.files import report_path, write_report

    stats = report_path(args.stats_json)  # before the run, not after it
    try:
        # a stop signal while it starts (~2-3 s) tears the start down (no partial recording)
        with _stop_signals_interrupt():
            engine.start()
    except ValueError as exc:  # bad chunk size and similar settings
        raise DeviceError(str(exc)) from None
    msg = engine.message
    what = (
        "--alpha 0: passing the input through unmarked"
        if args.alpha == 0
        else f"marking with message {bits_hex(msg)} ({''.join(map(str, msg))})"
    )
    print(f"{what}; Ctrl-C stops", file=sys.stderr)
    t0 = time.monotonic()
    last_log = t0
    lost = ""
    stopped_by = "error"  # unless the loop ends as it should
    try:
        with _stop_signals_interrupt():
            while args.duration is None or time.monotonic() - t0 < args.duration:
                time.sleep(0.25)
                snap = engine.snapshot()
                if tty:
                    width = shutil.get_terminal_size().columns  # may change while it runs
                    print("\r" + snap.status_line(width), end="", file=sys.stderr, flush=True)
                elif time.monotonic() - last_log >= 10:
                    last_log = time.monotonic()
                    print(snap.status_line(), file=sys.stderr, flush=True)
                lost = engine.device_problem()
                if lost:
                    stopped_by = f"audio lost: {lost}"
                    break
            else:
                stopped_by = "--duration"
    except KeyboardInterrupt:
        stopped_by = "signal"
    finally:
        # Ctrl-C, kill or a closed terminal while the session is saved would lose it: the
        # recording and the statistics come first (a stop takes well under a second).
        with _stop_signals_ignored():
            snap = engine.stop()
            if stats is not None:  # before any print: a closed terminal fails those
                write_report(
                    stats, {**snap.to_dict(), "session": _session(args, engine, stopped_by)}
                )
            with contextlib.suppress(OSError):  # stderr gone (terminal closed, pipe reader)
                if tty:
                    print(file=sys.stderr)
                print(snap.status_line(), file=sys.stderr)
    if engine.record_errors:
        raise AudioFileError("; ".join(engine.record_errors) + " (nothing was saved)")
    if lost:
        saved = " (what was recorded is saved)" if args.record or args.record_input else ""
        raise DeviceError(f"audio stopped after {snap.time_s:.1f} s: {lost}{saved}")
    return 0


def _session(args: argparse.Namespace, engine: Any, stopped_by: str) -> dict[str, Any]:
    """What --stats-json says beside the figures: how the session ended, on which devices,
    and each recording (saved or not, and why)."""
    backend = engine.backend
    demo = getattr(args, "source", False)
    return {
        "stopped_by": stopped_by,  # "--duration", "signal" or "audio lost: <why>"
        "input": (demo or "built-in speech") if demo is not False else backend.input_name,
        "output": backend.output_name,
        "sample_rate": backend.sample_rate,
        "recordings": engine.recordings,
    }


# SIGTERM (kill, systemctl stop, docker stop) and SIGHUP (the terminal closed) end a session
# as Ctrl-C does: stopped and saved, not killed with the recording half-written.
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    with _signal_handlers(interrupt):
        yield


@contextlib.contextmanager
def _stop_signals_ignored() -> Iterator[None]:
    with _signal_handlers(signal.SIG_IGN):
        yield


@contextlib.contextmanager
def _signal_handlers(handler: Any) -> Iterator[None]:
    """``handler`` for the stop signals meanwhile (main thread only: elsewhere, as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {}
    for sig in _STOP_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue  # a signal the caller ignores (nohup, a background job) stays ignored
        before[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def cmd_run(args: argparse.Namespace) -> int:
    from audioseal_live.engine.engine import Engine

    return _live(args, Engine(_engine_config(args)))


def cmd_demo(args: argparse.Namespace) -> int:
    from audioseal_live.engine.demo import demo_backend_factory
    from audioseal_live.engine.engine import Engine

    cfg = _engine_config(args, input=None)
    return _live(args, Engine(cfg, backend_factory=demo_backend_factory(args.source)))


# ----- files -----------------------------------------------------------------------------
def _load_marker(args: argparse.Namespace) -> Any:
    from audioseal_live.engine.engine import Engine, EngineConfig

    check_compute_device(args.device)
    eng = Engine(
        EngineConfig(model=args.model, monitor=None, device=args.device, threads=args.threads)
    )
    eng._load_models()
    return eng._marker


def _load_detector(args: argparse.Namespace) -> Any:
    import torch

    from audioseal_live import AudioSeal
    from audioseal_live.engine.model import TorchDetector, _paired_detector, check_model_rate

    check_compute_device(args.device)
    torch.set_num_threads(max(1, args.threads))
    name = args.detector or _paired_detector(args.model)
    det = AudioSeal.load_detector(name) if name else AudioSeal.load_detector()
    return TorchDetector(check_model_rate(det, name), args.device)


def cmd_embed(args: argparse.Namespace) -> int:
    from audioseal_live.engine.engine import message_for
    from audioseal_live.engine.files import embed_file

    marker = _load_marker(args)
    msg = message_for(int(marker.nbits), parse_message(args.message))
    with _stop_signals_interrupt():  # kill or a closed terminal: no partial file left
        info = embed_file(
            args.input, args.output, marker, msg, args.alpha, progress=sys.stderr.isatty()
        )
    what = (
        "with nothing embedded (--alpha 0)"
        if args.alpha == 0
        else f"with message {bits_hex(msg)} ({info['message']})"
    )
    print(
        f"wrote {info['output']} ({info['frames'] / info['sample_rate']:.1f} s, "
        f"{info['channels']} ch, {info['sample_rate']} Hz) {what}"
    )
    if info["sample_rate"] < LOW_RATE and args.alpha:
        print(
            f"warning: at {info['sample_rate']} Hz the file keeps only what lies below "
            f"{info['sample_rate'] // 2} Hz of the mark (the model marks 16 kHz audio, its "
            "message code 300-3400 Hz): it may not be detected or read back; 8 kHz or more "
            "keeps it",
            file=sys.stderr,
        )
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from audioseal_live.engine.files import detect_file

    det = _load_detector(args)
    msg = parse_message(args.message)
    if msg is not None and len(msg) != int(det.nbits):
        raise MessageError(
            f"the detector reads {det.nbits}-bit messages and --message takes 16 bits: leave "
            "it out and compare the message it prints"
        )
    res = detect_file(args.input, det, msg, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        verdict = "MARKED" if res.marked else "not marked"
        # P: the share of samples the network calls marked; sync: the message code's own
        # evidence over the file (>= 6 counts as marked; unmarked audio stays below ~4.5).
        sync = "" if res.code_sync is None else f", message code sync {res.code_sync:.1f}"
        line = (
            f"{res.path}: {verdict} (network P {res.probability:.2f} of {res.seconds:.1f} s"
            f"{sync}{', inverted polarity' if res.inverted and res.marked else ''})"
        )
        if res.marked:
            if res.bits:  # a detector without a message has none
                line += f", message {bits_hex(res.bits)} ({''.join(map(str, res.bits))})"
                line += f", min bit confidence {min(res.bit_confidence):.2f}"
            elif res.code_sync is not None:  # the network alone: the code is not there
                line += ", no message read (the message code is not there: network only)"
            if res.seconds < 1.0:  # the code is read over ~1 s and more
                line += " (under 1 s: too short to read the bits reliably)"
            if res.match is not None:
                line += ", matches" if res.match else ", DOES NOT match --message"
            if res.polarity_from_message:
                # a sign code alone cannot tell: see the model card
                other = bits_hex([1 - b for b in res.bits])
                line += (
                    f" if the chain inverted the polarity (the code reads the same for"
                    f" {other} as recorded; nothing else here tells the polarity)"
                )
        print(line)
    # 0: marked, and with --message carrying it (a message not read does not count)
    return 0 if res.marked and (msg is None or res.match is True) else 1


# ----- parser ----------------------------------------------------------------------------
def _number(kind: type, least: float, what: str) -> Any:
    """An argparse type: a number >= least (argparse turns the ValueError into one line)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= least:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"{what}, not {text}")
        return value

    return parse


def _model_args(p: argparse.ArgumentParser, detector: bool = True) -> None:
    p.add_argument(
        "--model",
        help="generator card name, checkpoint file or folder (default: the embedded model)",
    )
    if detector:
        p.add_argument("--detector", help="detector card/path (default: paired with --model)")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    p.add_argument(
        "--threads",
        type=_number(int, 1, "at least 1"),
        default=1,
        help="torch CPU threads (default 1)",
    )


def _live_args(p: argparse.ArgumentParser, with_input: bool) -> None:
    if with_input:
        p.add_argument("--input", help="input device (name or index; default: system default)")
    p.add_argument("--output", help="output device (name or index; e.g. a virtual cable)")
    p.add_argument(
        "--monitor",
        default="output",
        help="detector on 'output' (digital), a capture device, or 'off'",
    )
    p.add_argument(
        "--message",
        help="16-bit message: hex 0x1a2b, int 6699 or 16 binary digits (default: random)",
    )
    p.add_argument("--alpha", type=float, default=1.0, help="watermark strength (default 1)")
    p.add_argument(
        "--chunk-ms",
        type=float,
        default=20.0,
        help="model chunk, 20-200 ms in steps of 20 (default 20)",
    )
    p.add_argument(
        "--rate",
        type=_number(int, 1, "a positive rate in Hz"),
        help="device sample rate (default: output's default)",
    )
    p.add_argument(
        "--block",
        type=_number(int, 0, "0 (the host's) or more frames"),
        default=0,
        help="PortAudio block size (0 = host's)",
    )
    p.add_argument(
        "--overload",
        choices=["pass", "mute"],
        default="pass",
        help="when the model falls behind: pass the original through or mute",
    )
    p.add_argument("--record", help="record the marked output to a .wav/.flac file")
    p.add_argument("--record-input", help="also record the input to a .wav/.flac file")
    p.add_argument(
        "--duration",
        type=_number(float, 0.001, "a positive number of seconds"),
        help="stop after this many seconds",
    )
    p.add_argument("--stats-json", help="write the final statistics to this JSON file")
    _model_args(p)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("devices", help="list audio devices")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_devices)

    p = subparsers.add_parser("run", help="mark a live input and play it to an output")
    _live_args(p, with_input=True)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("demo", help="like run, with a built-in voice instead of a mic")
    _live_args(p, with_input=False)
    p.add_argument("--source", help="a .wav/.flac to loop instead of the built-in voice")
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser("embed", help="watermark an audio file")
    p.add_argument("input")
    p.add_argument("output", help=".wav or .flac")
    p.add_argument("--message", help="16-bit message (hex/int/bits; default random)")
    p.add_argument("--alpha", type=float, default=1.0, help="watermark strength (default 1)")
    _model_args(p, detector=False)
    p.set_defaults(func=cmd_embed)

    p = subparsers.add_parser(
        "detect",
        help="detect the watermark in an audio file",
        description="Detect the watermark in an audio file and read its message. Exit "
        "status: 0 marked (and, with --message, carrying that message), 1 not marked or "
        "another message, 2 an error.",
    )
    p.add_argument("input")
    p.add_argument("--message", help="expected message, to report a match")
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_detect)


__all__ = ["AudioSealLiveError", "register"]
