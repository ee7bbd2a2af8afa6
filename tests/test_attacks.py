"""Attack suite: shapes, exact transforms, spectra, SNR, lengths, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from audioseal_live.training import attacks as A

SR = 16_000


def band_energy(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Energy of each item between low and high Hz (FFT of the whole signal)."""
    spec = torch.fft.rfft(x.double(), dim=-1).abs().pow(2)
    f = torch.fft.rfftfreq(x.shape[-1], 1 / SR)
    return spec[..., (f >= low) & (f < high)].sum(-1).squeeze(-1)


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(clean.pow(2).sum((-2, -1)) / (noisy - clean).pow(2).sum((-2, -1)))


def dominant_hz(x: torch.Tensor) -> float:
    spec = torch.fft.rfft(x.double().flatten()).abs()
    return float(torch.fft.rfftfreq(x.shape[-1], 1 / SR)[spec.argmax()])


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.randn(3, 1, SR, generator=torch.Generator().manual_seed(0)) * 0.1


def sine(hz: float, n: int = SR) -> torch.Tensor:
    return (0.5 * torch.sin(2 * math.pi * hz * torch.arange(n) / SR)).reshape(1, 1, n)


@pytest.mark.parametrize("name", sorted(A.ATTACKS))
def test_registry_keeps_shape_dtype_and_is_finite(name: str, noise: torch.Tensor) -> None:
    for x in (noise, torch.zeros(2, 1, 8000)):  # silence must not give NaNs (0/0 in SNR)
        y = A.ATTACKS[name](x)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert torch.isfinite(y).all()


def test_registry_has_the_evaluation_names() -> None:
    for name in (
        "lowpass_3500",
        "highpass_500",
        "white_noise_20db",
        "polarity",
        "resample_8k",
        "speed_1.1",
        "echo",
        "reverb",
        "clip_50",
        "smooth_8",
        "boost_6db",
        "duck_6db",
    ):
        assert name in A.ATTACKS


def test_evaluation_attacks_are_repeatable(noise: torch.Tensor) -> None:
    for name in ("white_noise_20db", "pink_noise_20db", "reverb"):
        assert torch.equal(A.ATTACKS[name](noise), A.ATTACKS[name](noise))


def test_polarity_is_exact(noise: torch.Tensor) -> None:
    assert torch.equal(A.ATTACKS["polarity"](noise), -noise)


@pytest.mark.parametrize("db", [-6.0, 0.0, 3.5])
def test_gain_is_exact(noise: torch.Tensor, db: float) -> None:
    assert torch.equal(A.gain(noise, db), noise * 10 ** (db / 20))
    ratio = A.ATTACKS["boost_6db"](noise).pow(2).sum() / noise.pow(2).sum()
    assert ratio.item() == pytest.approx(10**0.6, rel=1e-5)


@pytest.mark.parametrize("cutoff", [500.0, 2000.0, 3500.0])
def test_lowpass_removes_above_keeps_below(noise: torch.Tensor, cutoff: float) -> None:
    y = A.lowpass(noise, cutoff)
    above = band_energy(y, cutoff + 250, SR / 2) / band_energy(noise, cutoff + 250, SR / 2)
    below = band_energy(y, 50, cutoff - 250) / band_energy(noise, 50, cutoff - 250)
    assert (above < 1e-4).all()
    assert ((below > 0.97) & (below < 1.03)).all()


@pytest.mark.parametrize("cutoff", [500.0, 1500.0])
def test_highpass_removes_below_keeps_above(noise: torch.Tensor, cutoff: float) -> None:
    y = A.highpass(noise, cutoff)
    below = band_energy(y, 0, cutoff - 250) / band_energy(noise, 0, cutoff - 250)
    above = band_energy(y, cutoff + 250, SR / 2 - 100) / band_energy(
        noise, cutoff + 250, SR / 2 - 100
    )
    assert (below < 1e-4).all()
    assert ((above > 0.97) & (above < 1.03)).all()


def test_bandpass_keeps_only_the_band(noise: torch.Tensor) -> None:
    y = A.ATTACKS["bandpass_300_3400"](noise)
    assert (band_energy(y, 0, 50) / band_energy(noise, 0, 50) < 1e-3).all()
    assert (band_energy(y, 3700, 8000) / band_energy(noise, 3700, 8000) < 1e-4).all()
    kept = band_energy(y, 600, 3100) / band_energy(noise, 600, 3100)
    assert ((kept > 0.97) & (kept < 1.03)).all()


