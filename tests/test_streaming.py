"""Streamed == offline, for the blocks and both models, over many chunk schedules."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from audioseal_live import AudioSealDetector, AudioSealWM, ChunkedStream
from audioseal_live.blocks import StreamingConv1d, StreamingConvTranspose1d, StreamingLSTM
from audioseal_live.blocks.streaming import StreamingRoot
from audioseal_live.errors import MessageError
from audioseal_live.models import OFFICIAL_CARDS, small_card

HOP = 320
TOL = 1e-5


class Wrap(StreamingRoot):
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


@pytest.fixture(scope="module")
def official() -> tuple[AudioSealWM, AudioSealDetector]:
    torch.manual_seed(0)
    gen = AudioSealWM(OFFICIAL_CARDS["audioseal_wm_streaming"]).eval()
    det = AudioSealDetector(OFFICIAL_CARDS["audioseal_detector_streaming"]).eval()
    return gen, det


@pytest.fixture(scope="module")
def small() -> tuple[AudioSealWM, AudioSealDetector]:
    torch.manual_seed(1)
    return AudioSealWM(small_card("generator")).eval(), AudioSealDetector(
        small_card("detector")
    ).eval()


def split(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    out, i = [], 0
    for n in sizes:
        out.append(x[..., i : i + n])
        i += n
    return out


def audio(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, 1, n, generator=g)


# --- blocks ---------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=12),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    dilation=st.integers(1, 3),
)
def test_conv1d_streams_exactly(sizes: list[int], kernel: int, stride: int, dilation: int) -> None:
    stride = min(stride, kernel) if dilation == 1 else 1
    torch.manual_seed(0)
    conv = Wrap(StreamingConv1d(3, 4, kernel, stride=stride, dilation=dilation)).eval()
    x = torch.randn(2, 3, sum(sizes))
    with torch.no_grad():
        whole = conv(x)
        with conv.streaming(2):
            parts = torch.cat([conv(c) for c in split(x, sizes)], dim=-1)
    # Streaming emits the frames the input determines; offline pads the last partial window.
    assert (
        parts.shape[-1]
        == (x.shape[-1] + conv.module.padding_total - conv.module.effective_kernel) // stride + 1
    )
    torch.testing.assert_close(parts, whole[..., : parts.shape[-1]], atol=TOL, rtol=0)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=10), ratio=st.integers(1, 5))
def test_convtranspose_streams_exactly(sizes: list[int], ratio: int) -> None:
    assume(sum(sizes) > 0)  # torch's offline convtr rejects empty input; streaming accepts it
    torch.manual_seed(0)
    convtr = Wrap(StreamingConvTranspose1d(3, 2, 2 * ratio, stride=ratio)).eval()
    x = torch.randn(1, 3, sum(sizes))
    with torch.no_grad():
        whole = convtr(x)
        with convtr.streaming(1):
            parts = torch.cat([convtr(c) for c in split(x, sizes)], dim=-1)
    assert parts.shape[-1] == whole.shape[-1] == x.shape[-1] * ratio
    torch.testing.assert_close(parts, whole, atol=TOL, rtol=0)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=8), layers=st.integers(1, 2))
def test_lstm_streams_exactly(sizes: list[int], layers: int) -> None:
    assume(sum(sizes) > 0)
    torch.manual_seed(0)
    lstm = Wrap(StreamingLSTM(8, num_layers=layers)).eval()
    x = torch.randn(2, 8, sum(sizes))
    with torch.no_grad():
        whole = lstm(x)
        with lstm.streaming(2):
            parts = torch.cat([lstm(c) for c in split(x, sizes)], dim=-1)
    torch.testing.assert_close(parts, whole, atol=TOL, rtol=0)


# --- whole models on whole hops ---------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(hops=st.lists(st.integers(1, 12), min_size=1, max_size=8), seed=st.integers(0, 99))
# always: 100 ms chunks (few-row matmuls with the weight on the left, PyTorch's own conv for
# the wide stride-1 layers) beside 20 ms ones (gemv layouts), then a long one
@example(hops=[5, 5, 1, 1, 12], seed=0)
def test_generator_streams_exactly(official, hops: list[int], seed: int) -> None:
    gen, _ = official
    x = audio(HOP * sum(hops), seed=seed)
    msg = torch.randint(0, 2, (1, 16), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        whole = gen(x, message=msg)
        with gen.streaming(1):
            parts = torch.cat([gen(c, message=msg) for c in split(x, [HOP * h for h in hops])], -1)
    assert (whole - x).abs().max() > 1e-3  # the watermark is there and not trivial
    torch.testing.assert_close(parts, whole, atol=TOL, rtol=0)


@settings(max_examples=8, deadline=None)
@given(hops=st.lists(st.integers(1, 12), min_size=1, max_size=8), seed=st.integers(0, 99))
# always: 100 ms chunks (few-row matmuls with the weight on the left, PyTorch's own conv for
# the wide stride-1 layers) beside 20 ms ones (gemv layouts), then a long one
@example(hops=[5, 5, 1, 1, 12], seed=0)
def test_detector_streams_exactly(official, hops: list[int], seed: int) -> None:
    _, det = official
    x = audio(HOP * sum(hops), seed=seed)
    with torch.inference_mode():
        whole = det.logits(x)
        with det.streaming(1):
            parts = torch.cat([det.logits(c) for c in split(x, [HOP * h for h in hops])], -1)
    torch.testing.assert_close(parts, whole, atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def phased() -> AudioSealDetector:
    torch.manual_seed(2)
    return AudioSealDetector(small_card("detector").replace(sync_phases=4)).eval()


def test_sync_phases_read_the_input_at_delays_of_a_quarter_hop(phased) -> None:
    x = audio(HOP * 6, batch=2, seed=4)
    with torch.inference_mode():
        out = phased.phase_logits(x)  # (B, P, 2 + nbits, T)
        assert out.shape == (2, 4, 18, HOP * 6)
        for k in range(4):
            delayed = torch.nn.functional.pad(x, (k * HOP // 4, 0))[..., : x.shape[-1]]
            torch.testing.assert_close(out[:, k], phased.detector(delayed), atol=TOL, rtol=0)
        torch.testing.assert_close(phased.logits(x), out[:, 0], atol=TOL, rtol=0)
        # detection is phase 0's; the message is that of the phase with the surest bits
        probs, bits = phased(x)
        mean = out[:, :, 2:].mean(-1)
        best = mean.abs().mean(-1).argmax(-1)
        torch.testing.assert_close(probs, torch.softmax(out[:, 0, :2], dim=1))
        torch.testing.assert_close(bits, torch.sigmoid(mean[torch.arange(2), best]))


@settings(max_examples=6, deadline=None)
@given(hops=st.lists(st.integers(1, 7), min_size=1, max_size=6), seed=st.integers(0, 99))
def test_phased_detector_streams_exactly(phased, hops: list[int], seed: int) -> None:
    x = audio(HOP * sum(hops), batch=2, seed=seed)
    with torch.inference_mode():
        p_whole, bits_whole = phased.frame_outputs(x)
        with phased.streaming(2):
            outs = [phased.frame_outputs(c) for c in split(x, [HOP * h for h in hops])]
    torch.testing.assert_close(torch.cat([o[0] for o in outs], -1), p_whole, atol=TOL, rtol=0)
    torch.testing.assert_close(torch.cat([o[1] for o in outs], -1), bits_whole, atol=TOL, rtol=0)


@pytest.mark.parametrize("cut_hops", [1, 5, 6])
def test_selected_streams_carry_on_exactly(phased, cut_hops: int) -> None:
    """Narrowing a running stream to one signal and one phase keeps that entry's state:
    what follows equals the same entry of the stream that kept running whole."""
    x = audio(HOP * 12, batch=2, seed=5)
    cut = HOP * cut_hops
    with torch.inference_mode():
        with phased.streaming(2):
            phased.frame_outputs(x[..., :cut])
            whole = phased.phase_logits(x[..., cut:])  # (2, P, 2 + nbits, T)
        with phased.streaming(2):
            phased.frame_outputs(x[..., :cut])
            phased.select_streams([1], phases=[2])
            assert phased.active_phases == (2,)
            p_one, one = phased.frame_outputs(x[1:, :, cut:])
    assert one.shape == (1, 1, whole.shape[2] - 2, whole.shape[3])  # (B, P, nbits, T)
    torch.testing.assert_close(one[0, 0], whole[1, 2, 2:], atol=TOL, rtol=0)
    torch.testing.assert_close(p_one[0], torch.softmax(whole[1, 2, :2], 0)[1], atol=TOL, rtol=0)
    with phased.streaming(2):  # a new stream runs every phase again
        assert phased.active_phases == (0, 1, 2, 3)
        with pytest.raises(ValueError, match="phases"):
            phased.select_streams([0], phases=[7])
        with pytest.raises(ValueError, match="stream indices"):
            phased.select_streams([2])
    with pytest.raises(RuntimeError, match="running stream"):
        phased.select_streams([0])


def test_generator_selected_stream_keeps_state_and_message() -> None:
    gen = AudioSealWM(small_card("generator")).eval()
    x = audio(HOP * 8, batch=2, seed=6)
    msg = torch.randint(0, 2, (2, gen.nbits), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        whole = gen.get_watermark(x, message=msg)
        with gen.streaming(2):
            gen.get_watermark(x[..., : 3 * HOP], message=msg)
            gen.select_streams([0])
            rest = gen.get_watermark(x[:1, :, 3 * HOP :], message=msg[:1])
    torch.testing.assert_close(rest, whole[:1, :, 3 * HOP :], atol=TOL, rtol=0)


@pytest.mark.parametrize("chunk_hops", [1, 5, 20])
def test_bfloat16_stream_is_close_and_leaves_weights_alone(official, chunk_hops: int) -> None:
    """The opt-in fast mode: bf16 weight copies for the matmuls; ~0.4 % of the watermark."""
    gen, det = official
    x = audio(HOP * 40, seed=3)
    msg = torch.randint(0, 2, (1, 16), generator=torch.Generator().manual_seed(3))
    pieces = split(x, [HOP * chunk_hops] * (40 // chunk_hops))
    with torch.inference_mode():
        wm = gen.get_watermark(x, message=msg)
        logits = det.logits(x)
        with gen.streaming(1, matmul_dtype="bfloat16"):
            wm_fast = torch.cat([gen.get_watermark(c, message=msg) for c in pieces], -1)
        with det.streaming(1, matmul_dtype=torch.bfloat16):
            logits_fast = torch.cat([det.logits(c) for c in pieces], -1)
    err = (wm_fast - wm).abs().max() / wm.abs().max()
    assert 0 < err < 2e-2  # not exact (it is bf16), but far below the watermark itself
    assert (logits_fast - logits).abs().max() / logits.abs().max() < 2e-2
    assert all(p.dtype == torch.float32 for p in gen.parameters())
    with torch.inference_mode(), gen.streaming(1):  # and the next plain stream is exact again
        exact = torch.cat([gen.get_watermark(c, message=msg) for c in pieces], -1)
    torch.testing.assert_close(exact, wm, atol=TOL, rtol=0)


def test_unknown_matmul_dtype_is_refused(small) -> None:
    gen, _ = small
    with pytest.raises(ValueError, match="matmul_dtype"), gen.streaming(1, matmul_dtype="int8"):
        pass
    assert not gen.is_streaming


def test_batched_streaming_and_chunks_of_many_sizes(small) -> None:
    gen, det = small
    x = audio(HOP * 30, batch=3, seed=5)
    msg = torch.randint(0, 2, (3, 16))
    sizes = [HOP * n for n in (1, 2, 5, 1, 10, 3, 8)]
    with torch.inference_mode():
        whole, whole_det = gen(x, message=msg), det(x)[0]
        with gen.streaming(3), det.streaming(3):
            parts = torch.cat([gen(c, message=msg) for c in split(x, sizes)], -1)
            parts_det = torch.cat([det(c)[0] for c in split(x, sizes)], -1)
    torch.testing.assert_close(parts, whole, atol=TOL, rtol=0)
    torch.testing.assert_close(parts_det, whole_det, atol=TOL, rtol=0)


# --- any chunk size through ChunkedStream ---------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([1, 7, 64, 319, 320, 321, 511, 1000]), min_size=1, max_size=14)
)
def test_chunked_stream_any_sizes(small, sizes: list[int]) -> None:
    gen, det = small
    x = audio(sum(sizes), seed=len(sizes))
    padded = torch.nn.functional.pad(x, (0, -x.shape[-1] % HOP))
    msg = torch.randint(0, 2, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        whole, whole_det = gen(padded, message=msg), det.logits(padded)
        with ChunkedStream(gen, message=msg) as stream:
            outs = [stream(c) for c in split(x, sizes)]
            assert [o.shape[-1] for o in outs] == sizes  # equal-length blocks
            outs.append(stream.flush())
        with ChunkedStream(det) as dstream:
            douts = [dstream(c) for c in split(x, sizes)] + [dstream.flush()]
    assert stream.delay == HOP - 1
    streamed = torch.cat(outs, -1)
    assert torch.all(streamed[..., : stream.delay] == 0)  # the reported delay, zero-filled
    torch.testing.assert_close(streamed[..., stream.delay :], whole, atol=TOL, rtol=0)
    torch.testing.assert_close(
        torch.cat(douts, -1)[..., dstream.delay :], whole_det, atol=TOL, rtol=0
    )


def test_chunked_stream_refused_chunks_change_nothing(small) -> None:
    """A chunk the model refuses (NaN, 1-D) raised but had already been buffered: the
    stream went out of step (blocks of 459, 500, 460 for 500s) and lost audio."""
    gen, det = small
    x = audio(2500, seed=21)
    msg = torch.randint(0, 2, (1, 16), generator=torch.Generator().manual_seed(4))
    nan = torch.full((1, 1, 500), float("nan"))
    with torch.inference_mode():
        with ChunkedStream(gen, message=msg) as clean:
            want = [clean(c) for c in split(x, [500] * 5)] + [clean.flush()]
        short_nan = nan[..., :100]  # shorter than a hop: it used to wait in the buffer
        cases = [
            (nan, "NaN"),
            (short_nan, "NaN"),
            (x[0, 0, :500], r"\(batch, 1"),
            (x[..., :100].double(), "float64"),
            (x[..., :100].expand(2, -1, -1), "batch size 2"),
        ]
        for bad, err in cases:
            with ChunkedStream(gen, message=msg) as stream:
                got = [stream(x[..., :500])]
                with pytest.raises(ValueError, match=err):
                    stream(bad)
                got += [stream(c) for c in split(x[..., 500:], [500] * 4)] + [stream.flush()]
                with pytest.raises(RuntimeError, match="flushed"):
                    stream(x[..., :500])  # the stream ended with the flush's padding
            assert [g.shape[-1] for g in got[:-1]] == [500] * 5
            torch.testing.assert_close(torch.cat(got, -1), torch.cat(want, -1), atol=0, rtol=0)
        with ChunkedStream(det, batch_size=2) as dstream:
            assert dstream.flush().shape == (2, 2 + det.nbits, 0)  # nothing was streamed


def test_a_refused_last_chunk_does_not_end_the_stream(small) -> None:
    """A ragged chunk ends a stream, but only once it ran: refused (NaN, a bad message),
    the corrected one was then refused as 'after the stream ended'."""
    gen, det = small
    x = audio(HOP + 100, seed=22)
    with torch.inference_mode():
        # a ragged last chunk is zero-padded: the offline output of the padded signal
        whole = gen(torch.nn.functional.pad(x, (0, HOP - 100)), message=0x1A2B)[..., : HOP + 100]
        with gen.streaming(1):
            head = gen(x[..., :HOP], message=0x1A2B)
            with pytest.raises(MessageError):
                gen(x[..., HOP:], message=[2] * 16)
            bad = x[..., HOP:].clone()
            bad[..., 3] = float("nan")
            with pytest.raises(ValueError, match="NaN"):
                gen(bad, message=0x1A2B)
            tail = gen(x[..., HOP:], message=0x1A2B)
        torch.testing.assert_close(torch.cat([head, tail], -1), whole, atol=TOL, rtol=0)
        with det.streaming(1):
            with pytest.raises(ValueError, match="NaN"):
                det(bad)
            det(x[..., HOP:])  # accepted: the refused chunk did not end the stream


def test_message_attribute_as_the_reference(small) -> None:
    """The reference's ``model.message``: the message a call without one embeds (a random
    one drawn at the first such call and kept); numpy and 0-dim integer messages are ints."""
    import numpy as np

    gen = AudioSealWM(small_card("generator")).eval()
    x = audio(HOP * 2, batch=2, seed=23)
    with torch.inference_mode():
        assert gen.message.numel() == 0
        first = gen(x)
        kept = gen.message.clone()
        assert kept.shape == (2, 16)
        torch.testing.assert_close(gen(x), first, atol=0, rtol=0)  # the same message again
        gen.message = 0x1A2B
        assert gen.message.tolist() == [[0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1, 1]]
        mine = gen(x, message=0x1A2B)
        torch.testing.assert_close(gen(x), mine, atol=0, rtol=0)
        torch.testing.assert_close(gen(x, message=np.int64(0x1A2B)), mine, atol=0, rtol=0)
        torch.testing.assert_close(gen(x, message=torch.tensor(0x1A2B)), mine, atol=0, rtol=0)
        with pytest.raises(MessageError):
            gen.message = [0, 1]
        # a message set is never replaced behind the user's back (another batch: refused)
        gen.message = torch.tensor([[1] * 16, [0] * 16])
        with pytest.raises(MessageError, match="holds 2 messages, but the audio batch is 3"):
            gen(audio(HOP, batch=3))
        assert gen.message.tolist() == [[1] * 16, [0] * 16]
        # read at every call, as the reference: set mid-stream, it is the next chunk's
        one = audio(HOP, seed=24)
        gen.message = 0xFFFF
        with gen.streaming(1):
            gen(one)
            gen.message = 0
            gen(one)
            assert gen.last_message.tolist() == [[0] * 16]
        gen.message = None
        assert gen.message.numel() == 0
        gen(x)
        drawn = gen.message.clone()
        gen(audio(HOP, batch=3))  # one drawn here follows the batch (the reference fails)
        assert gen.message.shape == (3, 16) and not torch.equal(gen.message[:2], drawn)


# --- stream state and messages ---------------------------------------------------------------
def test_random_message_is_kept_for_the_stream(small) -> None:
    gen, _ = small
    x = audio(HOP * 6)
    with torch.inference_mode(), gen.streaming(1):
        parts = [gen(c) for c in split(x, [HOP * 2] * 3)]
        kept = gen.last_message.clone()
    with torch.inference_mode():
        whole = gen(x, message=kept)
    torch.testing.assert_close(torch.cat(parts, -1), whole, atol=TOL, rtol=0)


def test_leaving_and_resetting_start_a_fresh_stream(small) -> None:
    gen, _ = small
    x = audio(HOP * 4)
    msg = torch.ones(16, dtype=torch.long)
    with torch.inference_mode():
        with gen.streaming(1):
            first = torch.cat([gen(c, message=msg) for c in split(x, [HOP] * 4)], -1)
            gen.reset_streaming()
            after_reset = torch.cat([gen(c, message=msg) for c in split(x, [HOP] * 4)], -1)
        with gen.streaming(1):
            second = torch.cat([gen(c, message=msg) for c in split(x, [HOP] * 4)], -1)
    torch.testing.assert_close(first, after_reset, atol=0, rtol=0)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert not gen.is_streaming


@pytest.mark.parametrize(
    "message",
    [
        torch.ones(15, dtype=torch.long),
        torch.full((16,), 2),
        torch.tensor([0.5] * 16),
        torch.ones(2, 16, dtype=torch.long),  # batch 2 for audio of batch 1
        2**16,
        -1,
        "0xZZ",
    ],
)
def test_bad_messages_are_rejected(small, message) -> None:
    gen, _ = small
    with pytest.raises(ValueError, match="bit|message") as info:
        gen(audio(HOP), message=message)
    assert isinstance(info.value, MessageError)


def test_audio_of_another_dtype_or_a_rate_as_text(small) -> None:
    """float64 (soundfile's default) is refused in words, not with torch's bias message; a
    rate given as text is read as a number (the review saw "16000 given, model at 16000")."""
    gen, det = small
    x = audio(HOP)
    for model in (gen, det):
        with pytest.raises(ValueError, match=r"float64 but the model's weights are float32"):
            model(x.double())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "foreign rate" warning
        gen(x, sample_rate="16000")
    with pytest.raises(TypeError, match="sample_rate must be a rate in Hz"):
        gen(x, sample_rate="16 kHz")


def test_decode_message_is_the_references() -> None:
    det = AudioSealDetector(small_card("detector")).eval()
    logits = torch.randn(2, 16, 50)
    torch.testing.assert_close(det.decode_message(logits), torch.sigmoid(logits.mean(-1)))


@pytest.mark.parametrize(
    "message", [0xA5A5, "0xa5a5", "1010010110100101", [1, 0, 1, 0, 0, 1, 0, 1] * 2]
)
def test_message_forms_agree(small, message) -> None:
    gen, _ = small
    x = audio(HOP)
    expected = torch.tensor([[1, 0, 1, 0, 0, 1, 0, 1] * 2])
    with torch.inference_mode():
        torch.testing.assert_close(gen(x, message=message), gen(x, message=expected))


def test_non_streaming_card_refuses_to_stream() -> None:
    gen = AudioSealWM(OFFICIAL_CARDS["audioseal_wm_16bits"])
    det = AudioSealDetector(OFFICIAL_CARDS["audioseal_detector_16bits"])
    for model in (gen, det):
        with pytest.raises(NotImplementedError, match="audioseal_wm_streaming"), model.streaming(1):
            pass


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"trim_right_ratio": 0.5}, "trim"),
        ({"seanet": {"pad_mode": "reflect"}}, "reflect"),
    ],
)
def test_cards_that_cannot_stream_exactly_refuse_to(change: dict, why: str) -> None:
    """Causal, but the stream could not equal the whole signal: trimming the transposed
    convolutions' overlap on the left, or reflecting the signal's start."""
    card = small_card("generator")
    seanet = card.seanet
    if "seanet" in change:
        seanet = dataclasses.replace(seanet, **change.pop("seanet"))
    gen = AudioSealWM(card.replace(seanet=seanet, **change))
    with pytest.raises(NotImplementedError, match=why), gen.streaming(1):
        pass


def test_empty_chunks_change_nothing(small) -> None:
    gen, det = small
    x, msg = audio(HOP * 4, seed=8), torch.tensor([[1, 0] * 8])
    with torch.inference_mode():
        whole = gen(x, message=msg)
        with gen.streaming(1), det.streaming(1):
            parts = []
            for i in range(4):
                assert gen(x[..., :0], message=msg).shape == (1, 1, 0)
                assert det(x[..., :0])[0].shape == (1, 2, 0)
                parts.append(gen(x[..., i * HOP : (i + 1) * HOP], message=msg))
    torch.testing.assert_close(torch.cat(parts, -1), whole, atol=TOL, rtol=0)


def test_reset_after_select_streams_starts_the_whole_batch_again(phased) -> None:
    x = audio(HOP * 6, batch=2, seed=9)
    with torch.inference_mode():
        whole = phased.logits(x)
        with phased.streaming(2):
            phased.phase_logits(x[..., :HOP])
            phased.select_streams([1], phases=[2])
            with pytest.raises(ValueError, match="carries 1 signal"):
                phased.phase_logits(x[..., HOP : 2 * HOP])  # refused before any state moves
            phased.reset_streaming()
            assert phased.active_phases == (0, 1, 2, 3)
            again = torch.cat([phased.logits(c) for c in x.split(2 * HOP, -1)], -1)
    torch.testing.assert_close(again, whole, atol=TOL, rtol=0)


def test_streamed_code_detector_gives_the_networks_probabilities() -> None:
    """The default (code) detector streamed: det(x) per sample equals the offline network
    output (softmax of logits' first two rows); the code's evidence is offline only."""
    from audioseal_live import AudioSeal

    gen, det = AudioSeal.load_generator(), AudioSeal.load_detector()
    assert det.code is not None
    with torch.inference_mode():
        y = gen(audio(HOP * 20, seed=10), message=0x1234)
        offline = torch.softmax(det.logits(y)[:, :2], dim=1)
        with det.streaming(1):
            streamed = torch.cat([det(c)[0] for c in y.split(5 * HOP, -1)], -1)
    torch.testing.assert_close(streamed, offline, atol=TOL, rtol=0)


def test_a_ragged_last_chunk_ends_the_stream_as_the_zero_padded_signal(small) -> None:
    """The reference's examples stream a file in fixed chunks, the last one ragged: it is
    zero-padded to whole hops, so the output is the offline output of the padded signal."""
    gen, det = small
    x, msg = audio(HOP * 10 + 123, seed=11), torch.tensor([[1, 0] * 8])
    padded = torch.nn.functional.pad(x, (0, HOP - 123))
    with torch.inference_mode():
        whole = gen(padded, message=msg)[..., : x.shape[-1]]
        logits = det.logits(padded)[..., : x.shape[-1]]
        with gen.streaming(1), det.streaming(1):
            out = torch.cat([gen(c, message=msg) for c in x.split(5 * HOP, -1)], -1)
            probs = torch.cat([det(c)[0] for c in x.split(5 * HOP, -1)], -1)
            gen.reset_streaming()  # a new stream may start
            gen(x[..., :HOP], message=msg)
    torch.testing.assert_close(out, whole, atol=TOL, rtol=0)
    torch.testing.assert_close(probs, torch.softmax(logits[:, :2], 1), atol=TOL, rtol=0)


def test_one_message_row_serves_the_whole_batch(small) -> None:
    gen, _ = small
    x, row = audio(HOP * 2, batch=3, seed=12), torch.tensor([[1, 0, 0, 1] * 4])
    with torch.inference_mode():
        torch.testing.assert_close(gen(x, message=row), gen(x, message=row.expand(3, -1)))


def test_streaming_rejects_partial_hops_and_bad_audio(small) -> None:
    gen, det = small
    with gen.streaming(1):
        gen(audio(100))  # a ragged chunk can end a stream (a file's last), but then no more
        with pytest.raises(ValueError, match="ChunkedStream"):
            gen(audio(HOP))
    with pytest.raises(ValueError, match="NaN"):
        det(torch.full((1, 1, HOP), float("nan")))
    with pytest.raises(ValueError, match=r"\(batch, 1, samples\)"):
        gen(torch.zeros(HOP))


def test_message_edited_in_place_is_seen(small) -> None:
    gen, _ = small
    x = audio(HOP)
    msg = torch.zeros(1, 16, dtype=torch.long)
    with torch.inference_mode():
        gen(x, message=msg)
        msg[0, 0] = 1
        gen(x, message=msg)
    assert gen.last_message[0, 0] == 1


def test_sync_phases_must_fit_the_hop() -> None:
    card = small_card("detector")
    for bad in (0, HOP + 1):
        with pytest.raises(ValueError, match="sync_phases"):
            card.replace(sync_phases=bad).validate()
    from audioseal_live.models.cards import ModelCard

    assert ModelCard.from_dict(card.replace(sync_phases=8).to_dict()).sync_phases == 8
