"""Finding, reading and converting checkpoints: official .pth files and our safetensors.

Official checkpoints (``xp.cfg`` + ``model`` or ``best_state.model``) come in two key layouts
(audiocraft: ``….conv.conv.weight``; moshi: ``….conv.conv.inner_conv.weight``) and two
weight-norm spellings (``weight_g``/``weight_v`` or ``parametrizations.weight.original0/1``).
All are converted to our plain layout with weight norm folded, once, at load time.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import socket
import struct
import zipfile
from dataclasses import fields
from hashlib import sha1
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from audioseal_live.errors import CheckpointError
from audioseal_live.models.cards import HUB_REPO, CardError, ModelCard, SEANetCard
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


def reference_cache_name(url: str) -> str:
    """The name the reference (audioseal 0.2.0) caches a card's URL under (torch.hub)."""
    return sha1(urlparse(url).path.encode()).hexdigest()[:24]


def hub_file_name(text: str) -> str | None:
    """``facebook/audioseal/FILE`` (the reference's hub-style names) → FILE, else None."""
    prefix = HUB_REPO + "/"
    if text.startswith(prefix) and "/" not in text[len(prefix) :] and text[len(prefix) :]:
        return text[len(prefix) :]
    return None


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
    return fetch_hub_file(card.checkpoint, repr(card.name))


def fetch_hub_file(filename: str, what: str | None = None) -> Path:
    """FILE of the official hub repository: from the cache, else downloaded when possible.

    The cache holds it under its own name (hub downloads, ours and the reference's
    ``facebook/audioseal/FILE``) or under the hash of its URL (the reference's card names).
    """
    target = cache_dir() / filename
    hashed = cache_dir() / reference_cache_name(hub_url(filename))
    for candidate in (target, hashed):
        if candidate.is_file():
            return candidate
    reason = "the optional 'hub' extra (huggingface_hub) is not installed"
    try:
        import huggingface_hub  # noqa: PLC0415 - optional dependency

        if not _hub_reachable():
            raise ConnectionError("huggingface.co cannot be reached (offline?)")

        target.parent.mkdir(parents=True, exist_ok=True)
        path = huggingface_hub.hf_hub_download(
            repo_id=HUB_REPO, filename=filename, local_dir=target.parent
        )
        return Path(path)
    except ImportError:
        pass
    except Exception as exc:  # offline, gated repo, HTTP error: explain what to do by hand
        reason = f"the download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    raise CheckpointError(
        f"official checkpoint {what or filename} is not in the cache and {reason}. "
        f"Download {hub_url(filename)} and save it as {target} "
        f"(or set AUDIOSEAL_CACHE_DIR to a folder whose audioseal/ subfolder holds {filename})."
    )


def _cannot_read(path: Path, exc: OSError) -> CheckpointError:
    why = "permission denied" if isinstance(exc, PermissionError) else exc.strerror or str(exc)
    return CheckpointError(f"{path}: cannot read it: {why}")


def _check_readable(path: Path) -> None:
    """A one-line error for a file we may not open (before a library reports it oddly)."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise _cannot_read(path, exc) from None


# --- reading official .pth files safely ----------------------------------------------------
def read_official(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config dict, state dict) of an official checkpoint, refusing anything but data."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:  # permission denied, an I/O error on a failing disk
        raise _cannot_read(path, exc) from None
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
    sections: dict[str, dict[str, Any]] = {}
    for key in ("encoder", "decoder", "detector"):
        section = cfg.get(key) or {}
        if not isinstance(section, dict):
            raise CheckpointError(
                f"{name}: the checkpoint config's {key!r} section is a "
                f"{type(section).__name__}, not a mapping"
            )
        sections[key] = dict(section)
    for key in sections:  # the reference moves these out of seanet
        if isinstance(seanet.get(key), dict):
            sections[key].update(seanet.pop(key))
    allowed = {f.name for f in fields(SEANetCard)}
    seanet = {k: v for k, v in seanet.items() if k in allowed}
    if isinstance(seanet.get("ratios"), (list, tuple)):
        seanet["ratios"] = [_as_int(r) for r in seanet["ratios"]]
    try:
        card = ModelCard(
            name=name,
            kind=kind,
            nbits=_as_int(cfg.get("nbits", 16)),
            sample_rate=_as_int(cfg.get("sample_rate", 16000)),
            seanet=SEANetCard(**seanet),
            final_activation=sections["decoder"].get("final_activation"),
            final_activation_params=sections["decoder"].get("final_activation_params"),
            trim_right_ratio=sections["decoder"].get("trim_right_ratio", 1.0),
            output_dim=_as_int(sections["detector"].get("output_dim", 32)),
        )
        return card.validate()
    except CardError as exc:
        raise CheckpointError(
            f"{name}: the checkpoint config does not describe a model: {'; '.join(exc.problems)}"
        ) from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{name}: the checkpoint config does not describe a model: {exc}"
        ) from None


def _as_int(value: Any) -> Any:
    """8.0 or "8" (configs written by hand or by omegaconf) → 8; anything else as it is,
    for the card's validation to name (8.5 must not become 8)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


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
    model.__dict__.pop("_first_param", None)  # CardModel.weights_dtype's: the weights moved
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
    """Card and weights of our format, from ``NAME.json`` or ``NAME.safetensors``.

    A ``.safetensors`` path is the file that loads (its card is NAME.json beside it). For a
    ``.json`` path the NAME.safetensors beside it wins, else the file its card's ``checkpoint``
    names: a card copied with its weights renamed still loads the weights beside it.
    """
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    given_weights = path.suffix.lower() == ".safetensors"
    card_path = path.with_suffix(".json") if given_weights else path
    if not card_path.is_file():
        raise CheckpointError(f"{path}: its model card {card_path.name} is missing beside it")
    card = load_card(card_path)
    weights = path if given_weights else _weights_of(card_path, card)
    _check_readable(weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights}: not a readable safetensors file (truncated?): {exc}"
        ) from None
    return card, state


def load_card(card_path: Path) -> ModelCard:
    """A JSON model card, or a one-line CheckpointError naming the file and the problem."""
    try:
        return ModelCard.load(card_path)
    except OSError as exc:
        raise _cannot_read(card_path, exc) from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{card_path}: not a valid model card: not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{card_path}: not a valid model card: not JSON: {exc}") from None
    except CardError as exc:
        raise CheckpointError(
            f"{card_path}: not a valid model card: {'; '.join(exc.problems)}"
        ) from None
    except (TypeError, ValueError) as exc:  # a field of the wrong type past the checks
        raise CheckpointError(f"{card_path}: not a valid model card: {exc}") from None


def _weights_of(card_path: Path, card: ModelCard) -> Path:
    beside = card_path.with_suffix(".safetensors")
    if beside.is_file():
        return beside
    if card.checkpoint and card_path.parent / card.checkpoint != beside:
        named = card_path.parent / card.checkpoint
        if named.is_file():
            return named
        raise CheckpointError(
            f"{card_path}: its weights are missing: neither {beside.name} beside it nor "
            f"{named} (its 'checkpoint' field) is a file"
        )
    raise CheckpointError(f"{card_path}: its weights file {beside.name} is missing beside it")
