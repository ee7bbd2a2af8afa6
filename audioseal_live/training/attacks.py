"""Attack suite: training augmentation and robustness evaluation for 16 kHz watermarks.

Every attack maps a (B, 1, T) float tensor to a tensor of the same shape, dtype and device. All
are pure torch and differentiable except the lossy codecs, which pass gradients straight through
(output = x + (codec(x) - x).detach()). Filters and resamplers are our own windowed-sinc FIRs.

Lossy codecs: the `soundfile` wheel bundles libsndfile with LAME/mpg123 (MP3), libopus and
libvorbis, so MP3/Opus/Vorbis need no extra package; they are skipped (left out of the
registries) when the installed libsndfile lacks them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import cache, lru_cache, partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SR = 16_000
Attack = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------------------------
# helpers


def _rand(generator: torch.Generator | None, like: Tensor, *shape: int) -> Tensor:
    """Uniform [0, 1) noise drawn on the generator's device, then moved to `like`'s."""
    device = generator.device if generator is not None else like.device
    return torch.rand(*shape, generator=generator, device=device).to(like.device, like.dtype)


def _randn(generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device).to(like.device, like.dtype)


def _rms(x: Tensor) -> Tensor:
    """Per-item RMS, shape (B, 1, 1)."""
    return x.pow(2).mean(dim=(-2, -1), keepdim=True).add(1e-12).sqrt()


def _fit_length(y: Tensor, length: int) -> Tensor:
    """Crop or zero-pad the end so the output keeps the input length."""
    if y.shape[-1] >= length:
        return y[..., :length]
    return F.pad(y, (0, length - y.shape[-1]))


def fft_convolve(x: Tensor, kernel: Tensor, centered: bool) -> Tensor:
    """Convolve (B, C, T) with a 1-D kernel via FFT; output length T.

    `centered` keeps a symmetric (linear-phase) FIR aligned with its input; otherwise the
    convolution is causal (reverb, echo: the tail starts after the direct sound).
    """
    t, k = x.shape[-1], kernel.shape[-1]
    n = t + k - 1
    spec = torch.fft.rfft(x, n) * torch.fft.rfft(kernel.to(x.dtype), n)
    y = torch.fft.irfft(spec, n)
    start = (k - 1) // 2 if centered else 0
    return y[..., start : start + t]


@lru_cache(maxsize=64)
def _lowpass_taps(cutoff_hz: float, num_taps: int) -> Tensor:
    """Windowed-sinc lowpass (Blackman: ~74 dB stopband, transition ~5.5 * SR / num_taps)."""
    n = torch.arange(num_taps, dtype=torch.float64) - (num_taps - 1) / 2
    fc = cutoff_hz / SR
    taps = (
        2
        * fc
        * torch.sinc(2 * fc * n)
        * torch.blackman_window(num_taps, periodic=False, dtype=torch.float64)
    )
    return (taps / taps.sum()).float()


def _delta(num_taps: int) -> Tensor:
    d = torch.zeros(num_taps)
    d[num_taps // 2] = 1.0
    return d


# ----------------------------------------------------------------------------------------------
# attacks with explicit parameters


def identity(x: Tensor) -> Tensor:
    return x


def gain(x: Tensor, db: float) -> Tensor:
    """Volume change by `db` decibels (boost > 0, duck < 0)."""
    return x * (10.0 ** (db / 20.0))


def polarity(x: Tensor) -> Tensor:
    return -x


def desync(x: Tensor, samples: int) -> Tensor:
    """Shift earlier by ``samples`` (zeros at the end): a live chain never keeps the frame grid."""
    return F.pad(x[..., samples:], (0, samples))


def clipping(x: Tensor, ratio: float) -> Tensor:
    """Hard clipping at `ratio` times each item's peak (an overdriven input)."""
    level = x.abs().amax(dim=(-2, -1), keepdim=True) * ratio
    return torch.minimum(torch.maximum(x, -level), level)


def white_noise(x: Tensor, snr_db: float, generator: torch.Generator | None = None) -> Tensor:
    """Add Gaussian white noise at `snr_db` relative to each item's power."""
    noise = _randn(generator, x)
    return x + noise * (_rms(x) / _rms(noise)) * 10 ** (-snr_db / 20)


