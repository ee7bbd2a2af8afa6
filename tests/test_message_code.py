"""The grid template code's reader: offline, as a stream, in a card, a detector and the monitor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioseal_live.models import AudioSealDetector, small_card
from audioseal_live.models.cards import ModelCard
from audioseal_live.models.loader import default_model_dir
from audioseal_live.models.message_code import CodeReader, TemplateCode

HOP, RATE = 320, 16000
MSG = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0])
CODE = TemplateCode()


def host(seconds: float, seed: int = 0) -> torch.Tensor:
    """Speech-like host: noise under a slow loudness envelope with silent gaps, and a strong
    200 Hz harmonic series that a reader without whitening trips over."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * RATE)
    t = torch.arange(n) / RATE
    env = (torch.sin(2 * torch.pi * 3 * t + torch.rand(1, generator=g) * 6) > -0.3).float()
    voice = sum(torch.sin(2 * torch.pi * 200 * k * t) / k for k in range(1, 12))
    return 0.3 * env * (0.5 * torch.randn(n, generator=g) + voice)


def coded(x: torch.Tensor, bits: torch.Tensor, snr_db: float = 25.0) -> torch.Tensor:
    """``x`` plus the code on the grid of sample 0, ``snr_db`` below ``x``."""
    t = CODE.templates(16, HOP, RATE)
    frame = ((2 * bits.float() - 1) @ t).repeat(x.shape[-1] // HOP + 1)[: x.shape[-1]]
    scale = x.norm() / frame.norm() * 10 ** (-snr_db / 20)
    return x + scale * frame


def test_templates_are_pinned() -> None:
    """Shipped models carry these exact templates: a torch or platform change that altered
    them would silently break every model, so their first values are pinned here."""
    t = CODE.templates(16, HOP, RATE)
    assert torch.allclose(t @ t.T, torch.eye(16), atol=1e-5)
    first = torch.tensor([-0.0367014408, 0.0378183089, 0.0727617145, 0.0581474155])
    assert torch.allclose(t[0, :4], first, atol=1e-6)
    spec = torch.fft.rfft(t).abs()
    assert float(spec[:, ~CODE.band_mask(HOP, RATE)].max()) < 1e-4  # band-limited


@pytest.mark.parametrize("shift", [0, 1, 123, 319])
def test_reader_finds_grid_and_bits_at_any_shift(shift: int) -> None:
    y = coded(host(2.0), MSG)[shift : shift + RATE]
    r = CodeReader(CODE, 16).read_offline(y[None])
    assert torch.equal(r.bits[0], MSG)
    assert int(r.lag[0]) == (-shift) % HOP  # the generator's grid, found
    assert float(r.sync[0]) >= 5.0
    assert float(r.probabilities[0].sub(MSG.float()).abs().max()) < 0.5


def test_unmarked_audio_has_no_sync_and_inversion_flips_bits() -> None:
    reader = CodeReader(CODE, 16)
    plain = torch.stack([host(1.0, seed) for seed in range(8)])
    assert float(reader.read_offline(plain).sync.max()) < 5.0
    y = coded(host(1.0), MSG)
    assert torch.equal(reader.read_offline(-y[None]).bits[0], 1 - MSG)


def test_whitening_reads_through_a_strong_harmonic_host() -> None:
    """40 dB below a harmonic host, 3 s: the whitened fold reads every bit of six hosts (an
    unwhitened fold misses a bit in two of them)."""
    y = torch.stack([coded(host(3.0, seed=s), MSG, snr_db=40.0) for s in range(4, 10)])
    assert bool((CodeReader(CODE, 16).read_offline(y).bits == MSG).all())


def test_stream_equals_offline_and_window_forgets() -> None:
    y = coded(host(2.0), MSG)[None]
    whole = CodeReader(CODE, 16).read_offline(y)
    stream = CodeReader(CODE, 16)
    rng = np.random.default_rng(0)
    pos = 0
    while pos < y.shape[-1]:
        n = int(rng.integers(1, 900))
        stream.push(y[:, pos : pos + n])
        pos += n
    r = stream.read()
    assert r is not None and stream.frames == y.shape[-1] // HOP
    assert torch.equal(r.bits, whole.bits) and torch.allclose(r.z, whole.z, atol=1e-4)
    # a 1 s window: after 2 s of unmarked audio the code is gone from it
    win = CodeReader(CODE, 16, window_frames=50)
    win.push(y)
    assert float(win.read().sync[0]) >= 5.0  # type: ignore[union-attr]
    for k in range(20):
        win.push(host(0.1, seed=100 + k)[None])
    assert win.frames <= 50 + 5 and float(win.read().sync[0]) < 5.0  # type: ignore[union-attr]
    assert CodeReader(CODE, 16).read() is None


def test_card_round_trip_and_validation(tmp_path) -> None:
    card = small_card("detector").replace(template_code=TemplateCode(lo_hz=400.0))
    card.save(tmp_path / "d.json")
    assert ModelCard.load(tmp_path / "d.json").template_code == TemplateCode(lo_hz=400.0)
    data = card.to_dict()
    with pytest.raises(ValueError, match="template_code band"):
        ModelCard.from_dict({**data, "template_code": {"lo_hz": 300.0, "hi_hz": 9000.0}})
    with pytest.raises(ValueError, match="template_code must be"):
        ModelCard.from_dict({**data, "template_code": {"seed": 1, "bogus": 2}})
    assert ModelCard.from_dict({**data, "template_code": None}).template_code is None
    with pytest.raises(ValueError, match="integer seed"):
        ModelCard.from_dict({**data, "template_code": {"seed": "abc"}})


@pytest.mark.parametrize("n", [1, 100, 319])
def test_detector_with_a_code_takes_audio_shorter_than_a_frame(n: int) -> None:
    det = AudioSealDetector(small_card("detector").replace(template_code=CODE)).eval()
    with torch.inference_mode():
        probs, msg = det(torch.randn(2, 1, n))
    assert probs.shape == (2, 2, n) and torch.equal(msg, torch.full((2, 16), 0.5))


def test_detector_with_a_code_reads_its_message_with_the_reader() -> None:
    torch.manual_seed(0)
    det = AudioSealDetector(small_card("detector").replace(template_code=CODE)).eval()
    plain = AudioSealDetector(small_card("detector")).eval()
    plain.load_state_dict(det.state_dict())  # same weights: only the message path differs
    y = coded(host(2.0), MSG)[None, None, 77:]
    with torch.inference_mode():
        p, msg = det.detect_watermark(y)
        p0, msg0 = plain.detect_watermark(y)
    assert torch.equal(msg[0], MSG.int())
    assert torch.equal(p, p0) and not torch.equal(msg0[0], MSG.int())  # a random head


def test_monitor_reads_the_code_live() -> None:
    """The live monitor with a real (random-weight) detector whose card has a code: the
    bits come from the code window, read in the polarity the detector chose."""
    from audioseal_live.engine.model import TorchDetector
    from audioseal_live.engine.monitor import DetectorMonitor

    torch.manual_seed(0)
    det = TorchDetector(AudioSealDetector(small_card("detector").replace(template_code=CODE)))
    for sign in (1.0, -1.0):
        mon = DetectorMonitor(det, RATE, message=lambda: tuple(MSG.tolist()), vote_s=2.0)
        mon.reset()
        x = (sign * coded(host(4.0, seed=7), MSG)).numpy().astype(np.float32)
        mon.ring.write(x)
        mon.step()
        d = mon.detection
        assert d.code_sync is not None and d.code_sync >= 5.0
        want = tuple(MSG.tolist()) if not d.inverted else tuple((1 - MSG).tolist())
        assert d.bits == (want if sign > 0 else tuple((1 - torch.tensor(want)).tolist()))
        mon.stop()


@pytest.mark.skipif(
    not (default_model_dir() / "detector.json").is_file(), reason="no shipped default model"
)
def test_default_model_through_a_telephone_band_cut_anywhere_and_inverted() -> None:
    """The shipped model's code read where its network's detection is not (8 kHz band, a
    cut off the grid), and inverted: marked, the right bits, offline and in the live monitor.
    Inverted *and* band-limited, offline reads the complement (the polarity check needs the
    bit head, which reads nothing in the telephone band; see the model card); the monitor,
    which knows the message, and `detect` given it, read the polarity from the message."""
    from audioseal_live import AudioSeal
    from audioseal_live.engine.demo import speech
    from audioseal_live.engine.model import TorchDetector
    from audioseal_live.engine.monitor import DetectorMonitor
    from audioseal_live.training.attacks import resample_roundtrip

    gen, det = AudioSeal.load_generator(), AudioSeal.load_detector()
    x = torch.from_numpy(speech(4.0, RATE)).view(1, 1, -1)
    want = tuple(MSG.tolist())
    with torch.inference_mode():
        y = gen(x, message=MSG[None])[..., 777:]
        phone = resample_roundtrip(y, 8000)
        p, bits = det.detect_watermark(torch.cat([phone, -y, -phone]))
        p0, _ = det.detect_watermark(x)
    assert float(p.min()) > 0.9 and float(p0[0]) < 0.1
    assert torch.equal(bits[:2], MSG.int().expand(2, -1))
    assert torch.equal(bits[2], 1 - MSG.int())  # a sign code alone cannot tell
    # (signal, inverted, polarity taken from the message: only where nothing else told it)
    for signal, inverted, guessed in (
        (phone, False, False),
        (-y, True, False),
        (-phone, True, True),
    ):
        mon = DetectorMonitor(TorchDetector(det), RATE, message=lambda: want)
        mon.reset()
        mon.ring.write(signal.reshape(-1).numpy())
        mon.step()
        d = mon.detection
        assert d.prob_smoothed > 0.9 and d.match and d.inverted == inverted, d
        assert d.polarity_from_message == guessed, d
        mon.stop()


def test_streaming_detector_reads_the_message_over_the_stream_so_far() -> None:
    """While streaming, det(x) returns the code read over everything streamed so far (its
    folded frames are carried state: traced steps and select_streams keep them)."""
    from audioseal_live.blocks.traced import StreamStep

    torch.manual_seed(0)
    det = AudioSealDetector(small_card("detector").replace(template_code=CODE)).eval()
    det.requires_grad_(False)
    y = torch.stack([coded(host(2.0, seed=s), MSG if s == 0 else 1 - MSG) for s in (0, 1)])
    y = y[:, None, 123 : 123 + 320 * 90]
    whole = CodeReader(CODE, 16).read_offline(y).probabilities
    step = StreamStep(det, lambda c: det(c))
    with torch.inference_mode(), det.streaming(2):
        for i in range(0, 320 * 60, 640):
            _, msg = step(y[..., i : i + 640])
        step.release()
        det.select_streams([1])  # the second signal carries on alone, its sums intact
        for i in range(320 * 60, y.shape[-1], 640):
            _, msg = det(y[1:, :, i : i + 640])
    assert step.traced_calls > 20
    assert torch.allclose(msg, whole[1:], atol=1e-4)
    assert torch.equal((msg[0] > 0.5).long(), 1 - MSG)
    # its per-sample P (the detection rows of the head alone) is the offline network's
    with torch.inference_mode():
        offline = torch.softmax(det.logits(y)[:, :2], dim=1)
        with det.streaming(2):
            streamed = torch.cat([det(y[..., i : i + 640])[0] for i in range(0, 320 * 90, 640)], -1)
    assert float((streamed - offline).abs().max()) <= 1e-5


def test_reset_streaming_outside_a_stream_changes_nothing() -> None:
    """It used to arm the streamed head outside a stream: every later offline det(x) then
    folded its code across unrelated inputs (a review found the message of the call before)."""
    torch.manual_seed(0)
    det = AudioSealDetector(small_card("detector").replace(template_code=CODE)).eval()
    a = coded(host(1.0, seed=1), MSG)[None, None]
    b = coded(host(1.0, seed=2), 1 - MSG)[None, None]
    with torch.inference_mode():
        before = det(b)
        det.reset_streaming()
        det(a)
        after = det(b)
    assert not det.is_streaming
    torch.testing.assert_close(after[0], before[0], atol=0, rtol=0)
    torch.testing.assert_close(after[1], before[1], atol=0, rtol=0)
    assert torch.equal((after[1][0] > 0.5).long(), 1 - MSG)


@pytest.mark.parametrize("lo_hz", [300.0, 0.0])
def test_spread_across_lags_is_the_std(lo_hz: float) -> None:
    # the reader takes each bit's spread as an RMS when its templates have no DC (mean over
    # lags 0); a code whose band reaches DC keeps the std itself
    reader = CodeReader(TemplateCode(lo_hz=lo_hz), 16)
    assert reader._no_dc == (lo_hz > 0)
    folded = reader.fold(torch.randn(2, 16000, generator=torch.Generator().manual_seed(3)))
    fast = reader.read(folded)
    reader._no_dc = False  # the std itself
    plain = reader.read(folded)
    assert fast is not None and plain is not None
    torch.testing.assert_close(fast.z, plain.z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.sync, plain.sync, atol=1e-5, rtol=1e-5)
