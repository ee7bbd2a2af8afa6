"""Training losses after the AudioSeal paper, plus the window masks of the localization task.

Shapes: audio is (B, 1, T); detector logits are (B, 2 + nbits, T) as returned by
``AudioSealDetector.logits``; per-sample labels/masks are (B, T).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from audioseal_live.models.message_code import TemplateCode

EPS = 1e-8

# --------------------------------------------------------------------------------------------
# signal measures


def snr_db(x: Tensor, wm: Tensor) -> Tensor:
    """Per-example SNR (B,) of host x against the added watermark wm, in dB."""
    sig = x.pow(2).flatten(1).sum(-1)
    noise = wm.pow(2).flatten(1).sum(-1)
    return 10 * torch.log10((sig + EPS) / (noise + EPS))


def si_snr_db(reference: Tensor, estimate: Tensor) -> Tensor:
    """Scale-invariant SNR (B,) of estimate (e.g. the watermarked audio) against reference."""
    ref = reference.flatten(1)
    est = estimate.flatten(1)
    ref = ref - ref.mean(-1, keepdim=True)
    est = est - est.mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + EPS)
    target = scale * ref
    noise = est - target
    return 10 * torch.log10((target.pow(2).sum(-1) + EPS) / (noise.pow(2).sum(-1) + EPS))


def snr_target_loss(snr: Tensor, target_db: float, two_sided: bool = True) -> Tensor:
    """Keeps the watermark energy near target_db (two-sided) or at least that quiet (floor).

    Two-sided matters early: a pure floor lets the watermark sink below what an untrained
    detector can find, and training never starts (see shared/DATA.md).
    """
    if two_sided:
        return F.smooth_l1_loss(snr, torch.full_like(snr, target_db), beta=1.0)
    return F.relu(target_db - snr).mean()


# --------------------------------------------------------------------------------------------
# perceptual terms


def l1_loss(x: Tensor, y: Tensor) -> Tensor:
    return (x - y).abs().mean()


def _stft_mag(x: Tensor, n_fft: int, hop: int | None = None) -> Tensor:
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(
        x.flatten(0, 1), n_fft, hop_length=hop or n_fft // 4, window=window, return_complex=True
    )
    return spec.abs().clamp_min(1e-7)


@functools.lru_cache(16)
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int = 16000) -> Tensor:
    """Triangular HTK-mel filters (n_mels, n_fft // 2 + 1); no torchaudio needed."""

    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    mels = torch.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0)


def mel_loss(
    x: Tensor, y: Tensor, fft_sizes: tuple[int, ...] = (512, 1024), n_mels: int = 64
) -> Tensor:
    """ℓ1 distance of log-mel spectrograms at several resolutions."""
    total = x.new_zeros(())
    for n_fft in fft_sizes:
        fb = mel_filterbank(n_fft, n_mels).to(x)
        mx = torch.matmul(fb, _stft_mag(x, n_fft).pow(2))
        my = torch.matmul(fb, _stft_mag(y, n_fft).pow(2))
        total = total + (torch.log(mx + 1e-5) - torch.log(my + 1e-5)).abs().mean()
    return total / len(fft_sizes)


