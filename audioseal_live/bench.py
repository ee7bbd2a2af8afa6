"""`audioseal-live bench`: speed of the streaming models, ours beside the reference's.

Figures are printed, never asserted: machines are shared and noisy. Each chunk size is timed
in alternating rounds (ours, reference, ours, …) so that both see the same load; each reports
its quietest round (as timeit reports its best), and the ratio of the two in the same run is
the number to trust.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from audioseal_live.errors import SettingError

SAMPLE_RATE = 16000
DEFAULT_CHUNKS = (320, 640, 1600, 16000)
MIN_TIMED = 8  # chunks timed per round at least, whatever the chunk size
OURS, OURS_BF16 = "audioseal-live", "audioseal-live bf16"
# our streams entered with streaming(traced=True): traced steps, as the engine runs them
OURS_TRACED = "audioseal-live traced"


@dataclass
class Timing:
    impl: str
    model: str
    chunk: int
    ms_p50: float
    ms_mean: float
    rtf: float
    threads: int = 0  # intra-op threads the step ran on (a traced step may choose one)
    # p50 of every alternating round, in order: rounds of two implementations with the same
    # index ran back to back, so their ratio is the least disturbed by a noisy machine
    rounds_ms_p50: tuple[float, ...] = ()


def keep_freed_memory() -> bool:
    """Keep freed heap memory mapped (glibc's mallopt): True if glibc took the settings.

    The reference re-runs its whole decoder every chunk and frees big temporaries that glibc
    gives back to the OS by default, so the next chunk faults them in again: its 20 ms chunk
    took 34-40 ms in most bench processes here and 17-20 ms in the rest (its own speed). A
    fixed 32 MB mmap threshold (the documented 64-bit maximum) and a 1 GB trim threshold keep
    those pages: the reference then runs at its own speed in every process, and the ratio is
    not flattered. Ours is not affected: its traced steps take ~0 minor page faults per chunk
    either way (counted with getrusage, both cards, 320 and 1600 samples).
    """
    import ctypes  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _time_stream(step: Callable[[Any], Any], chunks: list[Any]) -> list[float]:
    times = []
    for chunk in chunks:
        t0 = time.perf_counter()
        step(chunk)
        times.append(time.perf_counter() - t0)
    return times


def _models(which: str) -> dict[str, Any]:
    """Our generator and detector with random weights for a card family."""
    import torch  # noqa: PLC0415

    from audioseal_live.models import OFFICIAL_CARDS, AudioSealDetector, AudioSealWM  # noqa: PLC0415
    from audioseal_live.models.loader import AudioSeal  # noqa: PLC0415

    torch.manual_seed(0)
    if which == "official":
        return {
            "generator": AudioSealWM(OFFICIAL_CARDS["audioseal_wm_streaming"]).eval(),
            "detector": AudioSealDetector(OFFICIAL_CARDS["audioseal_detector_streaming"]).eval(),
        }
    return {"generator": AudioSeal.load_generator(), "detector": AudioSeal.load_detector()}


def _reference_models() -> dict[str, Any] | None:
    """The `audioseal` package's streaming models with random weights, if it is installed."""
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    try:
        import torch  # noqa: PLC0415
        from audioseal.builder import (  # noqa: PLC0415
            AudioSealDetectorConfig,
            AudioSealWMConfig,
            create_detector,
            create_generator,
        )
        from audioseal.loader import AudioSeal as RefAudioSeal  # noqa: PLC0415
        from audioseal.loader import load_local_model_config  # noqa: PLC0415
        from omegaconf import OmegaConf  # noqa: PLC0415
    except ImportError:
        return None
    out = {}
    for kind, card, cfg_type, create in (
        ("generator", "audioseal_wm_streaming", AudioSealWMConfig, create_generator),
        ("detector", "audioseal_detector_streaming", AudioSealDetectorConfig, create_detector),
    ):
        cfg = OmegaConf.to_container(load_local_model_config(card))
        for key in ("checkpoint", "name", "model_type"):
            cfg.pop(key, None)
        torch.manual_seed(0)
        out[kind] = create(RefAudioSeal.parse_config(cfg, cfg_type)).eval()
    return out


def _streaming(model: Any, impl: str) -> Any:
    """The reference detector has no streaming(); its encoder does (without any state)."""
    if impl == OURS_BF16:
        return model.streaming(batch_size=1, matmul_dtype="bfloat16")
    if impl == OURS_TRACED:
        return model.streaming(batch_size=1, traced=True)
    if hasattr(model, "streaming"):
        return model.streaming(batch_size=1)
    return model.detector[0].streaming(batch_size=1)


def _step(kind: str, model: Any, msg: Any) -> Callable[[Any], Any]:
    if kind == "generator":
        return lambda x: model(x, sample_rate=SAMPLE_RATE, message=msg, alpha=1.0)
    return lambda x: model(x)


def run_bench(
    which: str = "official",
    chunks: tuple[int, ...] = DEFAULT_CHUNKS,
    seconds: float = 4.0,
    rounds: int = 3,
    threads: int = 2,
    reference: bool = True,
    bf16: bool = False,
    log: Callable[[str], None] = print,
) -> list[Timing]:
    import torch  # noqa: PLC0415

    torch.set_num_threads(threads)
    keep_freed_memory()
    impls: dict[str, dict[str, Any]] = {OURS: _models(which)}
    impls[OURS_TRACED] = impls[OURS]  # same models, through traced steps
    if bf16:
        impls[OURS_BF16] = impls[OURS]  # same models, streamed with bfloat16 weight copies
    if reference and which == "official":
        ref = _reference_models()
        if ref is None:
            log("(the audioseal package is not installed: no reference figures)")
        else:
            impls["audioseal 0.2.0"] = ref
    gen = torch.Generator().manual_seed(0)
    # at least MIN_TIMED timed chunks of every size (4 s held two 1 s chunks after warm-up)
    length = max(int(seconds * SAMPLE_RATE), (MIN_TIMED + 2) * max(chunks))
    audio = 0.1 * torch.randn(1, 1, length, generator=gen)
    msg = torch.randint(0, 2, (1, 16), generator=gen)
    results: list[Timing] = []
    with torch.inference_mode():
        for kind in ("generator", "detector"):
            for chunk in chunks:
                pieces = [
                    audio[..., i : i + chunk] for i in range(0, audio.shape[-1] - chunk + 1, chunk)
                ]
                samples: dict[str, list[list[float]]] = {name: [] for name in impls}
                used: dict[str, int] = {}
                for _ in range(rounds):
                    for name, models in impls.items():
                        model = models[kind]
                        with _streaming(model, name):
                            step = _step(kind, model, msg)
                            # warm-up outside the timing (a traced stream traces at its 2nd)
                            step(pieces[0])
                            step(pieces[1])
                            samples[name].append(_time_stream(step, pieces[2:]))
                            steps = getattr(model, "stream_steps", {}).values()
                            one = any(s.single_threaded for s in steps)
                            used[name] = 1 if one else threads
                for name, per_round in samples.items():
                    # The quietest round: other work on a shared machine only ever adds time.
                    times = min(per_round, key=statistics.fmean)
                    mean = statistics.fmean(times)
                    results.append(
                        Timing(
                            name,
                            kind,
                            chunk,
                            1e3 * statistics.median(times),
                            1e3 * mean,
                            mean / (chunk / SAMPLE_RATE),
                            used[name],
                            tuple(1e3 * statistics.median(r) for r in per_round),
                        )
                    )
    return results


def format_table(results: list[Timing]) -> str:
    ours = {(r.model, r.chunk): r for r in results if r.impl == OURS}
    traced = {(r.model, r.chunk): r for r in results if r.impl == OURS_TRACED}
    fast = {(r.model, r.chunk): r for r in results if r.impl == OURS_BF16}
    mine = (OURS, OURS_TRACED, OURS_BF16)
    refs = {(r.model, r.chunk): r for r in results if r.impl not in mine}
    head = f"{'model':<10} {'chunk':>6} {'ms':>5} | {'ours p50':>8} {'mean':>6} {'RTF':>6}"
    if traced:
        head += f" | {'traced p50':>10} {'RTF':>6} {'thr':>3}"
    if fast:
        head += f" | {'bf16 p50':>8} {'RTF':>6}"
    if refs:
        head += f" | {'ref p50':>8} {'mean':>6} {'RTF':>6} | {'speed-up':>8} {'traced':>7}"
        if traced:
            head += f" {'per round':>11}"
    lines = [head, "-" * len(head)]
    # ms: chunk length; p50/mean: compute per chunk in ms, in the quietest of the alternating
    # rounds; RTF: mean compute / chunk length; ours: the API, model(x) in streaming();
    # traced: the same calls in streaming(traced=True) (blocks.traced, as the real-time engine
    # runs its models); thr: the intra-op threads it ran on (one unless more timed clearly
    # faster: blocks.traced); per round: the traced speed-up in each round, lowest-highest
    # (the table's columns take each implementation's quietest round)
    for (model, chunk), r in ours.items():
        line = f"{model:<10} {chunk:>6} {chunk / 16:>5.0f} | "
        line += f"{r.ms_p50:>8.2f} {r.ms_mean:>6.2f} {r.rtf:>6.3f}"
        t = traced.get((model, chunk))
        if t:
            line += f" | {t.ms_p50:>10.2f} {t.rtf:>6.3f} {t.threads:>3}"
        if fast:
            f = fast[(model, chunk)]
            line += f" | {f.ms_p50:>8.2f} {f.rtf:>6.3f}"
        ref = refs.get((model, chunk))
        if ref:  # speed-up of medians: robust to the odd pre-empted chunk on a shared machine
            line += (
                f" | {ref.ms_p50:>8.2f} {ref.ms_mean:>6.2f} {ref.rtf:>6.3f}"
                f" | {ref.ms_p50 / r.ms_p50:>7.2f}x"
                + (f" {ref.ms_p50 / t.ms_p50:>6.2f}x" if t else "")
            )
            if t and ref.rounds_ms_p50 and t.rounds_ms_p50:
                # the traced speed-up round by round (the rounds ran back to back)
                ratios = [a / b for a, b in zip(ref.rounds_ms_p50, t.rounds_ms_p50, strict=True)]
                line += f" {min(ratios):>5.2f}-{max(ratios):.2f}x"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.live:
        from audioseal_live.engine.bench_live import live_benchmark  # noqa: PLC0415

        report = live_benchmark(
            seconds=args.seconds_live,
            chunk_ms=args.chunk_ms,
            threads=args.threads or 1,
            period=args.period,
        )
        for key, value in report.items():
            print(f"{key:>28}: {value}")
        return 0
    try:
        chunks = tuple(int(c) for c in args.chunks.split(","))
    except ValueError:
        raise SettingError(f"--chunks {args.chunks!r}: sizes in samples, e.g. 320,1600") from None
    if not chunks or min(chunks) < 1:
        raise SettingError(f"--chunks {args.chunks!r}: sizes must be positive")
    from audioseal_live.engine.files import report_path, write_report  # noqa: PLC0415

    json_out = report_path(args.json)  # before minutes of work
    threads = args.threads or 2
    print(
        f"audioseal-live bench: {args.models} cards, streaming, {threads} CPU threads, "
        f"{args.seconds:g} s of audio (at least {MIN_TIMED + 2} chunks) x {args.rounds} rounds "
        "per chunk size"
    )
    from audioseal_live.blocks import gemv  # noqa: PLC0415

    if gemv.kernel():
        print(
            f"products with big weights at 1-16 frames: C ({gemv.kernel()}, blocks.gemv), "
            f"on 2 cores where a traced step runs its other ops on one"
            + (", and its small convolutions split on 2" if gemv.conv_kernel() else "")
        )
    else:
        why = "switched off" if os.environ.get(gemv.ENV_SWITCH) == "0" else "no C extension here"
        print(f"products with big weights: PyTorch's ({why})")
    if args.bf16:
        print("bf16: our streams with bfloat16 weight copies (matmul_dtype='bfloat16'), not exact")
    results = run_bench(
        args.models,
        chunks,
        args.seconds,
        args.rounds,
        threads,
        reference=not args.no_reference,
        bf16=args.bf16,
    )
    print(format_table(results))
    print(
        "ours: model(x) in model.streaming(); traced: the same in model.streaming(traced=True) "
        "(a traced graph of the step from a shape's 2nd chunk on, as the engine runs)"
    )
    if threads > 1:
        print(
            f"thr: threads the traced step ran on: one unless {threads} timed >= 10 % faster "
            "when it was traced (a busy core stalls every split op; see blocks.traced)"
        )
    if any(r.impl not in (OURS, OURS_TRACED, OURS_BF16) for r in results):
        print(
            "per round: the traced speed-up in each alternating round, lowest-highest (the two "
            "ran back to back; the columns before take each one's quietest round)"
        )
    if json_out is not None:
        write_report(json_out, [asdict(r) for r in results])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure streaming speed (RTF, ms per chunk)")
    p.add_argument(
        "--models",
        choices=["official", "default"],
        default="official",
        help="official-size cards with random weights, or the embedded default",
    )
    p.add_argument(
        "--chunks",
        default=",".join(map(str, DEFAULT_CHUNKS)),
        help="chunk sizes in samples at 16 kHz (comma-separated)",
    )
    p.add_argument(
        "--seconds", type=float, default=4.0, help="audio per round (at least 10 chunks)"
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per chunk size\n")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default 2; 1 for --live, leaving a core to JACK and the monitor)",
    )
    p.add_argument("--no-reference", action="store_true", help="skip the audioseal package")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="also time our models streamed with bfloat16 weights (the opt-in fast mode)",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument(
        "--live",
        action="store_true",
        help="run the real-time engine on a JACK loop instead and print its figures",
    )
    p.add_argument("--seconds-live", type=float, default=60.0, help="length of the --live run")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="engine chunk of the --live run")
    p.add_argument(
        "--period", type=int, default=256, help="JACK period (frames) of the --live run's server"
    )
    p.set_defaults(func=run)