def test_resample_8k_keeps_length_and_band_limits(noise: torch.Tensor) -> None:
    y = A.ATTACKS["resample_8k"](noise)
    assert y.shape == noise.shape
    assert (band_energy(y, 4100, 8000) / band_energy(noise, 4100, 8000) < 1e-3).all()
    kept = band_energy(y, 100, 3500) / band_energy(noise, 100, 3500)
    assert ((kept > 0.95) & (kept < 1.05)).all()


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_resample_up_and_back_is_near_identity_in_band(rate: int) -> None:
    x = sine(440.0) + sine(3000.0) * 0.5
    y = A.resample_roundtrip(x, rate)
    assert y.shape == x.shape
    middle = slice(1000, SR - 1000)  # edges see the zero padding
    assert snr_db(x[..., middle], y[..., middle]).item() > 40


def test_resample_changes_rate_not_pitch() -> None:
    y = A.resample(sine(1000.0), SR, 8000)
    assert y.shape[-1] == SR // 2
    spec = torch.fft.rfft(y.double().flatten()).abs()
    assert float(torch.fft.rfftfreq(y.shape[-1], 1 / 8000)[spec.argmax()]) == pytest.approx(1000)


@pytest.mark.parametrize("snr", [5.0, 20.0, 35.0])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_noise_hits_the_requested_snr(noise: torch.Tensor, snr: float, kind: str) -> None:
    fn = A.white_noise if kind == "white" else A.pink_noise
    y = fn(noise, snr, torch.Generator().manual_seed(1))
    assert torch.allclose(snr_db(noise, y), torch.full((3,), snr, dtype=torch.float32), atol=0.05)


def test_pink_noise_is_pink() -> None:
    x = torch.zeros(1, 1, SR)
    x[..., 0] = 1e-3  # tiny signal so the noise dominates
    n = A.pink_noise(x, -60.0, torch.Generator().manual_seed(2)) - x
    # 1/f: equal energy per octave, so 100-200 Hz holds about as much as 3.2-6.4 kHz
    ratio = band_energy(n, 100, 200) / band_energy(n, 3200, 6400)
    assert 0.6 < ratio.item() < 1.6
    w = A.white_noise(x, -60.0, torch.Generator().manual_seed(2)) - x
    assert (band_energy(w, 100, 200) / band_energy(w, 3200, 6400)).item() < 0.1


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9])
def test_clipping_bounds(noise: torch.Tensor, ratio: float) -> None:
    y = A.clipping(noise, ratio)
    peak = noise.abs().amax(dim=(-2, -1), keepdim=True)
    assert (y.abs() <= ratio * peak + 1e-7).all()
    inside = noise.abs() < ratio * peak
    assert torch.equal(y[inside], noise[inside])
    assert torch.allclose(y.abs().amax(dim=(-2, -1)), ratio * peak.flatten())


@pytest.mark.parametrize("factor", [0.9, 0.95, 1.1])
def test_speed_keeps_length_and_scales_pitch(factor: float) -> None:
    x = sine(1000.0)
    y = A.speed(x, factor)
    assert y.shape == x.shape
    assert dominant_hz(y[..., : int(SR * min(1, 1 / factor)) - 200]) == pytest.approx(
        1000 * factor, abs=3
    )


def test_echo_adds_one_delayed_copy(noise: torch.Tensor) -> None:
    y = A.echo(noise, 0.1, 0.5)
    d = int(0.1 * SR)
    assert torch.allclose(y[..., :d], noise[..., :d])
    assert torch.allclose(y[..., d:] - noise[..., d:], 0.5 * noise[..., :-d], atol=1e-7)


def test_reverb_is_causal_and_spreads_energy() -> None:
    x = torch.zeros(1, 1, SR)
    x[..., 4000] = 1.0
    y = A.reverb(x, 0.5, torch.Generator().manual_seed(0))
    assert y[..., :4000].abs().max() < 1e-6
    tail = y[..., 4000 + 800 :].pow(2).sum()  # energy > 50 ms after the impulse
    assert tail > 0.01 * y.pow(2).sum()