def tf_loudness_loss(
    x: Tensor, wm: Tensor, n_fft: int = 512, n_bands: int = 8, frames_per_tile: int = 8
) -> Tensor:
    """Loudness masking, simplified from AudioSeal's TF-loudness ratio.

    Splits the spectrogram into frequency bands × time tiles, takes the log-energy ratio
    watermark/host per tile, and averages it with softmax weights so the tiles where the
    watermark stands out most (least masked by the host) dominate the loss.
    """
    ex = _stft_mag(x, n_fft).pow(2)  # (B, F, N)
    ew = _stft_mag(wm, n_fft).pow(2)
    freq_bins, frames = ex.shape[-2:]
    n_tiles = max(frames // frames_per_tile, 1)
    usable = n_tiles * frames_per_tile if frames >= frames_per_tile else frames

    def tiles(e: Tensor) -> Tensor:
        e = e[..., :usable]
        edges = torch.linspace(0, freq_bins, n_bands + 1).long().tolist()
        bands = [e[:, lo:hi].sum(1) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        band = torch.stack(bands, 1)  # (B, n_bands, usable)
        return band.reshape(band.shape[0], n_bands, n_tiles, -1).sum(-1).flatten(1)

    ratio = 10 * torch.log10((tiles(ew) + 1e-9) / (tiles(ex) + 1e-9))  # dB, (B, tiles)
    weights = torch.softmax(ratio, dim=-1)
    return (weights * ratio).sum(-1).mean()


# --------------------------------------------------------------------------------------------
# detector terms


def localization_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy of the 2 detection logits against 0/1 labels (B, T)."""
    return F.cross_entropy(logits[:, :2], labels.long())


def message_loss(logits: Tensor, message: Tensor, marked: Tensor) -> Tensor:
    """Per-sample BCE of every bit logit, counted only on marked samples.

    Taking the loss on time-averaged logits left the bits at chance for thousands of steps
    here; per-sample targets give every sample a gradient (shared/DATA.md).
    """
    bit_logits = logits[:, 2:]  # (B, nbits, T)
    target = message.to(bit_logits.dtype)[..., None].expand_as(bit_logits)
    bce = F.binary_cross_entropy_with_logits(bit_logits, target, reduction="none")
    weight = marked.to(bit_logits.dtype)[:, None, :]
    denom = weight.sum() * bit_logits.shape[1]
    return (bce * weight).sum() / denom.clamp_min(1.0)


def bit_visibility_loss(wm: Tensor, wm_flipped: Tensor, min_ratio: float) -> Tensor:
    """Hinge on log(||wm' - wm||² / ||wm||²): a one-bit flip must change the watermark."""
    change = (wm_flipped - wm).pow(2).flatten(1).sum(-1)
    energy = wm.pow(2).flatten(1).sum(-1).detach()
    ratio = torch.log10((change + EPS) / (energy + EPS))
    return F.relu(math.log10(min_ratio) - ratio).mean()


SPEC_CODE_BAND = (500.0, 7500.0)  # Hz: where the spectral teacher code's band pairs lie


@functools.lru_cache(4)
def spectral_code_bands(
    nbits: int,
    n_fft: int = 512,
    sample_rate: int = 16000,
    lo_hz: float = SPEC_CODE_BAND[0],
    hi_hz: float = SPEC_CODE_BAND[1],
) -> tuple[tuple[int, int, int], ...]:
    """Bit k's two half-bands (start bin, middle bin, end bin) between lo_hz and hi_hz."""
    bin_hz = sample_rate / n_fft
    edges = [
        round((lo_hz + (hi_hz - lo_hz) * i / (2 * nbits)) / bin_hz) for i in range(2 * nbits + 1)
    ]
    return tuple((edges[2 * k], edges[2 * k + 1], edges[2 * k + 2]) for k in range(nbits))


def spectral_code_contrast(
    wm: Tensor, nbits: int, band: tuple[float, float] = SPEC_CODE_BAND, n_fft: int = 512
) -> Tensor:
    """(B, nbits) dB contrast of each bit's lower half-band over its upper half-band.

    The watermark's time-averaged power spectrum, read as nbits adjacent band pairs. A code
    in the long-term spectrum survives any time shift, which a waveform code does not.
    """
    power = _stft_mag(wm, n_fft, hop=n_fft // 2).pow(2).mean(-1)  # (B, F)
    out = []
    for a, m, b in spectral_code_bands(nbits, n_fft, 16000, *band):
        low = power[:, a:m].mean(-1)
        high = power[:, m:b].mean(-1)
        out.append(10 * torch.log10((low + EPS) / (high + EPS)))
    return torch.stack(out, dim=-1)


def spectral_code_loss(
    wm: Tensor, message: Tensor, margin_db: float, band: tuple[float, float] = SPEC_CODE_BAND
) -> Tensor:
    """Hinge: bit 1 -> lower half-band >= margin_db louder than the upper one, bit 0 the reverse.

    A teacher the generator can follow from step one: it gets a gradient for every bit
    without waiting for the detector to find a code (bits stuck at chance for 30k steps).
    """
    contrast = spectral_code_contrast(wm, message.shape[-1], band)
    return signed_hinge(contrast, message, margin_db)


def signed_hinge(score: Tensor, message: Tensor, margin: float) -> Tensor:
    """Mean of relu(margin - s * score), s = +1 for a 1 bit, -1 for a 0 bit."""
    sign = 2.0 * message.to(score.dtype) - 1.0
    return F.relu(margin - sign * score).mean()


# Hz, the code's own default: the telephone band survives the attack suite's filters
TEMPLATE_BAND = (TemplateCode.lo_hz, TemplateCode.hi_hz)


def grid_templates(
    nbits: int, hop: int = 320, band: tuple[float, float] = TEMPLATE_BAND, sample_rate: int = 16000
) -> Tensor:
    """(nbits, hop) orthonormal band-limited noise templates, one generator frame long."""
    return TemplateCode(lo_hz=band[0], hi_hz=band[1]).templates(nbits, hop, sample_rate)


def template_code_correlation(
    wm: Tensor, nbits: int, hop: int = 320, band: tuple[float, float] = TEMPLATE_BAND
) -> Tensor:
    """(B, nbits): each bit's template correlated with the watermark frame by frame on the
    generator's grid (sample 0 of its input), summed over frames, over sqrt(frames x energy):
    1 when all of the watermark is that template, 1/sqrt(nbits) per bit for an even code."""
    frames = wm.shape[-1] // hop
    z = wm[..., : frames * hop].reshape(wm.shape[0], frames, hop)
    t = grid_templates(nbits, hop, band).to(wm)
    corr = torch.einsum("bfh,kh->bk", z, t)
    return corr / (frames * z.pow(2).sum((1, 2))).sqrt().clamp_min(EPS)[:, None]


def template_code_loss(
    wm: Tensor, message: Tensor, margin: float, band: tuple[float, float] = TEMPLATE_BAND
) -> Tensor:
    """Hinge: bit k's template sits in every frame of the watermark with the bit's sign, at
    least ``margin`` (correlation, see above). A coherent, grid-locked code: simulated at 27 dB
    under held-out speech, read in step with the grid, 16 such bits decode exactly in 98 %
    of 1 s windows (a long-term-spectrum code: 0.64-0.75 per bit); it needs the reader
    within 1-2 samples of the grid."""
    corr = template_code_correlation(wm, message.shape[-1], band=band)
    return signed_hinge(corr, message, margin)


def mean_message_loss(logits: Tensor, message: Tensor, marked: Tensor) -> Tensor:
    """BCE of the bit logits averaged over each example's marked samples: the decode users see."""
    weight = marked.to(logits.dtype)[:, None, :]
    count = weight.sum(-1)
    mean_logit = (logits[:, 2:] * weight).sum(-1) / count.clamp_min(1.0)
    has = count.squeeze(1) > 0
    if not has.any():
        return logits.new_zeros(())
    return F.binary_cross_entropy_with_logits(mean_logit[has], message[has].to(logits.dtype))


# --------------------------------------------------------------------------------------------
# localization masks

KEEP, REVERT, ZERO, SWAP = 0, 1, 2, 3
MASK_MODES = {"keep": KEEP, "revert": REVERT, "zero": ZERO, "swap": SWAP}


def apply_masks(
    watermarked: Tensor, original: Tensor, other: Tensor, modes: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-sample mask modes (B, T) → (audio (B, 1, T), labels (B, T) 1 = still marked).

    KEEP keeps the watermarked sample, REVERT puts the original back, ZERO silences it,
    SWAP replaces it with unrelated (unmarked) audio.
    """
    m = modes[:, None, :]
    out = torch.where(m == KEEP, watermarked, original)
    out = torch.where(m == ZERO, torch.zeros_like(out), out)
    out = torch.where(m == SWAP, other, out)
    return out, (modes == KEEP).to(watermarked.dtype)


def random_mask_modes(
    batch: int,
    length: int,
    generator: torch.Generator,
    prob: float = 0.5,
    max_windows: int = 3,
    min_frac: float = 0.1,
    max_frac: float = 0.4,
) -> Tensor:
    """Mode map (B, T): each row, with probability prob, gets 1-max_windows windows of
    REVERT/ZERO/SWAP, each min_frac..max_frac of the clip; the rest is KEEP."""
    modes = torch.full((batch, length), KEEP, dtype=torch.long)
    draws = torch.rand(batch, 2 + 4 * max_windows, generator=generator)
    for b in range(batch):
        if draws[b, 0] >= prob:
            continue
        n = 1 + int(draws[b, 1] * max_windows) % max_windows
        for k in range(n):
            u = draws[b, 2 + 4 * k : 6 + 4 * k]
            size = int((min_frac + (max_frac - min_frac) * float(u[0])) * length)
            start = int(float(u[1]) * (length - size))
            mode = (REVERT, ZERO, SWAP)[int(u[2] * 3) % 3]
            modes[b, start : start + size] = mode
    return modes
