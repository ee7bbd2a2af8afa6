"""Which files a name or path loads, and one-line errors for files we cannot use.

No reference package needed: the official-format checkpoints here hold our own weights (plain
keys pass the layout conversion unchanged). Comparisons with the reference are in
test_checkpoints.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from audioseal_live import AudioSeal
from audioseal_live.errors import CheckpointError
from audioseal_live.models import loader
from audioseal_live.models.cards import OFFICIAL_CARDS, ModelCard, small_card
from audioseal_live.models.checkpoint import hub_url, reference_cache_name, save_model
from audioseal_live.models.detector import AudioSealDetector
from audioseal_live.models.generator import AudioSealWM


def first_weight(model: torch.nn.Module) -> torch.Tensor:
    return next(iter(model.state_dict().values()))


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, AudioSealWM, AudioSealWM]:
    """generator.json/.safetensors (model A) and A's card copied as mine.json beside
    mine.safetensors holding model B (other weights): a user's fine-tuned copy."""
    torch.manual_seed(0)
    card = small_card("generator", name="tiny")
    a = AudioSealWM(card).eval()
    b = AudioSealWM(card).eval()
    assert not torch.equal(first_weight(a), first_weight(b))
    save_model(a, card, tmp_path / "generator")
    save_model(b, card, tmp_path / "other")
    shutil.move(tmp_path / "other.safetensors", tmp_path / "mine.safetensors")
    (tmp_path / "other.json").unlink()
    shutil.copy(tmp_path / "generator.json", tmp_path / "mine.json")  # says generator.safetensors
    return tmp_path, a, b


# --- 1. the path given is the file that loads ------------------------------------------------
def test_the_path_given_loads_not_the_file_a_copied_card_names(pair) -> None:
    folder, a, b = pair
    for given in ("mine.safetensors", "mine.json", "mine"):  # a stem finds mine.json
        loaded = AudioSeal.load_generator(folder / given)
        assert torch.equal(first_weight(loaded), first_weight(b)), given
    assert torch.equal(first_weight(AudioSeal.load_generator(folder)), first_weight(a))


def test_a_renamed_pair_loads(pair) -> None:
    folder, a, _ = pair
    renamed = folder / "renamed"
    renamed.mkdir()
    shutil.copy(folder / "generator.json", renamed / "mygen.json")
    shutil.copy(folder / "generator.safetensors", renamed / "mygen.safetensors")
    for given in ("mygen.json", "mygen.safetensors", "mygen"):
        loaded = AudioSeal.load_generator(renamed / given)
        assert torch.equal(first_weight(loaded), first_weight(a)), given


def test_without_same_stem_weights_the_cards_checkpoint_field_is_used(pair) -> None:
    folder, a, b = pair
    (folder / "mine.safetensors").unlink()
    loaded = AudioSeal.load_generator(folder / "mine.json")  # its field: generator.safetensors
    assert torch.equal(first_weight(loaded), first_weight(a))

    (folder / "generator.safetensors").unlink()
    message = (
        f"mine.json: its weights are missing: neither mine.safetensors beside it nor "
        f"{folder / 'generator.safetensors'} (its 'checkpoint' field) is a file"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        AudioSeal.load_generator(folder / "mine.json")
    with pytest.raises(CheckpointError, match="generator.json: its weights file generator"):
        AudioSeal.load_generator(folder)


# --- 2. official card names: the reference's cache names ---------------------------------------
def official_file(path: Path, card_name: str, cfg: dict[str, Any] | None = None) -> torch.nn.Module:
    """An official-format checkpoint (xp.cfg + model) of random weights for card_name."""
    card = OFFICIAL_CARDS[card_name]
    torch.manual_seed(1)
    model = (AudioSealWM if card.kind == "generator" else AudioSealDetector)(card).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"xp.cfg": cfg or {"seanet": {}}, "model": model.state_dict()}, path)
    return model


def test_reference_cache_name_is_the_hash_of_the_url_path() -> None:
    # The name audioseal 0.2.0 gave generator_streaming.pth in its cache (torch.hub).
    assert reference_cache_name(hub_url("generator_streaming.pth")) == "6f6ad9ccffc94f0322021221"


