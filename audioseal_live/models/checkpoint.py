"""Finding, reading and converting checkpoints: official .pth files and our safetensors.

Official checkpoints (``xp.cfg`` + ``model`` or ``best_state.model``) come in two key layouts
(audiocraft: ``….conv.conv.weight``; moshi: ``….conv.conv.inner_conv.weight``) and two
weight-norm spellings (``weight_g``/``weight_v`` or ``parametrizations.weight.original0/1``).
All are converted to our plain layout with weight norm folded, once, at load time.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import struct
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from audioseal_live.errors import CheckpointError
from audioseal_live.models.cards import HUB_REPO, ModelCard, SEANetCard
from audioseal_live.models.safe_unpickle import SAFE_GLOBALS, resolve_interpolations, to_plain

log = logging.getLogger(__name__)

Kind = Literal["generator", "detector"]


# --- where official checkpoints live -------------------------------------------------------
def cache_dir() -> Path:
    """The reference's cache: $AUDIOSEAL_CACHE_DIR, $XDG_CACHE_HOME or ~/.cache, then /audioseal."""
    for env in ("AUDIOSEAL_CACHE_DIR", "XDG_CACHE_HOME"):
        value = os.environ.get(env)
        if value:
            return Path(value).expanduser() / "audioseal"
    return Path("~/.cache").expanduser() / "audioseal"


def hub_url(filename: str) -> str:
    return f"https://huggingface.co/{HUB_REPO}/resolve/main/{filename}"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick look before downloading: offline, the hub client retries for ~40 s."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def fetch_official(card: ModelCard) -> Path:
    """The cached file of an official card, downloaded from the hub when possible."""
    assert card.checkpoint is not None
    target = cache_dir() / card.checkpoint
    if target.is_file():
        return target
    reason = "the optional 'hub' extra (huggingface_hub) is not installed"
    try:
        import huggingface_hub  # noqa: PLC0415 - optional dependency

        if not _hub_reachable():
            raise ConnectionError("huggingface.co cannot be reached (offline?)")

        target.parent.mkdir(parents=True, exist_ok=True)
        path = huggingface_hub.hf_hub_download(
            repo_id=HUB_REPO, filename=card.checkpoint, local_dir=target.parent
        )
        return Path(path)
    except ImportError:
        pass
    except Exception as exc:  # offline, gated repo, HTTP error: explain what to do by hand
        reason = f"the download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    raise CheckpointError(
        f"official checkpoint {card.name!r} is not in the cache and {reason}. "
        f"Download {hub_url(card.checkpoint)} and save it as {target} "
        f"(or set AUDIOSEAL_CACHE_DIR to the folder holding {card.checkpoint})."
    )


# --- reading official .pth files safely ----------------------------------------------------
def read_official(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config dict, state dict) of an official checkpoint, refusing anything but data."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with path.open("rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..), older torch a pickle (protocol opcode 0x80):
    # anything else is some other file, not a checkpoint to refuse as unsafe.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (.pth) nor a model folder: an official "
            "checkpoint, or a folder with generator.json/detector.json + .safetensors"
        )
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln]
        first = lines[0].replace("WeightsUnpickler error: ", "") if lines else "unsupported content"
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects beyond tensors and a "
            f"config ({first[:300]}). Such a pickle could run code; only trusted official "
            f"checkpoints in the documented format are accepted."
        ) from None
    except (
        zipfile.BadZipFile,
        EOFError,
        RuntimeError,
        ValueError,
        OSError,
        struct.error,  # an old-format (non-zip) file cut short in its header
        KeyError,
        IndexError,
        TypeError,
    ) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(ckpt).__name__}")
    try:
        cfg = resolve_interpolations(to_plain(ckpt.get("xp.cfg", {})) or {})
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: its config cannot be read: {exc}") from None
    if "best_state" in ckpt:
        best = ckpt["best_state"]
        state = best.get("model", best) if isinstance(best, dict) else best
    else:
        state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors under 'model' or 'best_state'")
    return cfg, state