def pink_noise(x: Tensor, snr_db: float, generator: torch.Generator | None = None) -> Tensor:
    """Add 1/f noise at `snr_db` (most of its power sits low, where speech is)."""
    t = x.shape[-1]
    spec = torch.fft.rfft(_randn(generator, x))
    f = torch.arange(spec.shape[-1], device=x.device, dtype=x.dtype).clamp(min=1)
    noise = torch.fft.irfft(spec / f.sqrt(), t)
    return x + noise * (_rms(x) / _rms(noise)) * 10 ** (-snr_db / 20)


def lowpass(x: Tensor, cutoff_hz: float, num_taps: int = 1023) -> Tensor:
    return fft_convolve(x, _lowpass_taps(float(cutoff_hz), num_taps).to(x.device), True)


def highpass(x: Tensor, cutoff_hz: float, num_taps: int = 1023) -> Tensor:
    """Spectral inversion of the lowpass (odd tap count keeps it linear-phase)."""
    taps = _delta(num_taps) - _lowpass_taps(float(cutoff_hz), num_taps)
    return fft_convolve(x, taps.to(x.device), True)


def bandpass(x: Tensor, low_hz: float, high_hz: float, num_taps: int = 1023) -> Tensor:
    taps = _lowpass_taps(float(high_hz), num_taps) - _lowpass_taps(float(low_hz), num_taps)
    return fft_convolve(x, taps.to(x.device), True)


def smooth(x: Tensor, window: int) -> Tensor:
    """Moving average over `window` samples (a crude lowpass with spectral nulls)."""
    kernel = torch.full((window,), 1.0 / window, device=x.device)
    return fft_convolve(x, kernel, True)


def echo(x: Tensor, delay_s: float, volume: float) -> Tensor:
    """One delayed, attenuated copy added to the signal."""
    d = int(round(delay_s * SR))
    return x + volume * _fit_length(F.pad(x, (d, 0)), x.shape[-1])


def synthetic_rir(
    rt60_s: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """Direct sound plus exponentially decaying noise tail (energy -60 dB at rt60), unit norm."""
    n = max(int(rt60_s * SR), 2)
    gen_device = generator.device if generator is not None else device
    tail = torch.randn(n, generator=generator, device=gen_device).to(device)
    t = torch.arange(n, device=device) / SR
    rir = tail * torch.exp(-6.9 * t / rt60_s) * 0.3
    rir[0] = 1.0
    return rir / rir.norm()


def reverb(x: Tensor, rt60_s: float, generator: torch.Generator | None = None) -> Tensor:
    return fft_convolve(x, synthetic_rir(rt60_s, generator, x.device), False)


@lru_cache(maxsize=32)
def _resample_kernel(orig: int, new: int, zeros: int, rolloff: float) -> tuple[Tensor, int]:
    """Polyphase windowed-sinc (Hann) kernel for rational resampling orig -> new (reduced)."""
    base = min(orig, new) * rolloff  # cutoff below the lower Nyquist: band-limited
    width = math.ceil(zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None] / orig
    t = (-torch.arange(new, dtype=torch.float64)[:, None] / new + idx).clamp(
        -zeros / base, zeros / base
    ) * base
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    kernel = torch.sinc(t) * window * base / orig
    return kernel[:, None].float(), width


def resample(
    x: Tensor, orig_sr: int, new_sr: int, zeros: int = 24, rolloff: float = 0.97
) -> Tensor:
    """Band-limited resampling of (..., T) from orig_sr to new_sr (own sinc polyphase)."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    if orig == new:
        return x
    kernel, width = _resample_kernel(orig, new, zeros, rolloff)
    shape, t = x.shape[:-1], x.shape[-1]
    flat = F.pad(x.reshape(-1, 1, t), (width, width + orig))
    y = F.conv1d(flat, kernel.to(x.device, x.dtype), stride=orig)  # (N, new, frames)
    y = y.transpose(1, 2).reshape(len(flat), -1)[:, : math.ceil(new * t / orig)]
    return y.reshape(*shape, -1)


def resample_roundtrip(x: Tensor, rate: int) -> Tensor:
    """16 kHz -> `rate` -> 16 kHz, same length (a channel or file at another rate)."""
    return _fit_length(resample(resample(x, SR, rate), rate, SR), x.shape[-1])


def speed(x: Tensor, factor: float) -> Tensor:
    """Play `factor` times faster (pitch moves too), cropped/zero-padded to the input length."""
    num = int(round(factor * 100))  # factor in steps of 0.01 keeps the resampling ratio small
    return _fit_length(resample(x, num, 100), x.shape[-1])


# --- lossy codecs through libsndfile (not differentiable: straight-through gradient)

CODECS = {"mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS"), "vorbis": ("OGG", "VORBIS")}


def _codec_numpy(audio: np.ndarray, codec: str, quality: float) -> np.ndarray:
    import soundfile as sf

    fmt, subtype = CODECS[codec]
    extra = {"bitrate_mode": "CONSTANT"} if codec == "mp3" else {}
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format=fmt, subtype=subtype, compression_level=quality, **extra)
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def _align(decoded: np.ndarray, ref: np.ndarray, max_lag: int = 2400) -> np.ndarray:
    """Undo encoder delay/padding (if any) by cross-correlation, then fit to ref's length."""
    n = len(ref)
    if len(decoded) != n:
        size = len(decoded) + n
        corr = np.fft.irfft(np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(ref, size)), size)
        lags = np.r_[corr[: max_lag + 1], corr[-max_lag:]]
        lag = int(np.argmax(lags))
        lag = lag if lag <= max_lag else lag - len(lags)
        decoded = decoded[lag:] if lag >= 0 else np.r_[np.zeros(-lag, np.float32), decoded]
    return np.pad(decoded[:n], (0, max(0, n - len(decoded))))


