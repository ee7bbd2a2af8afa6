"""Losses, masks, trainer (loss goes down, exact resume), export and eval on a tiny corpus."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import Tensor

from audioseal_live.training import losses as L
from audioseal_live.training.trainer import TrainConfig, Trainer, export, summarize

SR = 16000


def _clip(rng: np.random.Generator, kind: str, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    if kind == "noise":
        x = rng.standard_normal(len(t))
    else:  # harmonic tones with a syllable-rate envelope: speech/music-like enough
        f0 = rng.uniform(100, 400)
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
        x = x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
    return (0.1 * x / np.sqrt(np.mean(x**2))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    lines = []
    for split, n in (("train", 6), ("valid", 2), ("test", 4)):
        for i in range(n):
            for kind in ("speech", "music", "noise"):
                rel = f"{split}/{kind}/{kind}_{i}.flac"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                seconds = 10.0 if split == "test" and kind != "noise" else 3.0
                sf.write(root / rel, _clip(rng, kind, seconds), SR, subtype="PCM_16")
                lines.append(
                    {
                        "path": rel,
                        "split": split,
                        "kind": kind,
                        "source": "synth",
                        "voice": f"{kind}{i}",
                        "duration": seconds,
                    }
                )
    (root / "manifest.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    return root


def tiny_config(corpus: Path, run_dir: Path, **kw) -> TrainConfig:
    base = dict(
        corpus=str(corpus),
        run_dir=str(run_dir),
        batch_size=4,
        segment=4000,
        n_filters=4,
        dimension=16,
        lr=1e-3,
        val_every=0,
        log_every=5,
        val_clips=4,
        window=5,
        ckpt_minutes=1e9,
        snapshot_every=0,
    )
    base.update(kw)
    return TrainConfig(**base)


# --- losses ------------------------------------------------------------------------------


def test_localization_loss_lower_for_correct_predictions() -> None:
    labels = torch.zeros(2, 100)
    labels[:, 40:70] = 1
    good = torch.zeros(2, 18, 100)
    good[:, 1] = 4 * (2 * labels - 1)  # marked logit high exactly where marked
    bad = good.clone()
    bad[:, 1] = -bad[:, 1]
    assert L.localization_loss(good, labels) < 0.05 < 0.5 < L.localization_loss(bad, labels)


def test_message_loss_ignores_unmarked_samples() -> None:
    torch.manual_seed(0)
    msg = torch.randint(0, 2, (2, 16))
    marked = torch.zeros(2, 50)
    marked[:, :20] = 1
    logits = torch.randn(2, 18, 50)
    base = L.message_loss(logits, msg, marked)
    changed = logits.clone()
    changed[:, 2:, 20:] = 100 * torch.randn(2, 16, 30)  # garbage where nothing is marked
    assert torch.allclose(L.message_loss(changed, msg, marked), base)
    right = logits.clone()
    right[:, 2:, :20] = 5 * (2 * msg[..., None].float() - 1)
    assert L.message_loss(right, msg, marked) < 0.01 < base


def test_masks_revert_zero_swap_the_right_windows() -> None:
    wm = torch.full((1, 1, 40), 2.0)
    orig = torch.full((1, 1, 40), 1.0)
    other = torch.full((1, 1, 40), 3.0)
    modes = torch.full((1, 40), L.KEEP)
    modes[0, 5:10] = L.REVERT
    modes[0, 15:20] = L.ZERO
    modes[0, 25:30] = L.SWAP
    out, labels = L.apply_masks(wm, orig, other, modes)
    assert torch.equal(out[0, 0, 5:10], orig[0, 0, 5:10])
    assert torch.equal(out[0, 0, 15:20], torch.zeros(5))
    assert torch.equal(out[0, 0, 25:30], other[0, 0, 25:30])
    keep = modes[0] == L.KEEP
    assert torch.equal(out[0, 0, keep], wm[0, 0, keep])
    assert torch.equal(labels[0], keep.float())


def test_random_masks_cover_windows_only_when_drawn() -> None:
    g = torch.Generator().manual_seed(0)
    modes = L.random_mask_modes(64, 1000, g, prob=0.5)
    masked_rows = (modes != L.KEEP).any(-1)
    assert 10 < int(masked_rows.sum()) < 54  # about half the rows
    assert float((modes != L.KEEP).float().mean()) < 0.5  # windows, not whole clips
    assert set(modes.unique().tolist()) <= {L.KEEP, L.REVERT, L.ZERO, L.SWAP}


def test_snr_and_perceptual_terms() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8000)
    wm = 0.1 * torch.randn(3, 1, 8000)  # 20 dB below
    assert torch.allclose(L.snr_db(x, wm), torch.full((3,), 20.0), atol=0.3)
    assert torch.allclose(L.si_snr_db(x, x + wm), torch.full((3,), 20.0), atol=0.3)
    snr = L.snr_db(x, wm)
    assert L.snr_target_loss(snr, 20.0) < 0.05 < L.snr_target_loss(snr, 26.0)
    assert L.snr_target_loss(snr, 10.0, two_sided=False) == 0  # a floor: quieter is fine
    assert L.snr_target_loss(snr, 10.0, two_sided=True) > 5  # two-sided: too quiet costs
    small, large = 0.01 * torch.randn(3, 1, 8000), torch.randn(3, 1, 8000)
    assert L.mel_loss(x, x + small) < L.mel_loss(x, x + large)
    assert L.tf_loudness_loss(x, small) < L.tf_loudness_loss(x, large)


# --- trainer -----------------------------------------------------------------------------


def test_mean_message_loss_is_the_decode_users_see() -> None:
    msg = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]])
    marked = torch.zeros(2, 40)
    marked[:, 10:30] = 1
    logits = torch.zeros(2, 6, 40)
    # per-sample logits that swing wildly but average to the right sign on marked samples
    swing = 8 * torch.sin(torch.arange(40.0))[None, None]
    logits[:, 2:] = swing + 0.5 * (2 * msg[..., None].float() - 1)
    logits[:, 2:, 10:30] -= swing[..., 10:30].mean(-1, keepdim=True)
    mean_logit = 0.5 * (2 * msg.float() - 1)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(mean_logit, msg.float())
    assert torch.allclose(L.mean_message_loss(logits, msg, marked), expected, atol=1e-5)
    assert L.mean_message_loss(logits, msg, torch.zeros(2, 40)) == 0  # nothing marked


def test_bit_visibility_hinge() -> None:
    torch.manual_seed(0)
    wm = torch.randn(3, 1, 100)
    # a flip that changes the energy by 1 % is below a 10 % floor; by 40 %, above it
    small = wm + 0.1 * wm
    large = wm + 0.4**0.5 * torch.flip(wm, dims=[-1])
    assert L.bit_visibility_loss(wm, small, 0.1) > 0.9  # log10(0.1) - log10(0.01) = 1
    assert L.bit_visibility_loss(wm, large, 0.1) == 0
    flip = small.clone().requires_grad_(True)
    L.bit_visibility_loss(wm, flip, 0.1).backward()
    assert flip.grad is not None and flip.grad.abs().sum() > 0  # the generator gets a push


def _band_pair_noise(message: torch.Tensor, length: int = 16000, tilt_db: float = 6.0) -> Tensor:
    """Noise whose band pairs are shaped by the message: bit 1 -> lower half louder."""
    n_fft = 512
    gen = torch.Generator().manual_seed(0)
    spec = torch.fft.rfft(torch.randn(message.shape[0], length, generator=gen))
    freqs = torch.fft.rfftfreq(length, 1 / 16000)
    gain = torch.ones_like(spec.real)
    for k, (a, m, b) in enumerate(L.spectral_code_bands(message.shape[1], n_fft)):
        hz = 16000 / n_fft
        low = (freqs >= a * hz) & (freqs < m * hz)
        high = (freqs >= m * hz) & (freqs < b * hz)
        up = 10 ** (tilt_db / 20) * message[:, k : k + 1].float() + (
            1 - message[:, k : k + 1].float()
        )
        gain = torch.where(low, gain * up, gain)
        gain = torch.where(high, gain * (10 ** (tilt_db / 20) + 1 - up), gain)
    return torch.fft.irfft(spec * gain, n=length)[:, None, :]


def test_spectral_code_reads_band_pairs_at_any_shift() -> None:
    msg = torch.randint(0, 2, (4, 16), generator=torch.Generator().manual_seed(1))
    wm = _band_pair_noise(msg)
    for shift in (0, 123):  # a long-term spectrum does not care where the frame grid is
        contrast = L.spectral_code_contrast(wm[..., shift : shift + 12000], 16)
        assert ((contrast > 0).long() == msg).all()
        assert contrast.abs().min() > 3.0  # ~6 dB asked, window leakage blurs the edges
    assert L.spectral_code_loss(wm, msg, 1.5) == 0  # the code holds with margin
    assert (TrainConfig.spec_lo, TrainConfig.spec_hi) == L.SPEC_CODE_BAND  # one band
    assert L.spectral_code_loss(wm, 1 - msg, 1.5) > 6.0  # every pair the wrong way round
    w = torch.randn(2, 1, 8000, requires_grad=True)
    L.spectral_code_loss(w, msg[:2], 1.5).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0  # the generator gets a push


def test_template_code_reads_signed_templates_on_the_grid_only() -> None:
    msg = torch.randint(0, 2, (3, 16), generator=torch.Generator().manual_seed(2))
    t = L.grid_templates(16)
    assert torch.allclose(t @ t.T, torch.eye(16), atol=1e-5)  # orthonormal
    frames = (2.0 * msg.float() - 1.0) @ t  # (B, 320): every bit's template, signed
    wm = frames.repeat(1, 40)[:, None, :]  # 40 frames on the generator's grid
    corr = L.template_code_correlation(wm, 16)
    assert ((corr > 0).long() == msg).all()
    torch.testing.assert_close(corr.abs(), torch.full_like(corr, 0.25))  # 1/sqrt(16) each
    assert L.template_code_loss(wm, msg, 0.2) == 0
    assert L.template_code_loss(wm, 1 - msg, 0.2) == pytest.approx(0.45)  # 0.2 + 0.25
    off = L.template_code_correlation(wm[..., 40:], 16)  # a grid 40 samples off: lost
    assert ((off > 0).long() == msg).float().mean() < 0.75
    w = torch.randn(2, 1, 3200, requires_grad=True)
    L.template_code_loss(w, msg[:2], 0.2).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_new_run_can_start_from_exported_weights(corpus: Path, tmp_path: Path) -> None:
    from audioseal_live.errors import CheckpointError
    from audioseal_live.training.trainer import run_training

    a = Trainer(tiny_config(corpus, tmp_path / "a"))
    for _ in range(2):
        a.train_step()
    a.save()
    export(tmp_path / "a" / "last.pt", tmp_path / "model")
    b = run_training(
        tiny_config(
            corpus,
            tmp_path / "b",
            max_steps=0,
            init_from=str(tmp_path / "model"),
            start_stage="message",
            w_visible=1.0,
            w_msg_mean=1.0,
        )
    )
    for pa, pb in zip(a.gen.parameters(), b.gen.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert b.step == 0 and b.cur.stage == "message"
    out = b.train_step()  # the fine-tuning terms run in a real step
    assert {"visible", "msg_mean", "msg"} <= set(out) and math.isfinite(out["loss"])
    c = run_training(  # a training checkpoint works as well
        tiny_config(corpus, tmp_path / "c", max_steps=0, init_from=str(tmp_path / "a/last.pt"))
    )
    assert all(
        torch.equal(p, q) for p, q in zip(a.det.parameters(), c.det.parameters(), strict=True)
    )
    with pytest.raises(
        CheckpointError, match=r"its generator has --n-filters 4 \(this run: 8\); train with those"
    ):
        run_training(
            tiny_config(
                corpus,
                tmp_path / "d",
                max_steps=0,
                n_filters=8,
                init_from=str(tmp_path / "model"),
            )
        )


def test_wider_fresh_detector_against_a_frozen_generator(corpus: Path, tmp_path: Path) -> None:
    from audioseal_live.training.trainer import models_from_checkpoint, run_training

    a = Trainer(tiny_config(corpus, tmp_path / "a"))
    a.train_step()
    a.save()
    b = run_training(
        tiny_config(
            corpus,
            tmp_path / "b",
            max_steps=0,
            init_from=str(tmp_path / "a/last.pt"),
            det_n_filters=8,
            freeze_generator=True,
            start_stage="message",
        )
    )
    assert b.det.card.seanet.n_filters == 8 and b.gen.card.seanet.n_filters == 4
    gen0 = [p.clone() for p in b.gen.parameters()]
    det0 = [p.clone() for p in b.det.parameters()]
    for pa, pb in zip(a.gen.parameters(), gen0, strict=True):
        assert torch.equal(pa, pb)  # the generator came from the source
    b.train_step()
    assert all(torch.equal(p, q) for p, q in zip(b.gen.parameters(), gen0, strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(b.det.parameters(), det0, strict=True))
    b.save()
    gen, det = models_from_checkpoint(tmp_path / "b/last.pt")  # widths come with the cards
    assert det.card.seanet.n_filters == 8 and gen.card.seanet.n_filters == 4
    # a resume keeps the run's detector width even if the command line forgets it
    c = run_training(tiny_config(corpus, tmp_path / "b", max_steps=1))
    assert c.cfg.det_n_filters == 8 and c.step == 1


def test_gen_gain_scales_the_watermark_of_the_source(corpus: Path, tmp_path: Path) -> None:
    from audioseal_live.training.trainer import run_training

    a = Trainer(tiny_config(corpus, tmp_path / "a"))
    a.save()
    b = run_training(
        tiny_config(
            corpus,
            tmp_path / "b",
            max_steps=0,
            init_from=str(tmp_path / "a/last.pt"),
            gen_gain_db=-6.0,
        )
    )
    x = 0.1 * torch.randn(2, 1, 4000, generator=torch.Generator().manual_seed(0))
    msg = torch.tensor([[0, 1] * 8, [1, 1] * 8])
    with torch.no_grad():
        wa, wb = (t.gen.get_watermark(x, message=msg) for t in (a, b))
    assert wa.abs().max() > 0
    torch.testing.assert_close(wb, wa * 10 ** (-6 / 20), atol=1e-7, rtol=1e-4)
    c = run_training(tiny_config(corpus, tmp_path / "b", max_steps=0, gen_gain_db=-6.0))
    with torch.no_grad():  # a resume does not scale again
        torch.testing.assert_close(c.gen.get_watermark(x, message=msg), wb)


def test_message_sync_draws_crops_near_the_grid_and_says_which(
    corpus: Path, tmp_path: Path
) -> None:
    from audioseal_live.training.trainer import crop, sync_phases

    trainer = Trainer(tiny_config(corpus, tmp_path, msg_jitter=20, sync_prob=1.0))
    shifts, in_sync = trainer.draw_shifts(200)
    off = shifts % 320
    assert in_sync.all() and (torch.minimum(off, 320 - off) <= 20).all()
    assert ((shifts >= 0) & (shifts < 320)).all() and len(set(off.tolist())) > 10
    trainer.cfg.sync_prob = 0.0  # uniform crops: in sync only where they happen to be near
    shifts, in_sync = trainer.draw_shifts(400)
    near = torch.minimum(shifts % 320, 320 - shifts % 320) <= 20
    assert torch.equal(in_sync, near) and 0 < int(in_sync.sum()) < 200
    x = torch.arange(2 * 3 * 1000.0).view(2, 3, 1000)
    out = crop(x, torch.tensor([0, 7]), 320)
    assert out.shape == (2, 3, 681)
    assert torch.equal(out[0], x[0, :, :681]) and torch.equal(out[1], x[1, :, 7:688])
    # the detector of such a run reads its bits at enough phases to be within 20 of any shift
    assert trainer.det.phases == sync_phases(20) == 8
    assert Trainer(tiny_config(corpus, tmp_path / "b")).det.phases == 1
    trainer.cfg.sync_prob = 0.5
    trainer.cur.stage = "message"
    terms = [trainer.train_step() for _ in range(4)]
    assert any("unsync" in t for t in terms) and all(math.isfinite(t["loss"]) for t in terms)


def test_training_steps_lower_the_loss(corpus: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = Trainer(tiny_config(corpus, tmp_path, start_stage="message"))
    first = [trainer.train_step()["loss"] for _ in range(3)]
    for _ in range(20):
        trainer.train_step()
    last = [trainer.train_step()["loss"] for _ in range(3)]
    assert np.mean(last) < np.mean(first)


def test_resume_reproduces_the_next_steps_exactly(corpus: Path, tmp_path: Path) -> None:
    # the quality stage draws masks and attacks too: all of it must come back on resume
    cfg = tiny_config(corpus, tmp_path / "a", start_stage="quality", mask_prob=1.0, attack_prob=1.0)
    a = Trainer(cfg)
    for _ in range(2):
        a.train_step()
    ckpt = a.save("mid.pt")
    expected = [a.train_step() for _ in range(3)]
    b = Trainer(
        tiny_config(corpus, tmp_path / "b", start_stage="quality", mask_prob=1.0, attack_prob=1.0),
        pool=a.pool,
    )
    b.load(ckpt)
    got = [b.train_step() for _ in range(3)]
    for e, g in zip(expected, got, strict=True):
        assert e["attack"] == g["attack"]
        assert e["loss"] == g["loss"]
    for pa, pb in zip(a.gen.parameters(), b.gen.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_detector_lr_scale_and_one_group_checkpoints(corpus: Path, tmp_path: Path) -> None:
    a = Trainer(tiny_config(corpus, tmp_path / "a", lr=1e-3))
    a.train_step()
    state = a.opt.state_dict()  # the layout before det_lr_scale: one group for both models
    ids = state["param_groups"][0]["params"] + state["param_groups"][1]["params"]
    one = {"state": state["state"], "param_groups": [{**state["param_groups"][0], "params": ids}]}
    path = a.save("old.pt")
    saved = torch.load(path, weights_only=False)
    saved["optimizer"] = one
    torch.save(saved, path)
    b = Trainer(tiny_config(corpus, tmp_path / "b", lr=1e-3, det_lr_scale=3.0), pool=a.pool)
    b.load(path)
    assert [g["lr"] for g in b.opt.param_groups] == [1e-3, 3e-3]
    n_gen = len(list(b.gen.parameters()))
    assert len(b.opt.param_groups[0]["params"]) == n_gen  # generator first, as built
    first_det = b.opt.state[b.opt.param_groups[1]["params"][0]]["exp_avg"]
    assert torch.equal(first_det, a.opt.state[a.opt.param_groups[1]["params"][0]]["exp_avg"])
    b.train_step()


def test_resume_keeps_the_run_lr_unless_given_and_can_force_a_stage(
    corpus: Path, tmp_path: Path
) -> None:
    from audioseal_live.training.trainer import run_training

    run = tmp_path / "run"
    run_training(tiny_config(corpus, run, max_steps=3, lr=2e-3))
    # a resume without --lr keeps the run's 2e-3 (the CLI passes keep_lr=True)
    t = run_training(tiny_config(corpus, run, max_steps=4, lr=3e-4), keep_lr=True)
    assert t.cfg.lr == 2e-3 and all(g["lr"] == 2e-3 for g in t.opt.param_groups)
    assert t.cur.stage == "detect"
    # an explicit lr applies from now on; --force-stage switches and logs it
    t = run_training(
        tiny_config(corpus, run, max_steps=5, lr=5e-4, force_stage="quality"), keep_lr=False
    )
    assert all(g["lr"] == 5e-4 for g in t.opt.param_groups)
    assert t.cur.stage == "quality" and t.step == 5
    events = [json.loads(line) for line in (run / "log.jsonl").open()]
    forced = [e for e in events if e["kind"] == "stage" and e["why"] == "forced by --force-stage"]
    assert forced and forced[-1]["new"] == "quality"
    from audioseal_live.training import commands, trainer

    assert commands.STAGES == trainer.STAGES  # the CLI's choices, kept without torch


def test_noise_negatives_replace_unmarked_clips_only(corpus: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(corpus, tmp_path, noise_negatives=1.0))
    clips = 0.1 * torch.ones(4, 1, 4000)
    out = trainer.noise_negatives(clips)
    assert out.shape == clips.shape and not torch.equal(out, clips)
    rms_db = 10 * torch.log10(out.pow(2).mean(-1)).flatten()
    assert ((rms_db > -50.5) & (rms_db < -14.5)).all(), rms_db
    trainer.cfg.noise_negatives = 0.0
    assert torch.equal(trainer.noise_negatives(clips), clips)
    trainer.cfg.noise_negatives = 1.0
    out = trainer.train_step()  # unmarked half replaced inside a real step
    assert math.isfinite(out["loss"])


def test_fit_logs_checkpoints_and_exports(corpus: Path, tmp_path: Path) -> None:
    from audioseal_live.models.loader import load_model

    cfg = tiny_config(corpus, tmp_path / "run", max_steps=6, val_every=3, log_every=3)
    trainer = Trainer(cfg)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    kinds = {r["kind"] for r in records}
    assert {"start", "train", "valid", "stop"} <= kinds
    assert (tmp_path / "run" / "last.pt").is_file()
    export(tmp_path / "run" / "last.pt", tmp_path / "model")
    gen = load_model(tmp_path / "model", "generator")
    x = torch.randn(1, 1, 3200) * 0.1
    msg = torch.randint(0, 2, (1, 16))
    trainer.gen.eval()
    with torch.no_grad():
        assert torch.allclose(
            gen.get_watermark(x, message=msg), trainer.gen.get_watermark(x, message=msg), atol=1e-6
        )
    assert summarize([{"loss": 1.0, "attack": "none"}])["loss"] == 1.0


def test_eval_prints_a_table(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from audioseal_live.cli import main

    trainer = Trainer(tiny_config(corpus, tmp_path / "run"))
    ckpt = trainer.save()
    rc = main(
        [
            "eval",
            "--corpus",
            str(corpus),
            "--model",
            str(ckpt),
            "--out",
            str(tmp_path / "eval"),
            "--windows",
            "40",
            "--attack-windows",
            "8",
            "--attacks",
            "none,polarity,lowpass_3500",
            "--localization",
            "2",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "| polarity |" in out and "tpr_at_fpr1" in out and "Localization" in out
    res = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(res["attacks"]) == {"none", "polarity", "lowpass_3500"}
    assert (tmp_path / "eval" / "eval.md").is_file()


def test_eval_strength_scales_the_mark(corpus: Path) -> None:
    """``eval --alpha`` embeds as the app's Strength control does: half the strength is the
    watermark 6.02 dB quieter (SI-SNR: the watermark's level under the signal)."""
    from audioseal_live import AudioSeal
    from audioseal_live.training.evaluate import embed, test_windows

    gen = AudioSeal.load_generator()
    x, _ = test_windows(corpus, 0, 8, ("speech", "tts", "music", "mix"))
    msg = torch.randint(0, 2, (len(x), gen.nbits))
    with torch.inference_mode():
        snr = {a: float(L.si_snr_db(x, embed(gen, x, msg, alpha=a)).mean()) for a in (1.0, 0.5)}
    assert len(x) > 0 and snr[0.5] - snr[1.0] == pytest.approx(20 * math.log10(2), abs=0.05)


def test_eval_refuses_a_strength_that_is_not_one(capsys: pytest.CaptureFixture) -> None:
    from audioseal_live.cli import main

    for bad in ("nan", "-1", "inf"):
        assert main(["eval", "--alpha", bad]) == 2
        assert "--alpha must be a finite strength" in capsys.readouterr().err


def test_eval_metrics() -> None:
    from audioseal_live.training.evaluate import auc, tpr_at_fpr

    pos = np.linspace(0.5, 1.0, 100)
    neg = np.linspace(0.0, 0.6, 100)
    assert auc(np.ones(5), np.zeros(5)) == 1.0
    assert auc(np.zeros(5), np.ones(5)) == 0.0
    tpr, thr = tpr_at_fpr(pos, neg, 0.01)
    assert (neg > thr).mean() <= 0.01
    assert 0.0 < tpr < 1.0


def test_cli_train_reports_a_missing_corpus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from audioseal_live.cli import main

    rc = main(
        [
            "train",
            "--corpus",
            str(tmp_path / "nope"),
            "--run-dir",
            str(tmp_path / "r"),
            "--max-steps",
            "1",
        ]
    )
    assert rc == 2
    assert "manifest" in capsys.readouterr().err


def test_widening_keeps_what_the_model_computes() -> None:
    from audioseal_live.models import AudioSealDetector, AudioSealWM, small_card
    from audioseal_live.training.widen import widen

    torch.manual_seed(0)
    x = 0.1 * torch.randn(2, 1, 3200)
    msg = torch.randint(0, 2, (2, 16))
    for cls, kind in ((AudioSealDetector, "detector"), (AudioSealWM, "generator")):
        card = small_card(kind, n_filters=4, dimension=16)
        model = cls(card).eval()
        wide_card = small_card(kind, n_filters=8, dimension=16)
        wide = widen(model, cls(wide_card).eval())
        assert sum(p.numel() for p in wide.parameters()) > sum(
            p.numel() for p in model.parameters()
        )
        with torch.inference_mode():
            if kind == "detector":
                a, b = model.logits(x), wide.logits(x)
            else:
                a, b = model.get_watermark(x, message=msg), wide.get_watermark(x, message=msg)
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
            noisy = widen(model, cls(wide_card).eval(), noise=0.05)
            c = noisy.logits(x) if kind == "detector" else noisy.get_watermark(x, message=msg)
            assert not torch.allclose(c, a, atol=1e-5)  # the copies can now drift apart


def test_cli_widen_writes_a_model_folder_that_loads(corpus: Path, tmp_path: Path) -> None:
    from audioseal_live import AudioSeal
    from audioseal_live.cli import main

    a = Trainer(tiny_config(corpus, tmp_path / "a"))
    a.save()
    export(tmp_path / "a" / "last.pt", tmp_path / "model")
    out = tmp_path / "wide"
    args = ["widen", "--model", str(tmp_path / "model"), "--detector-filters", "8"]
    assert main([*args, "--noise", "0", "--out", str(out)]) == 0
    det = AudioSeal.load_detector(str(out / "detector.json"))
    small = AudioSeal.load_detector(str(tmp_path / "model" / "detector.json"))
    assert det.card.seanet.n_filters == 8 and small.card.seanet.n_filters == 4
    x = 0.1 * torch.randn(1, 1, 1600)
    with torch.inference_mode():
        torch.testing.assert_close(det.logits(x), small.logits(x), atol=1e-5, rtol=1e-4)
    assert (out / "generator.safetensors").is_file()


def test_ctrl_c_stops_between_steps_and_the_resume_is_exact(corpus: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) mid-step lets the step finish, then saves: the checkpoint is a step
    boundary, and the steps after a resume are those of a run that never stopped."""
    import os
    import signal

    from audioseal_live.training.trainer import run_training

    ref = Trainer(tiny_config(corpus, tmp_path / "ref"))
    expected = [ref.train_step()["loss"] for _ in range(4)]
    run = tmp_path / "run"
    real_step = Trainer.train_step

    def interrupted_step(self: Trainer) -> dict:
        if self.step == 1:  # in the middle of the second step
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self)

    Trainer.train_step = interrupted_step  # type: ignore[method-assign]
    # as in a terminal (a background job, e.g. CI, starts with SIGINT ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        t = run_training(tiny_config(corpus, run, max_steps=4))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        Trainer.train_step = real_step  # type: ignore[method-assign]
        signal.signal(signal.SIGINT, before)
    assert t.step == 2  # the interrupted step completed; no more started
    b = Trainer(tiny_config(corpus, tmp_path / "b"))
    b.load(run / "last.pt")
    assert [b.train_step()["loss"] for _ in range(2)] == expected[2:]


def test_a_second_ctrl_c_says_what_was_kept_and_a_resume_what_it_ignores(
    corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review: two quick Ctrl-Cs before the first checkpoint claimed a last.pt that did not
    exist; a resume dropped --n-filters without a word."""
    import json
    import os
    import signal

    from audioseal_live.training.trainer import run_training

    run = tmp_path / "run"
    real_step = Trainer.train_step

    def twice(self: Trainer) -> dict:
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # "stopping after this step ..."
            os.kill(os.getpid(), signal.SIGINT)  # aborts at once
        return real_step(self)

    Trainer.train_step = twice  # type: ignore[method-assign]
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
            run_training(tiny_config(corpus, run, max_steps=4))
    finally:
        Trainer.train_step = real_step  # type: ignore[method-assign]
        signal.signal(signal.SIGINT, before)
    assert "Ctrl-C again aborts at once" in caplog.text
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "interrupted" and not (run / "last.pt").exists()
    assert events[-1]["kept"] == "nothing: no checkpoint yet"
    run_training(tiny_config(corpus, run, max_steps=1))
    caplog.clear()
    with caplog.at_level("WARNING"):
        again = run_training(tiny_config(corpus, run, max_steps=1, n_filters=6))
    assert "--n-filters 6 ignored, the run continues with 4" in caplog.text
    assert "leaves nothing to do" in caplog.text and again.gen.card.seanet.n_filters == 4


def test_a_broken_corpus_is_one_line_naming_it(tmp_path: Path) -> None:
    import json

    from audioseal_live.training.data import CorpusMissingError, SegmentPool, read_manifest

    (tmp_path / "manifest.jsonl").write_text('{"path": "train/speech/a/x.flac", "split": "tr\n')
    with pytest.raises(CorpusMissingError, match="manifest.jsonl, line 1: not a manifest entry"):
        read_manifest(tmp_path)
    gone = [
        json.dumps({"path": f"train/speech/a/{i}.flac", "split": "train", "kind": "speech"})
        for i in range(30)
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(gone))
    with pytest.raises(CorpusMissingError, match=r"train split of .*\(30 files missing"):
        SegmentPool(read_manifest(tmp_path, "train"))


def test_resume_keeps_how_the_detector_reads_the_message(corpus: Path, tmp_path: Path) -> None:
    """A resume that does not repeat --w-template-code keeps the run's code (its detector card
    would otherwise lose the template code); a different explicit value is refused."""
    from audioseal_live.errors import SettingError
    from audioseal_live.training.trainer import run_training

    run = tmp_path / "run"
    code = dict(w_template_code=1.0, msg_jitter=0, start_stage="message")
    first = run_training(tiny_config(corpus, run, max_steps=1, **code))
    assert first.det.card.template_code is not None
    again = run_training(tiny_config(corpus, run, max_steps=2))
    assert again.cfg.w_template_code == 1.0 and again.det.card.template_code is not None
    with pytest.raises(SettingError, match="msg_jitter.*--fresh --init-from"):
        run_training(tiny_config(corpus, run, max_steps=3, msg_jitter=40))


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["eval", "--windows", "0"], "--windows"),
        (["eval", "--attacks", "lowpas_3500"], "unknown attack"),
        (["train", "--device", "foo"], "--device 'foo'"),
        (["train", "--max-shift", "20000"], "--max-shift"),
        (["widen", "--detector-filters", "4", "--out", "x"], "must be more than"),
        # review: tracebacks (ZeroDivisionError, a non-finite loss) or a collapsing detector
        (["train", "--log-every", "0"], "--log-every must be >= 1, got 0"),
        (["train", "--batch-size", "0"], "--batch-size must be >= 2"),
        (["train", "--batch-size", "1"], "--batch-size must be >= 2"),
        (["train", "--msg-jitter", "-1"], "--msg-jitter must be >= 0"),
        (["train", "--n-filters", "0"], "--n-filters must be >= 1"),
        (["train", "--val-every", "-1"], "--val-every must be >= 0"),
        (["train", "--max-steps", "-1"], "--max-steps must be >= 0"),
        (["train", "--mask-prob", "1.5"], "--mask-prob must be a share in [0, 1]"),
        (["train", "--attack-prob", "nan"], "--attack-prob must be a share in [0, 1]"),
        (["train", "--w-loud", "-0.1"], "--w-loud must be finite and >= 0"),
        (["train", "--w-mel", "inf"], "--w-mel must be finite and >= 0"),
        (["train", "--lr", "0"], "--lr must be finite and > 0"),
        (["train", "--template-lo", "5000"], "--template-lo 5000.0 and --template-hi"),
    ],
)
def test_training_commands_refuse_bad_options_in_one_line(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from audioseal_live.cli import main

    if argv[0] == "widen":
        argv = [*argv[:-1], str(tmp_path / "wide")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("audioseal-live: error:") and says in err and "Traceback" not in err


@pytest.mark.parametrize(
    "folder_flag",
    [
        ["eval", "--out"],
        ["train", "--run-dir"],
        ["corpus", "--out"],
        ["export", "--out"],
        ["widen", "--detector-filters", "12", "--out"],
    ],
)
def test_commands_that_write_a_folder_refuse_a_file(
    folder_flag: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from audioseal_live.cli import main

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main([*folder_flag, str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == ""


# --- review fixes: resume options, Ctrl-C with --export, --fresh, bad corpora and options ---

# a tiny card from the command line (TrainConfig's segment stays 1 s: a few steps only)
TINY = ["--n-filters", "4", "--dimension", "16", "--batch-size", "4", "--log-every", "1"]
TINY += ["--threads", "1", "--max-clips", "6"]


def test_cli_resume_keeps_the_run_options_and_says_what_changes(
    corpus: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review: a resume without every flag went back to the argparse defaults (mask_prob,
    w_loud, noise_negatives, --freeze-generator, ...) without a word."""
    from audioseal_live.cli import main
    from audioseal_live.training.trainer import load_checkpoint

    run = tmp_path / "run"
    first = ["train", "--corpus", str(corpus), "--run-dir", str(run), *TINY, "--val-every", "0"]
    mix = ["--mask-prob", "0.2", "--w-loud", "0.03", "--noise-negatives", "0.5"]
    mix += ["--freeze-generator", "--max-shift", "100", "--det-lr-scale", "2"]
    assert main([*first, "--max-steps", "1", *mix]) == 0
    again = ["train", "--run-dir", str(run), "--max-steps", "2", "--w-loud", "0.05"]
    with caplog.at_level("INFO"):
        assert main([*again, "--no-freeze-generator", "--n-filters", "6"]) == 0
    cfg = load_checkpoint(run / "last.pt")["config"]
    assert cfg["corpus"] == str(corpus) and cfg["max_clips"] == 6 and cfg["val_every"] == 0
    assert (cfg["mask_prob"], cfg["noise_negatives"], cfg["max_shift"]) == (0.2, 0.5, 100)
    assert cfg["det_lr_scale"] == 2.0 and cfg["batch_size"] == 4 and cfg["n_filters"] == 4
    assert cfg["w_loud"] == 0.05 and cfg["freeze_generator"] is False  # given: they win
    assert "resume: --w-loud 0.05 (the run had 0.03)" in caplog.text
    assert "resume: --freeze-generator False (the run had True)" in caplog.text
    assert "--n-filters 6 ignored, the run continues with 4" in caplog.text
    assert "--mask-prob" not in caplog.text and "--max-shift" not in caplog.text
    events = [json.loads(line) for line in (run / "log.jsonl").open()]
    resumed = [e for e in events if e["kind"] == "resume"]
    assert resumed[-1]["changed"] == {"w_loud": [0.03, 0.05], "freeze_generator": [True, False]}
    # --help still says every default (the new run's)
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert re.search(r"--w-loud W_LOUD\s+TF-loudness loss weight \(default: 0.05\)", text)
    assert re.search(r"--mask-prob MASK_PROB\s+default: 0.5\n", text)
    assert re.search(r"--corpus CORPUS\s+corpus folder .* \(default: data/corpus\)", text)


def test_ctrl_c_during_train_export_exports_nothing(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: Ctrl-C during `train --export assets/model` still exported (a model of a few
    steps over the shipped one) and exited 0."""
    import os
    import signal

    from audioseal_live.cli import main
    from audioseal_live.training.trainer import load_checkpoint

    real_step = Trainer.train_step

    def interrupted_step(self: Trainer) -> dict:
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    run, model = tmp_path / "run", tmp_path / "model"
    try:
        rc = main(
            ["train", "--corpus", str(corpus), "--run-dir", str(run), *TINY, "--val-every", "1"]
            + ["--max-steps", "5", "--export", str(model)]
        )
    finally:
        signal.signal(signal.SIGINT, before)
    assert rc == 130
    assert not model.exists()  # not exported (and the folder made for it is gone again)
    err = capsys.readouterr().err
    assert "stopped by SIGINT at step 2: not exported" in err
    assert f"audioseal-live export --run-dir {run} --out {model}" in err
    assert load_checkpoint(run / "last.pt")["step"] == 2 and (run / "best.pt").is_file()
    events = [json.loads(line) for line in (run / "log.jsonl").open()]
    assert events[-1]["kind"] == "stop" and events[-1]["stopped_by"] == "SIGINT"


def test_a_fresh_run_moves_the_previous_one_aside_and_export_takes_the_new_one(
    corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review: `train --fresh` left the previous run's best.pt (another architecture), and
    `export --run-dir` then exported that one."""
    from audioseal_live import AudioSeal
    from audioseal_live.cli import main
    from audioseal_live.training.trainer import run_training

    run = tmp_path / "run"
    run_training(tiny_config(corpus, run, max_steps=2, val_every=1, snapshot_every=1))
    before = {p.name for p in run.iterdir()}
    assert {"best.pt", "last.pt", "step_0000001.pt", "log.jsonl"} <= before
    with caplog.at_level("WARNING"):
        run_training(tiny_config(corpus, run, max_steps=1, n_filters=6), resume=False)
    assert "the previous run's best.pt, last.pt, step_0000001.pt" in caplog.text
    assert sorted(p.name for p in run.glob("*.pt")) == ["last.pt"]
    (old,) = run.glob("previous-*")
    assert {p.name for p in old.iterdir()} == before  # moved, nothing deleted
    assert main(["export", "--run-dir", str(run), "--out", str(tmp_path / "model")]) == 0
    det = AudioSeal.load_detector(str(tmp_path / "model" / "detector.json"))
    assert det.card.seanet.n_filters == 6  # the new run's, not the old best.pt's 4
    # a new run from the run it replaces (as the resume refusal suggests): read where it went
    t = run_training(
        tiny_config(corpus, run, max_steps=1, n_filters=6, init_from=str(run / "last.pt")),
        resume=False,
    )
    assert Path(t.cfg.init_from).parent.name.startswith("previous-")
    assert len(list(run.glob("previous-*"))) == 2


@pytest.mark.parametrize(
    ("splits", "missing"), [((), "train"), (("test",), "train"), (("train",), "valid")]
)
def test_train_names_a_missing_split_and_makes_no_run_folder(
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    splits: tuple[str, ...],
    missing: str,
) -> None:
    """Review: an empty manifest (or only test lines) said "no readable audio in the corpus
    split of ." (build into the current folder?) and left an empty run folder."""
    from audioseal_live.cli import main
    from audioseal_live.training.data import CorpusMissingError, SegmentPool

    root = tmp_path / "corpus"
    root.mkdir()
    lines = [json.loads(x) for x in (corpus / "manifest.jsonl").read_text().splitlines()]
    kept = [{**d, "path": str(corpus / d["path"])} for d in lines if d["split"] in splits]
    (root / "manifest.jsonl").write_text("".join(json.dumps(d) + "\n" for d in kept))
    run = tmp_path / "runs" / "r"
    args = ["train", "--corpus", str(root), "--run-dir", str(run), *TINY, "--max-steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"the corpus {root} has no {missing} split" in err
    assert f"audioseal-live corpus --out {root}`" in err
    assert ("--val-every 0" in err) == (missing == "valid")
    assert not (tmp_path / "runs").exists()
    if missing == "train":
        with pytest.raises(CorpusMissingError, match=f"the corpus {root} has no train split"):
            SegmentPool.from_corpus(root, "train")


def test_eval_makes_no_out_folder_for_a_missing_corpus_or_model(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from audioseal_live.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--corpus", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "manifest" in capsys.readouterr().err and not out.exists()
    bad_model = ["--model", str(tmp_path / "no_model")]
    assert main(["eval", "--corpus", str(corpus), *bad_model, "--out", str(out)]) == 2
    assert "no_model" in capsys.readouterr().err and not out.exists()


def test_init_from_says_what_it_takes(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Review: --init-from runA/log.jsonl said "runA/log.jsonl/generator.json: its model card
    generator.json is missing beside it"."""
    from audioseal_live.cli import main

    log_file = tmp_path / "runA" / "log.jsonl"
    log_file.parent.mkdir()
    log_file.write_text("{}\n")
    run = tmp_path / "r"
    for source, why in (
        (log_file, "a file, not a .pt checkpoint"),
        (tmp_path / "gone", "no such file or folder"),
        (log_file.parent, "a folder without generator.json and detector.json"),
    ):
        args = ["train", "--corpus", str(corpus), "--run-dir", str(run), *TINY]
        assert main([*args, "--init-from", str(source)]) == 2
        err = capsys.readouterr().err
        assert "--init-from takes a model folder with generator.json and detector.json" in err
        assert f"got {source}: {why}" in err and "Traceback" not in err
        assert not run.exists()


def test_eval_without_attacks_says_not_measured(corpus: Path, tmp_path: Path) -> None:
    """Review: `eval --attacks none` printed "mean over attacks nan" and the target "NO"."""
    from audioseal_live.training.evaluate import evaluate, markdown

    t = Trainer(tiny_config(corpus, tmp_path))
    res = evaluate(
        t.gen, t.det, corpus, windows=8, attacks=[], attack_windows=4, localization_examples=0
    )
    assert res["attack_mean_acc"] is None
    assert res["targets"]["attack mean accuracy >= 0.90"] is None
    md = markdown(res)
    assert "| **mean over attacks (excl. none)** | not measured |" in md
    assert "| attack mean accuracy >= 0.90 | not measured |" in md
    assert json.loads(json.dumps(res))["attack_mean_acc"] is None  # eval.json: null
