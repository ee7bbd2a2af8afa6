"""Official checkpoints: same outputs as the `audioseal` 0.2.0 package, loaded safely.

The reference builds random official-format checkpoints here (no hub needed); we load them
in every key layout and weight-norm spelling and compare outputs with the reference model.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from audioseal_live import AudioSeal
from audioseal_live.errors import CheckpointError
from audioseal_live.models import loader
from audioseal_live.models.cards import small_card
from audioseal_live.models.checkpoint import (
    cache_dir,
    hub_url,
    reference_cache_name,
    save_model,
)
from audioseal_live.models.generator import AudioSealWM

os.environ.setdefault("NO_TORCH_COMPILE", "1")
ref_builder = pytest.importorskip("audioseal.builder", reason="the dev extra (audioseal) is needed")
ref_loader = pytest.importorskip("audioseal.loader")
OmegaConf = pytest.importorskip("omegaconf").OmegaConf

CARDS = [
    "audioseal_wm_streaming",
    "audioseal_detector_streaming",
    "audioseal_wm_16bits",
    "audioseal_detector_16bits",
]


def reference_model(card: str, seed: int = 1):
    """A random reference model and the plain config dict its checkpoint would carry."""
    cfg = OmegaConf.to_container(ref_loader.load_local_model_config(card))
    for key in ("checkpoint", "name", "model_type"):
        cfg.pop(key)
    gen = "_wm_" in card
    config_type = ref_builder.AudioSealWMConfig if gen else ref_builder.AudioSealDetectorConfig
    create = ref_builder.create_generator if gen else ref_builder.create_detector
    torch.manual_seed(seed)
    model = create(ref_loader.AudioSeal.parse_config(dict(cfg), config_type)).eval()
    return model, cfg


def with_weight_norm(state: dict[str, torch.Tensor], spelling: str) -> dict[str, torch.Tensor]:
    """Re-express every conv weight as a (g, v) pair, v != weight, as training leaves them."""
    out = {}
    g_key, v_key = {
        "old": ("weight_g", "weight_v"),
        "parametrizations": (
            "parametrizations.weight.original0",
            "parametrizations.weight.original1",
        ),
    }[spelling]
    gen = torch.Generator().manual_seed(0)
    for key, w in state.items():
        if key.endswith("inner_conv.weight"):
            prefix = key[: -len("weight")]
            scale = torch.rand(w.shape[0], *[1] * (w.ndim - 1), generator=gen) + 0.5
            out[prefix + g_key] = torch.linalg.vector_norm(
                w, dim=tuple(range(1, w.ndim)), keepdim=True
            )
            out[prefix + v_key] = w * scale
        else:
            out[key] = w
    return out


def audiocraft_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("inner_conv.", ""): v for k, v in state.items()}


def outputs(model, x: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if hasattr(model, "get_watermark"):
            return model.get_watermark(x, message=msg)
        result, bits = model(x)
        return torch.cat([result, bits[..., None].expand(-1, -1, x.shape[-1])], 1)


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("layout", ["moshi", "audiocraft"])
@pytest.mark.parametrize("spelling", ["old", "parametrizations"])
def test_same_outputs_as_reference(tmp_path: Path, card: str, layout: str, spelling: str) -> None:
    ref, cfg = reference_model(card)
    state = with_weight_norm(ref.state_dict(), spelling)
    if layout == "audiocraft":
        state = audiocraft_layout(state)
    path = tmp_path / f"{card}.pth"
    wrapped = {"model": state} if spelling == "old" else {"best_state": {"model": state}}
    torch.save({"xp.cfg": OmegaConf.create(cfg), **wrapped}, path)

    load = AudioSeal.load_generator if "_wm_" in card else AudioSeal.load_detector
    ours = load(path)
    x = 0.1 * torch.randn(2, 1, 8000, generator=torch.Generator().manual_seed(2))
    msg = torch.randint(0, 2, (2, 16), generator=torch.Generator().manual_seed(3))
    expected = outputs(ref, x, msg)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(outputs(ours, x, msg), expected, atol=1e-5, rtol=0)

    if layout == "audiocraft" and spelling == "old":
        # The layout official checkpoints use: the reference's own loader reads it too.
        ref_load = (
            ref_loader.AudioSeal.load_generator
            if "_wm_" in card
            else ref_loader.AudioSeal.load_detector
        )
        torch.testing.assert_close(
            outputs(ours, x, msg), outputs(ref_load(str(path)).eval(), x, msg), atol=1e-5, rtol=0
        )


def test_official_card_name_uses_the_reference_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AUDIOSEAL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cache_dir() == tmp_path / "audioseal"
    with pytest.raises(CheckpointError) as info:
        AudioSeal.load_generator("audioseal_wm_streaming")
    message = str(info.value)
    assert (
        "https://huggingface.co/facebook/audioseal/resolve/main/generator_streaming.pth" in message
    )
    assert str(tmp_path / "audioseal" / "generator_streaming.pth") in message

    ref, cfg = reference_model("audioseal_wm_streaming")
    (tmp_path / "audioseal").mkdir(exist_ok=True)
    torch.save(
        {"xp.cfg": OmegaConf.create(cfg), "model": audiocraft_layout(ref.state_dict())},
        tmp_path / "audioseal" / "generator_streaming.pth",
    )
    gen = AudioSeal.load_generator("audioseal_wm_streaming")
    x = 0.1 * torch.randn(1, 1, 3200)
    msg = torch.randint(0, 2, (1, 16))
    torch.testing.assert_close(outputs(gen, x, msg), outputs(ref, x, msg), atol=1e-5, rtol=0)


@pytest.mark.parametrize("where", ["in seanet", "top level"])
def test_an_official_card_name_uses_the_cards_sections_as_the_reference_does(
    tmp_path: Path, monkeypatch, where: str
) -> None:
    """The reference builds from {**xp.cfg, **card}: a cached file whose config has another
    decoder loads with the card's decoder (its nbits and seanet too) by card name."""
    monkeypatch.setenv("AUDIOSEAL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref, cfg = reference_model("audioseal_wm_streaming")
    decoder = {"final_activation": "Tanh", "final_activation_params": None, "trim_right_ratio": 0.5}
    file_cfg = copy.deepcopy(cfg)
    if where == "in seanet":  # the reference moves seanet.decoder out, as we do
        file_cfg.pop("decoder")
        file_cfg["seanet"]["decoder"] = decoder
    else:
        file_cfg["decoder"] = decoder
    cache = tmp_path / "audioseal"
    cache.mkdir()
    path = cache / "generator_streaming.pth"
    torch.save(
        {"xp.cfg": OmegaConf.create(file_cfg), "model": audiocraft_layout(ref.state_dict())}, path
    )
    # the reference looks for its download under the hash of the card's URL
    shutil.copy(path, cache / reference_cache_name(hub_url("generator_streaming.pth")))

    ours = AudioSeal.load_generator("audioseal_wm_streaming")
    theirs = ref_loader.AudioSeal.load_generator("audioseal_wm_streaming").eval()
    assert ours.card.final_activation is None and ours.card.trim_right_ratio == 1.0
    assert ours.card.streamable
    x = 0.1 * torch.randn(2, 1, 8000, generator=torch.Generator().manual_seed(2))
    msg = torch.randint(0, 2, (2, 16), generator=torch.Generator().manual_seed(3))
    expected = outputs(theirs, x, msg)
    torch.testing.assert_close(outputs(ours, x, msg), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs(ref, x, msg), expected, atol=1e-5, rtol=0)

    # Read as a path, the file's own config describes it (the reference's too).
    by_path = AudioSeal.load_generator(path)
    assert by_path.card.final_activation == "Tanh" and by_path.card.trim_right_ratio == 0.5
    theirs_by_path = ref_loader.AudioSeal.load_generator(str(path)).eval()
    torch.testing.assert_close(
        outputs(by_path, x, msg), outputs(theirs_by_path, x, msg), atol=1e-5, rtol=0
    )


def test_cache_dir_order(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AUDIOSEAL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "audioseal"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "audioseal"


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Exploit.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    Exploit.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"xp.cfg": {}, "model": {}}, f)
    torch.save({"xp.cfg": {"seanet": {}}, "model": {}, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        AudioSeal.load_generator(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_mismatched_checkpoints(tmp_path: Path) -> None:
    ref, cfg = reference_model("audioseal_wm_streaming")
    good = tmp_path / "good.pth"
    torch.save({"xp.cfg": OmegaConf.create(cfg), "model": ref.state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth.*(truncated|corrupt)"):
        AudioSeal.load_generator(truncated)

    with pytest.raises(CheckpointError, match="holds a generator"):
        AudioSeal.load_detector(good)
    with pytest.raises(CheckpointError, match="good.pth: its config says nbits=16, not 32"):
        AudioSeal.load_generator(good, nbits=32)

    cfg_small = {**cfg, "seanet": {**cfg["seanet"], "n_filters": 16}}
    wrong = tmp_path / "wrong.pth"
    torch.save({"xp.cfg": OmegaConf.create(cfg_small), "model": ref.state_dict()}, wrong)
    with pytest.raises(CheckpointError, match="wrong.pth: weights do not match.*shape"):
        AudioSeal.load_generator(wrong)

    with pytest.raises(CheckpointError, match="no such file"):
        AudioSeal.load_generator(tmp_path / "missing.pth")

    text = tmp_path / "notes.wav"  # some other file: not "refused as unsafe"
    text.write_text("garbage")
    with pytest.raises(CheckpointError, match="notes.wav: not a PyTorch checkpoint"):
        AudioSeal.load_detector(text)


def test_interpolations_in_the_config_resolve(tmp_path: Path) -> None:
    ref, cfg = reference_model("audioseal_wm_streaming")
    cfg = {**cfg, "dim": 128, "seanet": {**cfg["seanet"], "dimension": "${dim}"}}
    path = tmp_path / "interp.pth"
    torch.save({"xp.cfg": OmegaConf.create(cfg), "model": ref.state_dict()}, path)
    assert AudioSeal.load_generator(path).card.seanet.dimension == 128


def test_own_format_round_trip_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    card = small_card("generator", name="tiny")
    model = AudioSealWM(card).eval()
    path = save_model(model, card, tmp_path / "gen")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded = AudioSeal.load_generator(path.with_suffix(".json"))
    x, msg = 0.1 * torch.randn(1, 1, 1600), torch.randint(0, 2, (1, 16))
    torch.testing.assert_close(outputs(loaded, x, msg), outputs(model, x, msg), atol=0, rtol=0)

    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="gen.safetensors"):
        AudioSeal.load_generator(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="model card gen.json is missing"):
        AudioSeal.load_generator(path)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("pad_mode", "circular", "not a valid model card: seanet.pad_mode: 'circular' is not"),
        ("activation_params", {"beta": 1.0}, "cannot build"),
        ("n_filters", 8.0, "seanet.n_filters: must be an integer in [1, 512], not 8.0"),
        ("lstm", -1, "seanet.lstm: must be an integer in [0, 4], not -1"),
        ("causal", "no", "seanet.causal: must be true or false, not 'no'"),
    ],
)
def test_a_card_that_describes_no_model_is_a_clear_error(
    tmp_path: Path, field: str, value: object, says: str
) -> None:
    import json

    card = small_card("generator", name="tiny")
    path = save_model(AudioSealWM(card), card, tmp_path / "gen").with_suffix(".json")
    data = json.loads(path.read_text())
    data["seanet"][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=f"gen.json: .*{re.escape(says)}"):
        AudioSeal.load_generator(path)


def test_an_old_format_checkpoint_cut_short_is_a_clear_error(tmp_path: Path) -> None:
    card = small_card("generator")
    state = AudioSealWM(card).state_dict()
    old = tmp_path / "old.pth"
    torch.save({"xp.cfg": {}, "model": state}, old, _use_new_zipfile_serialization=False)
    for size in (200, old.stat().st_size // 2):
        cut = tmp_path / f"cut{size}.pth"
        cut.write_bytes(old.read_bytes()[:size])
        with pytest.raises(CheckpointError, match=f"cut{size}.pth: not a readable checkpoint"):
            AudioSeal.load_generator(cut)


def test_config_references_resolve_once_and_cycles_are_refused(tmp_path: Path) -> None:
    """A few hundred bytes of nested references must not take exponential time, and a
    reference to itself is named, with the file."""
    import time

    from audioseal_live.models.safe_unpickle import resolve_interpolations

    bomb: dict[str, object] = {f"a{i}": [f"${{a{i + 1}}}"] * 10 for i in range(12)}
    bomb["a12"] = "leaf"
    t0 = time.perf_counter()
    out = resolve_interpolations(bomb)
    assert time.perf_counter() - t0 < 1.0 and out["a11"] == ["leaf"] * 10
    with pytest.raises(ValueError, match="cycle"):
        resolve_interpolations({"x": "${y}", "y": "${x}"})
    state = AudioSealWM(small_card("generator")).state_dict()
    path = tmp_path / "cycle.pth"
    torch.save({"xp.cfg": {"x": "${x}"}, "model": state}, path)
    with pytest.raises(CheckpointError, match="cycle.pth: its config cannot be read.*cycle"):
        AudioSeal.load_generator(path)


def test_missing_default_model_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(loader, "default_model_dir", lambda: tmp_path)
    with pytest.raises(CheckpointError, match="embedded default generator is not in this build"):
        AudioSeal.load_generator()