def codec(x: Tensor, name: str, quality: float) -> Tensor:
    """Encode and decode each item (quality = libsndfile compression level, 0 best .. 1)."""
    ref = x.detach().cpu().numpy().astype(np.float32)
    out = np.empty_like(ref)
    for idx in np.ndindex(*ref.shape[:-1]):
        peak = max(float(np.abs(ref[idx]).max()), 1.0)  # codecs take [-1, 1]
        out[idx] = _align(_codec_numpy(ref[idx] / peak, name, quality), ref[idx]) * peak
    y = torch.from_numpy(out).to(x.device, x.dtype)
    return x + (y - x).detach()


@cache
def codec_available(name: str) -> bool:
    try:
        _codec_numpy(np.zeros(SR, np.float32), name, 0.5)
    except Exception:  # libsndfile built without this codec, or soundfile missing
        return False
    return True


# ----------------------------------------------------------------------------------------------
# evaluation registry: fixed settings so numbers compare across runs


def _seeded(fn: Callable[..., Tensor], seed: int, **kw) -> Attack:
    """Random attacks get a fixed generator per call, so evaluation is repeatable."""

    def attack(x: Tensor) -> Tensor:
        return fn(x, generator=torch.Generator().manual_seed(seed), **kw)

    return attack


ATTACKS: dict[str, Attack] = {
    "none": identity,
    "boost_6db": partial(gain, db=6.0),
    "duck_6db": partial(gain, db=-6.0),
    "white_noise_20db": _seeded(white_noise, 1, snr_db=20.0),
    "white_noise_10db": _seeded(white_noise, 2, snr_db=10.0),
    "pink_noise_20db": _seeded(pink_noise, 3, snr_db=20.0),
    "lowpass_3500": partial(lowpass, cutoff_hz=3500.0),
    "lowpass_2000": partial(lowpass, cutoff_hz=2000.0),
    "highpass_500": partial(highpass, cutoff_hz=500.0),
    "highpass_1500": partial(highpass, cutoff_hz=1500.0),
    "bandpass_300_3400": partial(bandpass, low_hz=300.0, high_hz=3400.0),
    "echo": partial(echo, delay_s=0.25, volume=0.4),
    "reverb": _seeded(reverb, 4, rt60_s=0.5),
    "resample_8k": partial(resample_roundtrip, rate=8000),
    "resample_22k": partial(resample_roundtrip, rate=22050),
    "resample_44k": partial(resample_roundtrip, rate=44100),
    "resample_48k": partial(resample_roundtrip, rate=48000),
    "speed_0.9": partial(speed, factor=0.9),
    "speed_1.1": partial(speed, factor=1.1),
    "smooth_8": partial(smooth, window=8),
    "polarity": polarity,
    "clip_50": partial(clipping, ratio=0.5),
    "desync_1": partial(desync, samples=1),
    "desync_100": partial(desync, samples=100),
}
_EVAL_CODECS = {"mp3_64k": ("mp3", 0.6), "opus_32k": ("opus", 0.9), "vorbis_40k": ("vorbis", 0.8)}
for _name, (_codec, _quality) in _EVAL_CODECS.items():
    if codec_available(_codec):
        ATTACKS[_name] = partial(codec, name=_codec, quality=_quality)


# ----------------------------------------------------------------------------------------------
# training: a random attack family with random parameters


