"""`audioseal-live eval`: measure a generator + detector on the held-out test split.

Everything is on 1 s windows cut from test clips (never seen in training: the corpus splits by
source file and by whole voice). A window's detection score is its mean per-sample P(marked);
"accuracy at 0.5" thresholds that score at 0.5. Messages are decoded the way users decode
them (sigmoid of the time-averaged bit logits > 0.5).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from audioseal_live.errors import SettingError
from audioseal_live.models.detector import AudioSealDetector
from audioseal_live.models.generator import AudioSealWM
from audioseal_live.training.data import SAMPLE_RATE, read_audio, read_manifest, require_split
from audioseal_live.training.losses import si_snr_db

log = logging.getLogger(__name__)

TARGETS = {"si_snr_db": 26.0, "tpr_at_fpr1": 0.99, "exact_match": 0.95}


# --------------------------------------------------------------------------------------------
# models and windows


def load_models(model: str | None) -> tuple[AudioSealWM, AudioSealDetector]:
    """Shipped default (None), a folder/card of ours, or a training checkpoint (.pt)."""
    if model is not None and str(model).endswith(".pt"):
        from audioseal_live.training.trainer import models_from_checkpoint

        return models_from_checkpoint(model)
    from audioseal_live.models.loader import load_model

    return load_model(model, "generator").eval(), load_model(model, "detector").eval()


def test_windows(
    corpus: str | Path, seed: int, max_windows: int, kinds: tuple[str, ...]
) -> tuple[Tensor, list[str]]:
    """Up to max_windows non-overlapping 1 s windows of the test split, drawn reproducibly."""
    entries = read_manifest(corpus, "test", kinds)
    windows: list[np.ndarray] = []
    labels: list[str] = []
    unreadable: list[Path] = []
    for e in entries:
        try:
            audio = read_audio(e.path)
        except (OSError, RuntimeError):
            unreadable.append(e.path)
            continue
        for start in range(0, len(audio) - SAMPLE_RATE + 1, SAMPLE_RATE):
            w = audio[start : start + SAMPLE_RATE]
            if np.sqrt(np.mean(w**2)) > 1e-3:  # -60 dBFS: silence is tested on its own
                windows.append(w)
                labels.append(e.kind)
    if unreadable:  # the table would silently lose rows (a kind whose files are gone)
        log.warning(
            "%d of %d test files could not be read (first: %s): the figures leave them out; "
            "rebuild the corpus to test on all of them",
            len(unreadable),
            len(entries),
            unreadable[0],
        )
    if not windows:
        return torch.zeros(0, 1, SAMPLE_RATE), []
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(windows))[:max_windows]
    pick.sort()
    x = torch.from_numpy(np.stack([windows[i] for i in pick]))[:, None, :]
    return x, [labels[i] for i in pick]


@torch.inference_mode()
def embed(gen: AudioSealWM, x: Tensor, msg: Tensor, batch: int = 16, alpha: float = 1.0) -> Tensor:
    out = [
        gen(x[i : i + batch], message=msg[i : i + batch], alpha=alpha)
        for i in range(0, len(x), batch)
    ]
    return torch.cat(out) if out else x


@torch.inference_mode()
def detect(det: AudioSealDetector, x: Tensor, batch: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    """Window scores (N,), decoded bits (N, nbits), per-sample P(marked) (N, T)."""
    scores, bits, per_sample = [], [], []
    for i in range(0, len(x), batch):
        probs, msg = det(x[i : i + batch])
        per_sample.append(probs[:, 1])
        scores.append(probs[:, 1].mean(-1))
        bits.append((msg > 0.5).long())
    return torch.cat(scores), torch.cat(bits), torch.cat(per_sample)


# --------------------------------------------------------------------------------------------
# measures


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve (probability a marked window outscores an unmarked one)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    # average ranks of ties
    for v in np.unique(allv):
        tie = allv == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> tuple[float, float]:
    """TPR at the smallest threshold whose FPR on `neg` is <= fpr; returns (tpr, threshold)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    allowed = int(math.floor(fpr * len(neg)))  # unmarked windows allowed above the threshold
    neg_sorted = np.sort(neg)[::-1]
    thr = float(neg_sorted[allowed]) if allowed < len(neg) else -math.inf
    return float((pos > thr).mean()), thr