def test_smoothing_is_a_moving_average() -> None:
    x = torch.randn(1, 1, 1000, generator=torch.Generator().manual_seed(3))
    y = A.smooth(x, 5)
    expected = torch.nn.functional.avg_pool1d(x, 5, stride=1)  # windows fully inside
    assert torch.allclose(y[..., 2:-2], expected, atol=1e-6)
    assert torch.allclose(
        A.smooth(torch.ones(1, 1, 100), 8)[..., 10:-10], torch.ones(80), atol=1e-6
    )


@pytest.mark.parametrize(
    "name",
    [
        "lowpass_3500",
        "highpass_500",
        "resample_8k",
        "speed_1.1",
        "reverb",
        "echo",
        "white_noise_20db",
        "smooth_8",
    ],
)
def test_differentiable(name: str, noise: torch.Tensor) -> None:
    x = noise.clone().requires_grad_(True)
    A.ATTACKS[name](x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name", sorted(set(A.CODECS) & {n for n in A.CODECS if A.codec_available(n)})
)
def test_codec_roundtrip_is_close_and_straight_through(name: str) -> None:
    x = (sine(440.0) + sine(1200.0) * 0.3).repeat(2, 1, 1).requires_grad_(True)
    y = A.codec(x, name, 0.5)
    assert y.shape == x.shape
    middle = slice(2000, SR - 2000)
    assert (snr_db(x.detach()[..., middle], y.detach()[..., middle]) > 10).all()
    assert not torch.equal(y.detach(), x.detach())  # it really went through the codec
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_random_attack_keeps_shape_and_covers_families() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 4000, generator=g) * 0.1
    seen = set()
    for _ in range(120):
        y, name = A.random_attack(x, g)
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
        seen.add(name)
    assert len(seen) >= len(A.TRAINING_ATTACKS) - 2


def test_random_attack_weights() -> None:
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 1, 2000, generator=g)
    names = [A.random_attack(noise, g, {"polarity": 1.0})[1] for _ in range(20)]
    assert set(names) == {"polarity"}
    counts = {"lowpass": 0, "highpass": 0}
    for _ in range(200):
        counts[A.random_attack(noise, g, {"lowpass": 0.9, "highpass": 0.1})[1]] += 1
    assert counts["lowpass"] > 3 * counts["highpass"] > 0
    with pytest.raises(ValueError):
        A.random_attack(noise, g, {"unknown": 1.0})


def test_random_attack_is_reproducible(noise: torch.Tensor) -> None:
    a = A.random_attack(noise, torch.Generator().manual_seed(5))
    b = A.random_attack(noise, torch.Generator().manual_seed(5))
    assert a[1] == b[1] and torch.equal(a[0], b[0])


def test_desync_shifts_earlier_and_keeps_length() -> None:
    from audioseal_live.training.attacks import ATTACKS

    x = torch.arange(1.0, 11.0).view(1, 1, 10)
    y = ATTACKS["desync_1"](x)
    assert y.shape == x.shape
    assert torch.equal(y[..., :9], x[..., 1:]) and y[..., 9] == 0


def test_speed_moves_the_labels_with_the_audio() -> None:
    """Per-sample labels follow a speed change: where marked content lands after it, and the
    zero-padded end (nothing there) counts as unmarked."""
    from audioseal_live.training import losses as L
    from audioseal_live.training.attacks import TRAINING_ATTACKS, random_attack_with_labels

    n = 16000
    wm, silence = torch.randn(1, 1, n), torch.zeros(1, 1, n)  # content only where marked
    modes = torch.full((1, n), L.KEEP)
    modes[0, 8000:12000] = L.REVERT
    audio, labels = L.apply_masks(wm, silence, silence, modes)
    only_speed = {name: float(name == "speed") for name in TRAINING_ATTACKS}
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        y, moved, name = random_attack_with_labels(audio, labels, g, only_speed)
        assert name == "speed" and moved.shape == labels.shape
        present = y[0, 0].abs().reshape(-1, 100).mean(-1) > 0.1  # 100-sample blocks
        said = moved[0].reshape(-1, 100).mean(-1) > 0.5
        assert float((present != said).float().mean()) <= 0.02
    g = torch.Generator().manual_seed(0)
    _, same, name = random_attack_with_labels(audio, labels, g, {"gain": 1.0})
    assert name == "gain" and torch.equal(same, labels)  # attacks in place leave them alone
