"""The AudioSeal facade: ``AudioSeal.load_generator()`` / ``load_detector()``.

What a name or path may be, in the order tried:
- nothing: the embedded default model shipped in ``assets/model/``;
- an official card name (``audioseal_wm_streaming`` …): the reference's cache, or the hub;
- a ``.json`` card or ``.safetensors`` file of ours (card beside it);
- a folder holding ``generator.json`` / ``detector.json`` (our layout);
- an official ``.pth`` checkpoint (``xp.cfg`` + ``model`` / ``best_state.model``).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TypeVar

import torch

from audioseal_live.errors import CheckpointError
from audioseal_live.models.cards import OFFICIAL_CARDS, ModelCard
from audioseal_live.models.checkpoint import (
    Kind,
    card_from_config,
    convert_state_dict,
    fetch_hub_file,
    fetch_official,
    hub_file_name,
    kind_of_state,
    load_into,
    read_official,
    read_own,
)
from audioseal_live.models.detector import AudioSealDetector
from audioseal_live.models.generator import AudioSealWM

M = TypeVar("M", AudioSealWM, AudioSealDetector)

DEFAULT_MODEL_DIR = "model"


def default_model_dir() -> Path:
    """Folder of the embedded default (works from a checkout and from an installed wheel)."""
    try:
        root = Path(str(resources.files("audioseal_live_assets")))
    except ModuleNotFoundError:
        root = Path(__file__).resolve().parents[2] / "assets"
    return root / DEFAULT_MODEL_DIR


def _build(kind: Kind, card: ModelCard, source: str) -> AudioSealWM | AudioSealDetector:
    if card.kind != kind:
        raise CheckpointError(f"{card.name!r} is a {card.kind} card, but a {kind} was asked for")
    try:
        return AudioSealWM(card) if kind == "generator" else AudioSealDetector(card)
    # e.g. activation parameters the layer does not take; memory the sizes need (the card's
    # validation bounds them, but a machine may still have less)
    except (TypeError, ValueError, RuntimeError, MemoryError) as exc:
        raise CheckpointError(
            f"{source}: cannot build the model its card describes: {exc}"
        ) from None


def _check_kind(state: dict[str, torch.Tensor], kind: Kind, source: str) -> None:
    found = kind_of_state(state)
    if found is not None and found != kind:
        raise CheckpointError(f"{source} holds a {found}, but a {kind} was asked for")


def load_model(name_or_path: str | bytes | Path | None, kind: Kind, nbits: int | None = None):
    """Build a model of ``kind`` from a name or path (see the module docstring), in eval mode."""
    if isinstance(name_or_path, bytes):  # os-level paths (a name that is not UTF-8)
        name_or_path = os.fsdecode(name_or_path)
    if name_or_path is None:
        folder = default_model_dir()
        path = folder / f"{kind}.json"
        if not path.is_file():
            raise CheckpointError(
                f"the embedded default {kind} is not in this build ({path} is missing). "
                f"Pass a checkpoint path or an official card name "
                f"({', '.join(OFFICIAL_CARDS)}) instead."
            )
        return load_model(path, kind, nbits)

    text = str(name_or_path)
    if text in OFFICIAL_CARDS:
        # The reference merges {**xp.cfg, **card}: the card's nbits, seanet and
        # decoder/detector sections replace the file's, which is all a model is built from.
        card = OFFICIAL_CARDS[text]
        path = fetch_official(card)
        _, state = read_official(path)
        return _finish(_build(kind, card, str(path)), convert_state_dict(state), str(path), kind)
    hub_file = hub_file_name(text)
    if hub_file is not None and not Path(text).exists():
        # The reference's hub-style name: that file of the hub repository, read as a path.
        name_or_path = fetch_hub_file(hub_file)

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / f"{kind}.json").is_file():
            raise CheckpointError(
                f"{path}: no {kind}.json in this folder (a model folder holds "
                f"generator.json/detector.json with their .safetensors)"
            )
        path = path / f"{kind}.json"
    if not path.exists() and path.suffix.lower() not in (".json", ".safetensors"):
        # NAME for NAME.json (or a lone NAME.safetensors, whose missing card is then named)
        for ext in (".json", ".safetensors"):
            if path.with_name(path.name + ext).is_file():
                path = path.with_name(path.name + ext)
                break
    if not path.exists():
        raise CheckpointError(
            f"{name_or_path}: no such file or folder, and not an official card name "
            f"({', '.join(OFFICIAL_CARDS)})"
        )
    if path.suffix.lower() in (".json", ".safetensors"):
        card, state = read_own(path)
        if nbits is not None and nbits != card.nbits:
            raise CheckpointError(f"{path}: the card says nbits={card.nbits}, not {nbits}")
        return _finish(_build(kind, card, str(path)), state, str(path), kind)

    cfg, state = read_official(path)
    state = convert_state_dict(state)
    _check_kind(state, kind, str(path))
    if nbits is not None and "nbits" not in cfg:
        cfg = {**cfg, "nbits": nbits}
    card = card_from_config(cfg, kind, path.stem)
    if (
        nbits is not None and nbits != card.nbits
    ):  # as for our own format (the reference ignores it)
        raise CheckpointError(f"{path}: its config says nbits={card.nbits}, not {nbits}")
    return _finish(_build(kind, card, str(path)), state, str(path), kind)


def _finish(model: M, state: dict[str, torch.Tensor], source: str, kind: Kind) -> M:
    _check_kind(state, kind, source)
    load_into(model, state, source)
    return model.eval()


class AudioSeal:
    """Loaders with the reference's names, so its examples run with only the import changed."""

    @staticmethod
    def load_generator(
        model_card_or_path: str | Path | None = None,
        nbits: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> AudioSealWM:
        model = load_model(model_card_or_path, "generator", nbits)
        return model.to(device=device, dtype=dtype)

    @staticmethod
    def load_detector(
        model_card_or_path: str | Path | None = None,
        nbits: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> AudioSealDetector:
        model = load_model(model_card_or_path, "detector", nbits)
        return model.to(device=device, dtype=dtype)