@pytest.mark.parametrize("card_name", list(OFFICIAL_CARDS))
def test_card_name_finds_the_file_the_reference_cached(
    tmp_path: Path, monkeypatch, card_name: str
) -> None:
    monkeypatch.setenv("AUDIOSEAL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card = OFFICIAL_CARDS[card_name]
    assert card.checkpoint is not None
    hashed = tmp_path / "audioseal" / reference_cache_name(hub_url(card.checkpoint))
    model = official_file(hashed, card_name)
    load = AudioSeal.load_generator if card.kind == "generator" else AudioSeal.load_detector
    assert torch.equal(first_weight(load(card_name)), first_weight(model))


def test_hub_style_names_and_the_offline_advice(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AUDIOSEAL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "facebook/audioseal/generator_streaming.pth"
    with pytest.raises(CheckpointError) as info:
        AudioSeal.load_generator(name)
    assert "set AUDIOSEAL_CACHE_DIR to a folder whose audioseal/ subfolder holds " in str(
        info.value
    )
    assert str(tmp_path / "audioseal" / "generator_streaming.pth") in str(info.value)

    # As in the reference, the hub file is read like a path: its own xp.cfg describes it.
    cfg = {"seanet": {"causal": True}, "decoder": {"final_activation": "Tanh"}}
    model = official_file(
        tmp_path / "audioseal" / "generator_streaming.pth", "audioseal_wm_streaming", cfg
    )
    loaded = AudioSeal.load_generator(name)
    assert torch.equal(first_weight(loaded), first_weight(model))
    assert loaded.card.final_activation == "Tanh"


# --- 3. files we may not read ---------------------------------------------------------------
@pytest.fixture
def unreadable(monkeypatch):
    """Make chosen paths raise PermissionError on open (tests run as root, where chmod 0 does
    not stop reading)."""
    denied: set[Path] = set()
    real_open = io.open

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) in denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", fake_open)
    return denied


@pytest.mark.parametrize("which", ["mine.json", "mine.safetensors"])
@pytest.mark.parametrize("given", ["mine.json", "mine.safetensors"])
def test_an_unreadable_card_or_weights_file_says_permission_denied(
    pair, unreadable, which: str, given: str
) -> None:
    folder = pair[0]
    unreadable.add(folder / which)
    message = f"{folder / which}: cannot read it: permission denied"
    with pytest.raises(CheckpointError, match=re.escape(message) + "$"):
        AudioSeal.load_generator(folder / given)


def test_an_unreadable_official_checkpoint_says_permission_denied(
    tmp_path: Path, unreadable
) -> None:
    path = tmp_path / "gen.pth"
    official_file(path, "audioseal_wm_streaming")
    unreadable.add(path)
    with pytest.raises(
        CheckpointError, match=re.escape(f"{path}: cannot read it: permission denied")
    ):
        AudioSeal.load_generator(path)


def test_mode_000_files_say_permission_denied(pair, tmp_path: Path) -> None:
    """Runs where mode bits bind: not as plain root (``setpriv --bounding-set
    -dac_override,-dac_read_search -- python -m pytest ...`` makes root a user here)."""
    folder = pair[0]
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        probe.read_text()
        pytest.skip("this process reads files whatever their mode (root)")
    except PermissionError:
        pass
    path = tmp_path / "gen.pth"
    official_file(path, "audioseal_wm_streaming")
    for target, given in (
        (path, path),
        (folder / "mine.json", folder / "mine.json"),
        (folder / "mine.safetensors", folder / "mine.safetensors"),
    ):
        target.chmod(0)
        try:
            with pytest.raises(CheckpointError, match="cannot read it: permission denied"):
                AudioSeal.load_generator(given)
        finally:
            target.chmod(0o644)


# --- 4. tampered cards ----------------------------------------------------------------------
def tampered(folder: Path, change) -> Path:
    path = folder / "mine.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def put(section: str | None, key: str, value: object):
    def change(data: dict) -> None:
        (data[section] if section else data)[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (put(None, "seanet", [1, 2]), "seanet: must be an object, not list"),
        (put(None, "checkpoint", 5), "checkpoint: must be a file name, not 5"),
        (
            put("seanet", "dimension", 10**9),
            "seanet.dimension: must be an integer in [1, 2048], not 1000000000",
        ),
        (put("seanet", "n_filters", 10**6), "seanet.n_filters: must be an integer in [1, 512]"),
        (put("seanet", "lstm", 1000), "seanet.lstm: must be an integer in [0, 4]"),
        (put(None, "output_dim", 10**7), "output_dim: must be an integer in [1, 1024]"),
        (
            put("seanet", "ratios", "8542"),
            "seanet.ratios: must be a list of 1 to 8 integers in [1, 32], not '8542'",
        ),
        (
            put("seanet", "ratios", [8.5, 5, 4, 2]),
            "seanet.ratios: must be a list of 1 to 8 integers in [1, 32], not [8.5, 5, 4, 2]",
        ),
        (put("seanet", "ratios", [8, 5, 0, 2]), "seanet.ratios: must be a list"),
        (
            put("seanet", "ratios", [32, 32, 32]),
            "seanet.ratios: their product (the hop) must be at most 8192, not 32768",
        ),
        (
            put(None, "sample_rate", -16000),
            "sample_rate: must be an integer in [1, 384000], not -16000",
        ),
        (put(None, "sample_rate", 0), "sample_rate: must be an integer in [1, 384000], not 0"),
        (put(None, "nbits", "16"), "nbits: must be an integer in [0, 64], not '16'"),
        (put(None, "kind", "encoder"), "kind: must be 'generator' or 'detector', not 'encoder'"),
        (put(None, "name", 5), "name: must be a string, not 5"),
        (
            put(None, "trim_right_ratio", "1"),
            "trim_right_ratio: must be a number in [0, 1], not '1'",
        ),
        (put(None, "bogus", 1), "bogus: not a model card field"),
        (lambda d: d.pop("kind"), "kind: missing"),
        # each size within its bound, together 100 GB of weights
        (put("seanet", "ratios", [2] * 8), "seanet: its sizes describe a model of "),
    ],
)
def test_a_tampered_card_names_the_field_and_the_problem(pair, change, says: str) -> None:
    path = tampered(pair[0], change)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: not a valid model card: {says}")):
        AudioSeal.load_generator(path)