def card_from_config(cfg: dict[str, Any], kind: Kind, name: str) -> ModelCard:
    """An official ``xp.cfg`` → ModelCard, with the reference's patches applied."""
    if "seanet" not in cfg or not isinstance(cfg["seanet"], dict):
        raise CheckpointError(f"{name}: the checkpoint config has no 'seanet' section")
    seanet = dict(cfg["seanet"])
    sections = {k: dict(cfg.get(k) or {}) for k in ("encoder", "decoder", "detector")}
    for key in sections:  # the reference moves these out of seanet
        if isinstance(seanet.get(key), dict):
            sections[key].update(seanet.pop(key))
    allowed = {f.name for f in fields(SEANetCard)}
    seanet = {k: v for k, v in seanet.items() if k in allowed}
    try:
        card = ModelCard(
            name=name,
            kind=kind,
            nbits=int(cfg.get("nbits", 16)),
            sample_rate=int(cfg.get("sample_rate", 16000)),
            seanet=SEANetCard(**seanet),
            final_activation=sections["decoder"].get("final_activation"),
            final_activation_params=sections["decoder"].get("final_activation_params"),
            trim_right_ratio=float(sections["decoder"].get("trim_right_ratio", 1.0)),
            output_dim=int(sections["detector"].get("output_dim", 32)),
        )
        card.seanet.ratios = [int(r) for r in card.seanet.ratios]
        return card.validate()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{name}: the checkpoint config does not describe a model: {exc}"
        ) from None


# --- key layouts and weight norm -------------------------------------------------------------
_RENAMES = [
    (re.compile(r"\.conv\.conv\.(inner_conv\.)?"), ".conv."),
    (re.compile(r"\.convtr\.convtr\.(inner_conv\.)?"), ".convtr."),
    (re.compile(r"reverse_convolution\.(?!convtr\.)"), "reverse_convolution.convtr."),
]
_WN = {
    "weight_g": "g",
    "weight_v": "v",
    "parametrizations.weight.original0": "g",
    "parametrizations.weight.original1": "v",
}


def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official (audiocraft or moshi layout, any weight-norm spelling) → our keys, folded."""
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        renamed[key] = value
    return fold_weight_norm_tensors(renamed)


def fold_weight_norm_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Replace each (g, v) pair by ``weight = g * v / ||v||`` (norm over all dims but 0)."""
    out: dict[str, Tensor] = {}
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        for suffix, role in _WN.items():
            if key.endswith("." + suffix):
                pairs.setdefault(key[: -len(suffix) - 1], {})[role] = value
                break
        else:
            out[key] = value
    for prefix, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            raise CheckpointError(f"weight norm of {prefix!r} is incomplete (found {sorted(pair)})")
        out[prefix + ".weight"] = torch._weight_norm(pair["v"].float(), pair["g"].float(), 0)
    return out


def fold_weight_norm(model: nn.Module) -> nn.Module:
    """Remove weight-norm parametrisations in place (after training), keeping the weights."""
    from torch.nn.utils import parametrize  # noqa: PLC0415

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def kind_of_state(state: dict[str, Tensor]) -> Kind | None:
    if any(k.startswith("detector.") for k in state):
        return "detector"
    if any(k.startswith("encoder.") for k in state):
        return "generator"
    return None


def load_into(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Strict load with a readable report of missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:3])})")
        raise CheckpointError(f"{source}: weights do not match the model card: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# --- our own format: safetensors + JSON card -----------------------------------------------
def save_model(model: nn.Module, card: ModelCard, path: str | Path) -> Path:
    """Write ``NAME.safetensors`` and the card ``NAME.json`` beside it."""
    from safetensors.torch import save_file  # noqa: PLC0415

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "audioseal-live", "kind": card.kind})
    card.replace(checkpoint=path.name).save(path.with_suffix(".json"))
    return path


def read_own(path: Path) -> tuple[ModelCard, dict[str, Tensor]]:
    """Card and weights from ``NAME.json`` / ``NAME.safetensors`` (either path may be given)."""
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise CheckpointError(f"{path}: its model card {card_path.name} is missing beside it")
    try:
        card = ModelCard.load(card_path)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{card_path}: not a valid model card: {exc}") from None
    weights = card_path.parent / (card.checkpoint or path.with_suffix(".safetensors").name)
    if not weights.is_file():
        raise CheckpointError(f"{card_path}: its weights file {weights.name} is missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights}: not a readable safetensors file (truncated?): {exc}"
        ) from None
    return card, state
