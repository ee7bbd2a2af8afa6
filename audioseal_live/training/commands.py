"""`audioseal-live corpus | train | export | eval`: build data, train, ship and measure a model.

Heavy modules (torch, the trainer) are imported inside the handlers so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import sys
import tempfile
from pathlib import Path

from audioseal_live.errors import AudioSealLiveError, SettingError

STAGES = ("detect", "message", "quality")  # trainer.STAGES, without importing torch here


class TrainingSetupError(AudioSealLiveError, ValueError):
    """A training/eval option the user can fix (device, paths)."""


def _check_device(device: str) -> None:
    from audioseal_live.engine.commands import check_compute_device

    check_compute_device(device)


def _not_a_file(path: str, what: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise TrainingSetupError(f"{what} {p} is a file, not a folder")
    return p


def _check_folder(path: str, what: str) -> None:
    """A folder to write into, made now: refused at once if it is a file or cannot be made
    or written (not after hours of work)."""
    p = _not_a_file(path, what)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        why = exc.strerror or exc
        raise TrainingSetupError(f"{what} {p}: cannot write there ({why})") from None


def _corpus(args: argparse.Namespace) -> int:
    from audioseal_live.training import corpus

    _check_folder(args.out, "--out")
    return int(corpus.run(args) or 0)


# Option checks of `train`, each naming its flag (a bad value is one line, not a traceback
# after the corpus is loaded). Only the values given are checked: the defaults and a resumed
# run's own values hold.
_AT_LEAST = {
    "batch_size": (2, "every batch needs marked and unmarked clips"),
    "log_every": (1, ""),
    "val_every": (0, "0: no validation, and no best.pt"),
    "max_steps": (0, ""),
    "snr_every": (1, ""),
    "n_filters": (1, ""),
    "det_n_filters": (1, ""),
    "dimension": (1, ""),
    "lstm": (0, ""),
    "msg_jitter": (0, ""),
    "max_shift": (0, ""),
    "max_clips": (0, "0: every clip"),
}
_SHARES = ("mask_prob", "attack_prob", "noise_negatives", "sync_prob", "bit_switch")
_WEIGHTS = (  # >= 0 and finite
    "w_msg",
    "w_msg_mean",
    "w_visible",
    "visible_min",
    "w_spec_code",
    "spec_margin",
    "w_template_code",
    "template_margin",
    "w_unsync",
    "w_mel",
    "w_loud",
    "det_lr_scale",
    "spec_lo",
    "spec_hi",
    "template_lo",
    "template_hi",
)
_FINITE = ("snr_start", "snr_final", "gen_gain_db")
_LIMITS = ("max_hours", "ckpt_minutes")  # >= 0, may be inf


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_train_options(args: argparse.Namespace) -> None:
    def bad(key: str, rule: str) -> TrainingSetupError:
        return TrainingSetupError(f"{_flag(key)} must be {rule}, got {getattr(args, key)}")

    for key, (least, why) in _AT_LEAST.items():
        value = getattr(args, key, None)
        if value is not None and value < least:
            raise bad(key, f">= {least}" + (f" ({why})" if why else ""))
    for key in _SHARES:
        value = getattr(args, key, None)
        if value is not None and not 0 <= value <= 1:  # also refuses NaN
            raise bad(key, "a share in [0, 1]")
    for key in _WEIGHTS:
        value = getattr(args, key, None)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise bad(key, "finite and >= 0")
    for key in _FINITE:
        value = getattr(args, key, None)
        if value is not None and not math.isfinite(value):
            raise bad(key, "finite")
    for key in _LIMITS:
        value = getattr(args, key, None)
        if value is not None and not value >= 0:
            raise bad(key, ">= 0")
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        raise bad("lr", "finite and > 0")


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _train(args: argparse.Namespace) -> int:
    from audioseal_live.training.data import require_split
    from audioseal_live.training.trainer import TrainConfig, run_training

    _check_device(args.device)
    _check_train_options(args)
    _not_a_file(args.run_dir, "--run-dir")  # before the corpus check; made after it
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    # Options not on the command line are None here (their defaults are in --help): a resumed
    # run keeps its own for them, a new run gets TrainConfig's defaults.
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    cfg = TrainConfig(**given)
    run_dir = Path(args.run_dir)
    # folders this command makes, removed again while empty when no run or export came of it
    made = [f for f in (run_dir, Path(args.export or run_dir)) if not f.is_dir()]

    def ready(cfg: TrainConfig) -> None:
        """The whole configuration (a resumed run's included), checked before a run folder
        is made or anything is written."""
        if not 0 <= cfg.max_shift < cfg.segment:
            raise TrainingSetupError(
                f"--max-shift {cfg.max_shift} must lie in [0, --segment {cfg.segment})"
            )
        for band in ("spec", "template"):
            lo, hi = getattr(cfg, f"{band}_lo"), getattr(cfg, f"{band}_hi")
            if not lo < hi <= 8000:
                raise TrainingSetupError(
                    f"--{band}-lo {lo} and --{band}-hi {hi} must be a band, lo < hi <= 8000 Hz"
                )
        # an empty split (no corpus, an empty manifest, only test lines) is said now, with
        # the folder and the split, not after a run folder is made
        require_split(cfg.corpus, "train")
        if cfg.val_every:
            hint = ", or train without validation (and best.pt): --val-every 0"
            require_split(cfg.corpus, "valid", hint)
        if args.export:  # checked now, not after hours of training
            _check_folder(args.export, "--export")
        _check_folder(args.run_dir, "--run-dir")

    logging.getLogger("audioseal_live").setLevel(logging.INFO)
    try:
        trainer = run_training(
            cfg,
            resume=not args.fresh,
            keep_lr="lr" not in given,
            given=set(given),
            ready=ready,
        )
    except BaseException:  # a second Ctrl-C too
        # a run that never began (bad --init-from, unreadable corpus) leaves no empty folder
        _remove_empty(made)
        raise
    if trainer.stopped_by:
        # stopped early (Ctrl-C, SIGTERM): not the model asked for, so it is not exported
        # (an --export to assets/model would replace the shipped one with it)
        _remove_empty(made)
        if args.export:
            print(
                f"stopped by {trainer.stopped_by} at step {trainer.step}: not exported; to "
                f"export it: audioseal-live export --run-dir {run_dir} --out {args.export}",
                file=sys.stderr,
            )
        return 130
    if args.export:
        _do_export(Path(cfg.run_dir) / "best.pt", Path(args.export), trainer.run_dir)
    return 0


def _do_export(checkpoint: Path, out: Path, run_dir: Path | None = None) -> None:
    from audioseal_live.training.trainer import export

    if not checkpoint.is_file() and run_dir is not None:
        checkpoint = run_dir / "last.pt"
    # --out is made once the checkpoint is read: a missing or bad one is said first
    g, d = export(checkpoint, out, ready=lambda: _check_folder(str(out), "--out"))
    print(f"exported {checkpoint} -> {g}, {d}")


def _widen(args: argparse.Namespace) -> int:
    import dataclasses
    import shutil

    from audioseal_live import AudioSeal
    from audioseal_live.models import AudioSealDetector
    from audioseal_live.models.checkpoint import save_model
    from audioseal_live.models.loader import default_model_dir
    from audioseal_live.training.widen import widen

    src, out = Path(args.model) if args.model else default_model_dir(), Path(args.out)
    _check_folder(args.out, "--out")
    det = AudioSeal.load_detector(str(src / "detector.json")).eval()
    card = det.card
    if args.detector_filters <= card.seanet.n_filters:
        raise TrainingSetupError(
            f"--detector-filters {args.detector_filters} must be more than the detector's "
            f"{card.seanet.n_filters}: widening keeps what it computes, narrowing cannot"
        )
    wide_card = card.replace(
        seanet=dataclasses.replace(card.seanet, n_filters=args.detector_filters)
    )
    wide = widen(det, AudioSealDetector(wide_card).eval(), noise=args.noise)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("generator.json", "generator.safetensors"):
        shutil.copy(src / name, out / name)
    print(f"widened detector -> {save_model(wide, wide_card, out / 'detector.json')}")
    return 0


def _export(args: argparse.Namespace) -> int:
    _not_a_file(args.out, "--out")  # made (and its writability checked) once the run is read
    if args.checkpoint:  # the file named, or an error that names it
        _do_export(Path(args.checkpoint), Path(args.out))
    else:  # the run's best, else its last
        _do_export(Path(args.run_dir) / "best.pt", Path(args.out), Path(args.run_dir))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from audioseal_live.training.evaluate import run_eval

    if args.device != "cpu":
        raise TrainingSetupError("eval runs on the CPU only (--device cpu)")
    if not args.alpha >= 0 or math.isinf(args.alpha):  # also refuses NaN
        raise SettingError(f"--alpha must be a finite strength >= 0, got {args.alpha}")
    if args.windows < 1 or args.attack_windows < 1 or args.localization < 0:
        raise SettingError("--windows and --attack-windows must be >= 1, --localization >= 0")
    _not_a_file(args.out, "--out")  # at once; made once the corpus and models are read
    made = [] if Path(args.out).is_dir() else [Path(args.out)]
    try:
        run_eval(args, ready=lambda: _check_folder(args.out, "--out"))
    except BaseException:
        # an evaluation that failed before writing (no test audio readable) leaves no folder
        _remove_empty(made)
        raise
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    # corpus: the builder module owns its options
    from audioseal_live.training import corpus

    p = subparsers.add_parser("corpus", help="build the offline training corpus (16 kHz FLAC)")
    corpus.add_arguments(p)
    p.set_defaults(func=_corpus)

    d = _train_defaults()

    def opt(field: str, help: str | None = None, kind: type = float) -> None:
        """--field-name; None when not given (a resumed run then keeps its own value), with
        TrainConfig's default for a new run said in --help."""
        shown = f"default: {d[field]}"
        p.add_argument(
            _flag(field),
            type=kind,
            default=None,
            help=f"{help} ({shown})" if help else shown,
        )

    p = subparsers.add_parser(
        "train",
        help="train a generator + detector (resumes RUN_DIR/last.pt)",
        description="Curriculum: detect -> message -> quality (masks, attacks, SNR towards "
        "26 dB). Resumes from RUN_DIR/last.pt unless --fresh: a resumed run keeps the options "
        "it was started with (the defaults below are a new run's); the options given win, "
        "each change logged, except the architecture, seed and batch size, which stay the "
        "run's. The stopping limits, --device and --threads are always this command's.",
    )
    p.add_argument(
        "--corpus",
        default=None,
        help=f"corpus folder with manifest.jsonl (default: {d['corpus']})",
    )
    p.add_argument(
        "--run-dir",
        default=d["run_dir"],
        help=f"checkpoints and log.jsonl go here (default: {d['run_dir']})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: leaves a core free for other work)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    opt("seed", kind=int)
    opt("batch_size", kind=int)
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"Adam learning rate (new run: {d['lr']}; a resumed run keeps its own unless given)",
    )
    opt("n_filters", kind=int)
    opt("dimension", kind=int)
    opt("lstm", kind=int)
    opt("max_steps", kind=int)
    opt("max_hours", "stop after this many training hours (counted over resumes)")
    opt("ckpt_minutes")
    opt("val_every", "steps between validations (0: none, and no best.pt)", kind=int)
    opt("log_every", kind=int)
    p.add_argument(
        "--max-clips", type=int, default=None, help="read at most N clips (smoke; 0: all)"
    )
    opt("snr_start")
    opt("snr_final")
    opt("snr_every", "steps between SNR target moves in the quality stage", kind=int)
    opt("bit_switch", "running bit accuracy that starts the quality stage")
    p.add_argument(
        "--start-stage",
        choices=STAGES,
        default=None,
        help=f"a new run's first stage (default: {d['start_stage']})",
    )
    # quality-stage mix: a resumed run keeps its own unless given
    opt("attack_prob")
    opt("mask_prob")
    opt("noise_negatives", "share of unmarked clips replaced by white/pink noise")
    opt("w_msg", "message loss weight")
    opt("w_msg_mean", "weight of the message loss on time-averaged bit logits")
    opt(
        "w_visible", "weight of the bit-visibility hinge (a one-bit flip must change the watermark)"
    )
    opt("visible_min", "energy share of the watermark a one-bit flip must change")
    opt(
        "w_spec_code",
        "weight of the spectral teacher code (bit k = which half of its band pair is louder)",
    )
    opt("spec_lo", "code band start, Hz")
    opt("spec_hi", "code band end, Hz")
    opt("spec_margin", "dB contrast the spectral teacher code asks of each band pair")
    opt(
        "w_template_code",
        "weight of the grid template code (bit k's template in every frame, signed)",
    )
    opt("template_margin", "correlation each bit's template must reach in the watermark")
    opt("template_lo", "band start, Hz")
    opt("template_hi", "band end, Hz")
    opt("det_lr_scale", "detector learning rate = --lr times this")
    p.add_argument(
        "--det-n-filters",
        type=int,
        default=None,
        help="detector width, if not the generator's (with --init-from: a fresh detector)",
    )
    p.add_argument(
        "--freeze-generator",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the detector alone against the generator as it is (default: off)",
    )
    opt("gen_gain_db", "with --init-from: scale the generator's watermark by this many dB")
    opt(
        "max_shift",
        "the detector sees the audio cropped by 0..N-1 samples (desynchronisation)",
        kind=int,
    )
    p.add_argument(
        "--msg-jitter",
        type=int,
        default=None,
        help="bits trained only within N samples of the frame grid (decoders search phases); "
        "elsewhere towards 'don't know' (default: bits at every shift)",
    )
    opt("w_unsync")
    opt("sync_prob")
    opt("w_mel", "mel loss weight")
    opt("w_loud", "TF-loudness loss weight")
    p.add_argument(
        "--force-stage",
        choices=STAGES,
        default=None,
        help="on resume, switch the curriculum to this stage now (logged)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start a new run, not resuming RUN_DIR/last.pt: the previous run's checkpoints "
        "and log.jsonl move to RUN_DIR/previous-<time>/",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL",
        help="a new run starts from these weights (exported folder, e.g. assets/model, or a "
        "training .pt): fine-tuning with a fresh optimizer and curriculum",
    )
    p.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="when done, export best.pt to DIR (e.g. assets/model)",
    )
    p.set_defaults(func=_train)

    p = subparsers.add_parser("export", help="write a run's weights as the shipped format")
    p.add_argument("--run-dir", default=d["run_dir"])
    p.add_argument("--checkpoint", default=None, help="default RUN_DIR/best.pt")
    p.add_argument("--out", default="assets/model")
    p.set_defaults(func=_export)

    p = subparsers.add_parser(
        "widen", help="a model folder with a wider detector that computes the same (Net2Net)"
    )
    p.add_argument("--model", help="exported model folder (default: the embedded model)")
    p.add_argument("--detector-filters", type=int, required=True, help="new n_filters")
    p.add_argument("--noise", type=float, default=0.01, help="symmetry-breaking noise (x std)")
    p.add_argument("--out", required=True, help="new model folder (generator copied)")
    p.set_defaults(func=_widen)

    p = subparsers.add_parser("eval", help="evaluate a model on the held-out test split")
    p.add_argument("--corpus", default="data/corpus")
    p.add_argument(
        "--model",
        default=None,
        help="folder with generator/detector .json+.safetensors, or a training "
        "checkpoint (.pt); default: the shipped model",
    )
    p.add_argument("--out", default="runs/eval", help="writes eval.json and eval.md here")
    p.add_argument("--windows", type=int, default=400, help="1 s test windows (max)")
    p.add_argument("--attacks", default="all", help="comma list of attack names, 'all' or 'none'")
    p.add_argument(
        "--attack-windows",
        type=int,
        default=100,
        help="windows per attack (marked + as many unmarked)",
    )
    p.add_argument("--localization", type=int, default=10, help="10 s localization examples")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--device", default="cpu", help="only cpu for now (the models are small)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--alpha",
        type=float,
        default=1.0,
        help="watermark strength, as the app's Strength (1.0 = 100 %%)",
    )
    p.set_defaults(func=_eval)


def _train_defaults() -> dict:
    # TrainConfig's defaults, read from its source so `--help` does not import torch
    import ast

    src = Path(__file__).with_name("trainer.py").read_text(encoding="utf-8")
    tree = ast.parse(src)
    out: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "TrainConfig":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    with contextlib.suppress(ValueError, TypeError):
                        out[item.target.id] = ast.literal_eval(item.value)
    return out