def detection_figures(pos: Tensor, neg: Tensor) -> dict[str, float]:
    p, n = pos.numpy().astype(np.float64), neg.numpy().astype(np.float64)
    tpr, thr = tpr_at_fpr(p, n, 0.01)
    return {
        "tpr_at_fpr1": tpr,
        "threshold_at_fpr1": thr,
        "auc": auc(p, n),
        "tpr_at_0.5": float((p > 0.5).mean()),
        "fpr_at_0.5": float((n > 0.5).mean()),
        "acc_at_0.5": float(0.5 * ((p > 0.5).mean() + (n <= 0.5).mean())),
    }


def bit_figures(bits: Tensor, msg: Tensor, detected: Tensor | None = None) -> dict[str, float]:
    ok = bits == msg
    out = {"bit_acc": float(ok.float().mean()), "exact_match": float(ok.all(-1).float().mean())}
    if detected is not None:
        sel = ok[detected]
        out["exact_match_detected"] = float(sel.all(-1).float().mean()) if len(sel) else math.nan
    return out


def quality_figures(
    x: Tensor, y: Tensor, kinds: list[str], pesq_windows: int = 40
) -> dict[str, Any]:
    si = si_snr_db(x, y)
    out: dict[str, Any] = {"si_snr_db": float(si.mean()), "si_snr_db_median": float(si.median())}
    for kind in sorted(set(kinds)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        out[f"si_snr_db_{kind}"] = float(si[idx].mean())
    speech = [i for i, k in enumerate(kinds) if k in ("speech", "tts")][:pesq_windows]
    try:  # optional: only when the PyPI packages are installed
        from pesq import pesq
        from pystoi import stoi

        ps, st = [], []
        for i in speech:
            ref, deg = x[i, 0].numpy(), y[i, 0].numpy()
            # PESQ refuses some windows (no utterance detected): skip those
            with contextlib.suppress(Exception):
                ps.append(pesq(SAMPLE_RATE, ref, deg, "wb"))
            st.append(stoi(ref, deg, SAMPLE_RATE, extended=False))
        if ps:
            out["pesq_wb"] = float(np.mean(ps))
        if st:
            out["stoi"] = float(np.mean(st))
    except ImportError:  # said in the table, so that a missing row is not mistaken for a result
        out["pesq_stoi"] = "not installed (pip install 'audioseal-live[quality]')"
    return out


def localization(
    gen: AudioSealWM,
    det: AudioSealDetector,
    x: Tensor,
    count: int,
    rng: np.random.Generator,
    alpha: float = 1.0,
) -> dict[str, float]:
    """A 1-3 s marked span inside 10 s: per-sample accuracy and IoU of the marked region."""
    n = min(count, len(x) // 10)
    if n == 0:
        return {}
    accs, ious = [], []
    for k in range(n):
        host = x[10 * k : 10 * k + 10, 0].reshape(1, 1, -1)
        length = host.shape[-1]
        span = int(rng.uniform(1.0, 3.0) * SAMPLE_RATE)
        start = int(rng.integers(0, length - span))
        msg = torch.from_numpy(rng.integers(0, 2, (1, gen.nbits)))
        truth = torch.zeros(length, dtype=torch.bool)
        truth[start : start + span] = True
        with torch.inference_mode():
            wm = gen.get_watermark(host, message=msg)
            marked = host + alpha * wm * truth.float()
            probs, _ = det(marked)
        pred = probs[0, 1] > 0.5
        accs.append(float((pred == truth).float().mean()))
        union = float((pred | truth).sum())
        ious.append(float((pred & truth).sum()) / union if union else 1.0)
    return {"examples": n, "sample_acc": float(np.mean(accs)), "iou": float(np.mean(ious))}


def false_alarms(det: AudioSealDetector, corpus: str | Path, seed: int, n: int) -> dict[str, float]:
    """Share of unmarked windows detected at 0.5: digital silence, near-silence, noise, music."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    silence = torch.zeros(8, 1, SAMPLE_RATE)
    out["silence"] = float((detect(det, silence)[0] > 0.5).float().mean())
    hiss = torch.randn(n, 1, SAMPLE_RATE, generator=g) * 10 ** (-70 / 20)
    out["hiss_-70dB"] = float((detect(det, hiss)[0] > 0.5).float().mean())
    white = torch.randn(n, 1, SAMPLE_RATE, generator=g) * 10 ** (-20 / 20)
    out["white_-20dB"] = float((detect(det, white)[0] > 0.5).float().mean())
    for kind in ("noise", "music"):
        x, _ = test_windows(corpus, seed + 7, n, (kind,))
        if len(x):
            out[f"{kind}_test"] = float((detect(det, x)[0] > 0.5).float().mean())
    return out


# --------------------------------------------------------------------------------------------
# the whole evaluation


def evaluate(
    gen: AudioSealWM,
    det: AudioSealDetector,
    corpus: str | Path,
    windows: int = 400,
    attacks: list[str] | None = None,
    attack_windows: int = 100,
    localization_examples: int = 10,
    seed: int = 0,
    alpha: float = 1.0,
) -> dict[str, Any]:
    """``alpha``: the watermark's strength, as the app's Strength control (1.0 = 100 %);
    ``attacks``: names from the suite (None: all); an unknown one is an error, before any work.
    """
    from audioseal_live.training.attacks import ATTACKS

    names = list(ATTACKS) if attacks is None else known_attacks(attacks)
    t0 = time.time()
    gen.eval()
    det.eval()
    x, kinds = test_windows(corpus, seed, windows, ("speech", "tts", "music", "mix"))
    if len(x) == 0:
        from audioseal_live.training.data import CorpusMissingError

        raise CorpusMissingError(f"no test windows in {corpus}")
    rng = np.random.default_rng(seed)
    msg = torch.from_numpy(rng.integers(0, 2, (len(x), gen.nbits)))
    y = embed(gen, x, msg, alpha=alpha)
    pos, bits, _ = detect(det, y)
    neg, _, _ = detect(det, x)
    res: dict[str, Any] = {
        "windows": len(x),
        "kinds": {k: kinds.count(k) for k in set(kinds)},
        "alpha": alpha,
    }
    res["quality"] = quality_figures(x, y, kinds)
    res["clean"] = {**detection_figures(pos, neg), **bit_figures(bits, msg, pos > 0.5)}
    per_kind = {}
    for kind in sorted(set(kinds)):
        idx = torch.tensor([i for i, k in enumerate(kinds) if k == kind])
        per_kind[kind] = {
            **detection_figures(pos[idx], neg[idx]),
            **bit_figures(bits[idx], msg[idx]),
        }
    res["clean_per_kind"] = per_kind
    res["false_alarms"] = false_alarms(det, corpus, seed, 64)

    m = min(attack_windows, len(x))
    res["attacks"] = {}
    for name in names:
        fn = ATTACKS[name]
        try:
            ya = torch.cat([fn(y[i : min(i + 16, m)]) for i in range(0, m, 16)])
            xa = torch.cat([fn(x[i : min(i + 16, m)]) for i in range(0, m, 16)])
        except Exception as err:  # noqa: BLE001 - report a broken attack, keep evaluating
            res["attacks"][name] = {"error": str(err)}
            continue
        pa, ba, _ = detect(det, ya)
        na, _, _ = detect(det, xa)
        res["attacks"][name] = {**detection_figures(pa, na), **bit_figures(ba, msg[:m])}
    accs = [v["acc_at_0.5"] for k, v in res["attacks"].items() if "acc_at_0.5" in v and k != "none"]
    # None: no attack measured (--attacks none), said as such, neither a nan nor a "NO"
    res["attack_mean_acc"] = float(np.mean(accs)) if accs else None
    res["localization"] = localization(gen, det, x, localization_examples, rng, alpha)
    q, c = res["quality"], res["clean"]
    res["targets"] = {
        "si_snr_db >= 26": q["si_snr_db"] >= TARGETS["si_snr_db"],
        "tpr >= 0.99 at fpr <= 0.01": c["tpr_at_fpr1"] >= TARGETS["tpr_at_fpr1"],
        "16-bit exact match >= 0.95 (detected windows)": c["exact_match_detected"]
        >= TARGETS["exact_match"],
        "attack mean accuracy >= 0.90": (
            None if res["attack_mean_acc"] is None else res["attack_mean_acc"] >= 0.90
        ),
        "false alarms on silence/noise <= 0.01": all(
            v <= 0.01 for k, v in res["false_alarms"].items() if k != "music_test"
        ),
    }
    if "polarity" in res["attacks"] and "tpr_at_0.5" in res["attacks"]["polarity"]:
        polarity = res["attacks"]["polarity"]["tpr_at_0.5"]
        res["targets"]["polarity-inverted audio detected (TPR >= 0.99)"] = polarity >= 0.99
    res["seconds"] = round(time.time() - t0, 1)
    return res


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown(res: dict[str, Any]) -> str:
    q, c = res["quality"], res["clean"]
    lines = [
        f"Test windows: {res['windows']} × 1 s ({res['kinds']}), strength (alpha) "
        f"{res.get('alpha', 1.0):g}, eval took {res['seconds']} s",
        "",
        "| clean | value |",
        "|---|---|",
    ]
    for k, v in q.items():
        lines.append(f"| {k} | {_f(v, 2)} |")
    for k, v in c.items():
        lines.append(f"| {k} | {_f(v)} |")
    lines += [
        "",
        "| kind | TPR@FPR1% | AUC | acc@0.5 | bit acc | exact |",
        "|---|---|---|---|---|---|",
    ]
    for kind, v in res["clean_per_kind"].items():
        lines.append(
            f"| {kind} | {_f(v['tpr_at_fpr1'])} | {_f(v['auc'])} | {_f(v['acc_at_0.5'])} "
            f"| {_f(v['bit_acc'])} | {_f(v['exact_match'])} |"
        )
    lines += ["", "| false alarms (unmarked, detected at 0.5) | rate |", "|---|---|"]
    lines += [f"| {k} | {_f(v)} |" for k, v in res["false_alarms"].items()]
    lines += [
        "",
        "| attack | acc@0.5 | TPR@0.5 | FPR@0.5 | AUC | TPR@FPR1% | bit acc | exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in res["attacks"].items():
        if "error" in v:
            lines.append(f"| {name} | error: {v['error']} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {_f(v['acc_at_0.5'])} | {_f(v['tpr_at_0.5'])} | "
            f"{_f(v['fpr_at_0.5'])} | {_f(v['auc'])} | {_f(v['tpr_at_fpr1'])} | "
            f"{_f(v['bit_acc'])} | {_f(v['exact_match'])} |"
        )
    lines.append(
        f"| **mean over attacks (excl. none)** | {_f(res['attack_mean_acc'])} | | | | | | |"
    )
    loc = res["localization"]
    if loc:
        lines += [
            "",
            f"Localization (1-3 s marked inside 10 s, {loc['examples']} examples): "
            f"per-sample accuracy {_f(loc['sample_acc'])}, IoU {_f(loc['iou'])}",
        ]
    lines += ["", "| target | met |", "|---|---|"]
    met = {True: "yes", False: "NO", None: "not measured"}
    lines += [f"| {k} | {met[None if v is None else bool(v)]} |" for k, v in res["targets"].items()]
    return "\n".join(lines) + "\n"


def known_attacks(names: list[str]) -> list[str]:
    """``names``, each in the evaluation suite; else a SettingError that lists the unknown
    ones (a codec's says when this libsndfile has no encoder for it) and the known."""
    from audioseal_live.training.attacks import ATTACKS, CODECS, codec_available

    unknown = [a for a in names if a not in ATTACKS]
    if not unknown:
        return names
    codecs = [a for a in unknown if a.split("_")[0] in CODECS]
    missing = [a for a in codecs if not codec_available(a.split("_")[0])]
    why = f" ({', '.join(missing)}: no encoder in this libsndfile)" if missing else ""
    raise SettingError(f"unknown attack(s) {', '.join(unknown)}{why}; known: {', '.join(ATTACKS)}")


def run_eval(args: argparse.Namespace, ready: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """``ready``: called once the options, the corpus and the models hold, before the
    evaluation (the CLI makes --out)."""
    if args.attacks == "all":
        attacks = None
    elif args.attacks == "none":
        attacks = []
    else:  # checked before the models load
        attacks = known_attacks([a.strip() for a in args.attacks.split(",") if a.strip()])
    # the corpus and the models first: a missing one is said before --out is made
    require_split(args.corpus, "test")
    torch.set_num_threads(max(1, args.threads))
    gen, det = load_models(args.model)
    ready()
    res = evaluate(
        gen,
        det,
        args.corpus,
        args.windows,
        attacks,
        args.attack_windows,
        args.localization,
        args.seed,
        args.alpha,
    )
    res["model"] = args.model or "shipped default (assets/model)"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md = markdown(res)
    (out / "eval.md").write_text(md, encoding="utf-8")
    print(md)
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return res