def test_a_card_file_that_is_not_a_json_object(pair) -> None:
    path = pair[0] / "mine.json"
    for text, says in (
        ("[1, 2]", "must be a JSON object, not list"),
        ("null", "must be a JSON object, not NoneType"),
        ("{nope", "not JSON"),
        ("[" * 100_000, "not JSON"),
    ):
        path.write_text(text)
        with pytest.raises(
            CheckpointError, match=re.escape(f"{path}: not a valid model card: {says}")
        ):
            AudioSeal.load_generator(path)
    path.write_bytes(b'{"name": "\xe9"}')
    with pytest.raises(CheckpointError, match="not a valid model card: not UTF-8 text"):
        AudioSeal.load_generator(path)


def test_an_official_config_with_fractional_ratios_is_refused_not_truncated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gen.pth"
    official_file(
        path, "audioseal_wm_16bits", {"seanet": {"causal": False, "ratios": [8.0, 5.0, 4.0, 2.0]}}
    )
    assert AudioSeal.load_generator(path).card.seanet.ratios == [8, 5, 4, 2]
    official_file(
        path, "audioseal_wm_16bits", {"seanet": {"causal": False, "ratios": [8.5, 5, 4, 2]}}
    )
    with pytest.raises(
        CheckpointError,
        match=r"gen: the checkpoint config does not describe a model: seanet.ratios: "
        r"must be a list .*not \[8.5, 5, 4, 2\]",
    ):
        AudioSeal.load_generator(path)
    official_file(path, "audioseal_wm_16bits", {"seanet": {"causal": False}, "decoder": [1]})
    with pytest.raises(
        CheckpointError, match="gen: the checkpoint config's 'decoder' section is a list"
    ):
        AudioSeal.load_generator(path)


@pytest.mark.parametrize(
    "card",
    [
        *OFFICIAL_CARDS.values(),
        small_card("generator"),
        small_card("detector"),
        small_card("generator", n_residual_layers=2, true_skip=False, compress=4, lstm=0),
        small_card("detector", ratios=[4, 4, 5, 4]).replace(nbits=0),
    ],
    ids=lambda card: card.name,
)
def test_parameter_count_is_exact(card: ModelCard) -> None:
    model = (AudioSealWM if card.kind == "generator" else AudioSealDetector)(card)
    assert card.parameter_count() == sum(p.numel() for p in model.parameters())


def test_a_model_too_big_for_the_machine_is_a_checkpoint_error(pair, monkeypatch) -> None:
    def no_memory(card: ModelCard) -> AudioSealWM:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: not enough memory"
        )

    monkeypatch.setattr(loader, "AudioSealWM", no_memory)
    with pytest.raises(
        CheckpointError,
        match="mine.json: cannot build the model its card describes: .*not enough memory",
    ):
        AudioSeal.load_generator(pair[0] / "mine.json")


def test_a_path_given_as_bytes_loads() -> None:
    """os-level paths (os.fsencode, a name that is not UTF-8) raised TypeError."""
    import os

    from audioseal_live import AudioSeal
    from audioseal_live.models.loader import default_model_dir

    gen = AudioSeal.load_generator(os.fsencode(default_model_dir() / "generator.json"))
    assert gen.nbits == 16