def _uniform(generator: torch.Generator | None, like: Tensor, low: float, high: float) -> float:
    return low + (high - low) * float(_rand(generator, like, 1))


def _choice(generator: torch.Generator | None, like: Tensor, options: list) -> object:
    return options[int(_rand(generator, like, 1) * len(options)) % len(options)]


def _bandpass_random(x: Tensor, g: torch.Generator | None) -> Tensor:
    low = _uniform(g, x, 100, 600)
    return bandpass(x, low, _uniform(g, x, max(low + 1000, 2500), 6000))


def _speed_factor(g: torch.Generator | None, like: Tensor) -> float:
    return _uniform(g, like, 0.9, 1.1)


def _codec_random(name: str) -> Callable[[Tensor, torch.Generator | None], Tensor]:
    return lambda x, g: codec(x, name, _uniform(g, x, 0.3, 0.9))


TRAINING_ATTACKS: dict[str, Callable[[Tensor, torch.Generator | None], Tensor]] = {
    "none": lambda x, g: x,
    "gain": lambda x, g: gain(x, _uniform(g, x, -12, 6)),
    "white_noise": lambda x, g: white_noise(x, _uniform(g, x, 5, 40), g),
    "pink_noise": lambda x, g: pink_noise(x, _uniform(g, x, 5, 40), g),
    "lowpass": lambda x, g: lowpass(x, _uniform(g, x, 1500, 6000)),
    "highpass": lambda x, g: highpass(x, _uniform(g, x, 100, 2000)),
    "bandpass": _bandpass_random,
    "echo": lambda x, g: echo(x, _uniform(g, x, 0.05, 0.5), _uniform(g, x, 0.1, 0.6)),
    "reverb": lambda x, g: reverb(x, _uniform(g, x, 0.1, 1.0), g),
    "resample": lambda x, g: resample_roundtrip(
        x, _choice(g, x, [8000, 11025, 22050, 24000, 44100, 48000])
    ),
    "speed": lambda x, g: speed(x, _speed_factor(g, x)),
    "smooth": lambda x, g: smooth(x, int(_uniform(g, x, 2, 20))),
    "polarity": lambda x, g: polarity(x),
    "clip": lambda x, g: clipping(x, _uniform(g, x, 0.3, 0.9)),
}
for _codec in CODECS:
    if codec_available(_codec):
        TRAINING_ATTACKS[_codec] = _codec_random(_codec)


def _pick_family(
    x: Tensor, generator: torch.Generator | None, weights: dict[str, float] | None
) -> str:
    names = list(TRAINING_ATTACKS)
    w = (
        [1.0] * len(names)
        if weights is None
        else [max(float(weights.get(n, 0.0)), 0.0) for n in names]
    )
    total = sum(w)
    if total <= 0:
        raise ValueError("random_attack: all attack weights are zero or unknown")
    u = float(_rand(generator, x, 1)) * total
    name = next(n for n, wi in zip(names, w, strict=True) if wi > 0)  # float round-off fallback
    for n, wi in zip(names, w, strict=True):
        if wi > 0 and u < wi:
            name = n
            break
        u -= wi
    return name


def random_attack(
    x: Tensor, generator: torch.Generator | None = None, weights: dict[str, float] | None = None
) -> tuple[Tensor, str]:
    """Apply one attack family from TRAINING_ATTACKS with random parameters.

    `weights` (family -> relative weight; missing families weigh 0 once any is given) lets a
    trainer favour the attacks the detector currently fails, e.g. weight = 1 - accuracy.
    Returns the attacked batch and the family name.
    """
    name = _pick_family(x, generator, weights)
    return TRAINING_ATTACKS[name](x, generator), name


def random_attack_with_labels(
    x: Tensor,
    labels: Tensor,
    generator: torch.Generator | None = None,
    weights: dict[str, float] | None = None,
) -> tuple[Tensor, Tensor, str]:
    """:func:`random_attack` on audio (B, 1, T) with per-sample labels (B, T): an attack that
    moves samples in time (speed) moves the labels with them (its zero-padded end: unmarked).
    The same draws as random_attack, so a run's random stream does not change."""
    name = _pick_family(x, generator, weights)
    if name != "speed":
        return TRAINING_ATTACKS[name](x, generator), labels, name
    factor = _speed_factor(generator, x)  # the draw TRAINING_ATTACKS["speed"] makes
    moved = speed(labels[:, None, :], factor)[:, 0] > 0.5
    return speed(x, factor), moved.to(labels.dtype), name
