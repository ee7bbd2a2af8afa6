"""What the engine needs from the models, and adapters from the real generator/detector.

The engine talks to two small protocols so that its logic can be tested with fakes and so
that importing the engine does not import torch. ``TorchMarker``/``TorchDetector`` wrap an
``AudioSealWM``/``AudioSealDetector`` in streaming mode; torch is imported when they are built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from audioseal_live.errors import CheckpointError
from audioseal_live.message_bits import NBITS

HOP = 320  # model hop at 16 kHz (20 ms); every chunk is a multiple of it
MODEL_RATE = 16000


class Marker(Protocol):
    """Streaming watermark generator at 16 kHz."""

    nbits: int

    def reset(self) -> None:
        """Start a new stream (drop the carried state)."""

    def process(self, x16k: np.ndarray, message: Sequence[int]) -> np.ndarray:
        """Watermark only, same length as ``x16k`` (a multiple of 320)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CodeReadout:
    """What a :class:`CodeStream` reads in its window."""

    z: np.ndarray  # signed z-score per bit (nbits,) of the signal as pushed
    sync: float  # the code's sync score
    p_marked: float  # the sync as P(marked) (models.message_code.sync_probability)
    inverted: bool | None  # whether the signal came inverted: None until checked, or where
    # the check could not tell (the bit head reads nothing, e.g. in the telephone band)


class CodeStream(Protocol):
    """The detector's message code (if its card has one) read over a sliding window of one
    monitored signal at 16 kHz; see ``models.message_code``."""

    sync_min: float  # sync scores from which the bits are shown

    def reset(self, keep_polarity: bool = False) -> None:
        """Empty the window; ``keep_polarity``: the last decided polarity stays."""

    def push(self, x16k: np.ndarray) -> None:
        """Add a chunk (T,) of the signal."""

    def read(self) -> CodeReadout | None:
        """The window's readout; None while empty."""
        ...

    def warm_up(self) -> None:
        """Run what the first reads will run, before the audio starts."""


class FrameDetector(Protocol):
    """Streaming detector at 16 kHz on a batch of signals (the engine uses x and -x)."""

    nbits: int
    phases: int  # grid phases the bits are read at (see ModelCard.sync_phases)

    def reset(self, batch_size: int) -> None: ...

    def process(self, x16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x16k`` (B, T) -> P(marked) per sample (B, T), bit logits (B, phases, nbits, T)."""
        ...

    def narrow(self, signal: int, phase: int) -> None:
        """Keep streaming only ``signal`` of the batch and grid ``phase``, state intact;
        ``process`` then takes (1, T) and gives (1, T), (1, 1, nbits, T)."""

    def warm_up(self, chunk: int) -> None:
        """Prepare for ``process`` calls of ``chunk`` samples before the audio starts."""

    def code_stream(self, seconds: float | None) -> CodeStream | None:
        """A reader of the message code over the last ``seconds`` (None: all it is fed);
        None: bits come from the bit logits of ``process``."""
        ...

    def close(self) -> None: ...


# How much more marked the inverted signal must look before we call the chain inverted. A
# detector trained with polarity flips finds its mark in both (the default: P 0.95 for x,
# 0.99 for -x on test speech), so a bare comparison flipped a coin and the window said
# "polarity inverted" on a chain that was not.
POLARITY_MARGIN = 0.1
# ... and it must itself read as marked: two scores under the detection threshold are both
# noise (a loopback 20 dB down: P 0.16 vs 0.26, and the window said "polarity inverted" with
# the message's complement, review).
POLARITY_FLOOR = 0.5


def inverted_wins(plain: float, inverted: float) -> bool:
    """Is the inverted signal clearly the marked one? (scores are detected fractions/P)."""
    return inverted > plain + POLARITY_MARGIN and inverted > POLARITY_FLOOR


def polarity_told(plain: float, inverted: float) -> bool:
    """Whether either polarity clearly scored higher (see :func:`inverted_wins`)."""
    return inverted_wins(plain, inverted) or inverted_wins(inverted, plain)


def polarity_from_message(mean_logit: np.ndarray, expected: tuple[int, ...] | None) -> np.ndarray:
    """A message code's bit evidence read in a polarity nothing else could settle: flipped
    if every bit reads, with a sign, as the expected message's complement (how a sign code
    reads that message through an inverted chain); as it is otherwise. An *assumption*, which
    callers report as such: audio marked with the complement message, as recorded, reads
    the same."""
    if not expected or len(expected) != mean_logit.shape[-1]:
        return mean_logit
    want = np.asarray(expected) > 0
    if bool(np.all(np.where(want, mean_logit < 0, mean_logit > 0))):
        return -mean_logit
    return mean_logit


def guess_polarity(
    b: int, mean_logit: np.ndarray, expected: tuple[int, ...] | None
) -> tuple[int, np.ndarray, bool]:
    """(polarity, bit evidence, whether the message decided them): ``b`` and ``mean_logit``
    flipped where :func:`polarity_from_message` flips the evidence, as they were otherwise."""
    flipped = polarity_from_message(mean_logit, expected)
    if flipped is mean_logit:
        return b, mean_logit, False
    return 1 - b, flipped, True


def decode_bits(mean_logit: np.ndarray) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Bits and per-bit confidence |2p - 1| from mean bit logits (nbits,)."""
    prob = 1.0 / (1.0 + np.exp(-mean_logit))
    return tuple(int(v) for v in prob > 0.5), tuple(float(c) for c in np.abs(2 * prob - 1))


def best_phase(mean_logits: np.ndarray) -> int:
    """(phases, nbits) averaged bit logits -> the phase whose bits are most confident."""
    if mean_logits.shape[-1] == 0:  # a detector without a message: any phase
        return 0
    return int(np.abs(mean_logits).mean(axis=-1).argmax())


def _torch_device(device: str) -> Any:
    import torch

    from audioseal_live.errors import DeviceError

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but torch sees no CUDA GPU")
    return torch.device(device)


class _StreamHolder:
    """A model held in streaming mode for an adapter, with its traced step if any."""

    _step: Any
    _stack: contextlib.ExitStack

    def _restart(self, model: Any, batch_size: int) -> None:
        self.close()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(model.streaming(batch_size=batch_size))

    def close(self) -> None:
        if self._step is not None:
            self._step.drop()
        self._stack.close()


class TorchMarker(_StreamHolder):
    """Adapter: ``AudioSealWM`` (or anything with ``streaming`` and ``watermark_of``).

    ``traced``: run steady-state chunks through a traced graph of the streaming step
    (blocks.traced; the same floats, ~2.5x less time per 20 ms chunk on CPU).
    """

    def __init__(self, generator: Any, device: str = "cpu", traced: bool = True) -> None:
        import torch

        from audioseal_live.blocks.traced import StreamStep

        self._torch = torch
        self.device = _torch_device(device)
        self.gen = generator.to(self.device).eval().requires_grad_(False)
        self.nbits = int(getattr(generator, "nbits", NBITS))
        self._stack = contextlib.ExitStack()
        self._msg_key: tuple[int, ...] | None = None
        self._msg: Any = None
        self._step = StreamStep(self.gen, self._watermark) if traced else None

    def _watermark(self, x: Any, msg: Any) -> tuple[Any]:
        return (self.gen.watermark_of(x, msg),)

    def reset(self) -> None:
        self._restart(self.gen, 1)

    def process(self, x16k: np.ndarray, message: Sequence[int]) -> np.ndarray:
        torch = self._torch
        key = tuple(int(b) for b in message)
        if key != self._msg_key:  # validated and built only when the message changes
            from audioseal_live.models.messages import to_message_tensor

            self._msg = to_message_tensor(torch.tensor([key]), 1, self.nbits).to(self.device)
            self._msg_key = key
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(x16k, dtype=np.float32)).view(1, 1, -1)
            self.gen._check_input(x, None)  # before the stream's state sees a NaN
            x = x.to(self.device)
            if self._step is None:
                (wm,) = self._watermark(x, self._msg)
            else:
                (wm,) = self._step(x, self._msg)
            return wm.reshape(-1).float().cpu().numpy()


class TorchDetector(_StreamHolder):
    """Adapter: ``AudioSealDetector.frame_outputs`` in streaming mode (``traced`` as for
    :class:`TorchMarker`)."""

    def __init__(self, detector: Any, device: str = "cpu", traced: bool = True) -> None:
        import torch

        from audioseal_live.blocks.traced import StreamStep

        self._torch = torch
        self.device = _torch_device(device)
        self.det = detector.to(self.device).eval().requires_grad_(False)
        self.nbits = int(getattr(detector, "nbits", NBITS))
        self.phases = int(getattr(detector, "phases", 1))
        self._stack = contextlib.ExitStack()
        layout = lambda: getattr(self.det, "active_phases", None)  # noqa: E731
        self._step = StreamStep(self.det, self.det.frame_outputs, layout) if traced else None
        self._narrowed = False
        self._warming = False

    def reset(self, batch_size: int) -> None:
        self._restart(self.det, batch_size)
        self._narrowed = False

    def process(self, x16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(x16k, dtype=np.float32)).unsqueeze(1)
            self.det._check_input(x, None)  # before the stream's state sees a NaN
            x = x.to(self.device)
            step = self._step
            if step is not None and self._narrowed and not self._warming:
                # Locked: traced if warm_up traced this layout, else eager rather than trace
                # (~0.3 s of Python holding the GIL) next to live audio callbacks.
                step = step if step.traced_for(x) else None
            p, logits = (step or self.det.frame_outputs)(x)
            return p.float().cpu().numpy(), logits.float().cpu().numpy()

    def narrow(self, signal: int, phase: int) -> None:
        if self._step is not None:
            self._step.release()  # the modules must hold the state that select_streams cuts
        self.det.select_streams([signal], phases=[phase])
        self._narrowed = True

    def warm_up(self, chunk: int, blocks: int = 3) -> None:
        """Trace, on silence before the audio starts, the search's layout (x and -x) and the
        locked one (one signal at phase 0, the only phase of a one-phase card): a lock then
        halves the work without tracing next to live callbacks."""
        z = np.zeros((2, chunk), dtype=np.float32)
        self.reset(batch_size=2)
        for _ in range(blocks):
            self.process(z)
        self.narrow(0, 0)
        self._warming = True
        try:
            for _ in range(blocks):
                self.process(z[:1])
        finally:
            self._warming = False
        self.reset(batch_size=2)

    def code_stream(self, seconds: float | None) -> TorchCodeStream | None:
        card = self.det.card
        if card.template_code is None:
            return None
        from audioseal_live.models.message_code import CodeReader

        frames = None if seconds is None else max(1, round(seconds * MODEL_RATE / HOP))
        reader = CodeReader(card.template_code, card.nbits, card.hop_length, MODEL_RATE, frames)
        # A second detector for the polarity check's offline passes: the live one streams.
        offline = type(self.det)(card).eval().requires_grad_(False)
        offline.load_state_dict(self.det.state_dict())
        return TorchCodeStream(reader, offline.cpu())


class TorchCodeStream:
    """Adapter: a ``CodeReader`` on one numpy signal, and the detector's polarity check
    (``AudioSealDetector.code_polarity``) on its last second every ``recheck_s`` while the
    code is there: two detector passes over 1 s, ~2 % of a core at the default 3 s."""

    # Sync scores of 1 s windows (whitened fold, default model, held-out test set): unmarked
    # speech and music median 3.0, max 4.4 of 250; marked 5th percentile 7.1.
    sync_min = 5.0

    def __init__(self, reader: Any, detector: Any, recheck_s: float = 3.0) -> None:
        import torch

        self._torch = torch
        self.reader = reader
        self.det = detector
        self._buf = np.zeros(MODEL_RATE, dtype=np.float32)  # the last second pushed
        self._recheck = int(recheck_s * MODEL_RATE)
        self.reset()

    def reset(self, keep_polarity: bool = False) -> None:
        self.reader.reset()
        self._fill = 0
        self._since: int | None = None  # samples since the last polarity check
        if not keep_polarity:
            self.inverted: bool | None = None

    def warm_up(self) -> None:
        """A code read and a polarity check on a second of silence, before the audio starts:
        the first check ran cold once the code was found live (default detector, 1 thread:
        128 ms, then 19-21 ms)."""
        torch = self._torch
        with torch.inference_mode():
            x = torch.zeros(1, 1, MODEL_RATE)
            self.det.code_polarity(x, self.det.code.read_offline(x), undecided=0.0)

    def push(self, x16k: np.ndarray) -> None:
        x = np.asarray(x16k, dtype=np.float32)
        with self._torch.inference_mode():
            self.reader.push(self._torch.from_numpy(x)[None])
        tail = x[-MODEL_RATE:]
        self._buf = np.concatenate([self._buf[tail.shape[0] :], tail])
        self._fill = min(MODEL_RATE, self._fill + tail.shape[0])
        if self._since is not None:
            self._since += x.shape[0]

    def read(self) -> CodeReadout | None:
        from audioseal_live.models.message_code import sync_probability

        torch = self._torch
        with torch.inference_mode():
            r = self.reader.read()
            if r is None:
                return None
            sync = float(r.sync[0])
            due = self._since is None or self._since >= self._recheck
            if sync >= self.sync_min and self._fill == MODEL_RATE and due:
                x = torch.from_numpy(self._buf)[None, None]
                last = self.det.code.read_offline(x)
                if float(last.sync[0]) >= self.sync_min:
                    sign = float(self.det.code_polarity(x, last, undecided=0.0)[0])
                    # 0: the head reads nothing here: undecided, not "as recorded", and no
                    # reason to drop a verdict an earlier check made (it flipped to a guess
                    # on P 0.16 vs 0.26 of a quiet loopback, review)
                    if sign != 0:
                        self.inverted = sign < 0
                    self._since = 0
                else:
                    # The last second holds too little of the code to check against (a pause:
                    # the engine keeps no mark there; the head's idle output then "agreed"
                    # with a noise read, flipping every bit): keep the verdict, retry soon.
                    self._since = self._recheck - MODEL_RATE // 2
            p_marked = float(sync_probability(r.sync[0]))
        return CodeReadout(r.z[0].numpy(), sync, p_marked, self.inverted)


def load_models(
    model: str | None, device: str = "cpu", detector: str | None = None, need_detector: bool = True
) -> tuple[TorchMarker, TorchDetector | None]:
    """Load generator (and detector) by card name or path; ``None`` = the shipped default.

    A generator path/name ``X`` is paired with a detector found the same way: ``detector`` if
    given, else the loader's default pairing.
    """
    from audioseal_live import AudioSeal  # type: ignore[attr-defined]

    gen = check_model_rate(
        AudioSeal.load_generator(model) if model else AudioSeal.load_generator(), model
    )
    marker = TorchMarker(gen, device)
    det = None
    if need_detector:
        name = detector or _paired_detector(model)
        try:
            det_model = AudioSeal.load_detector(name) if name else AudioSeal.load_detector()
            check_model_rate(det_model, name)
        except CheckpointError as exc:
            if detector or not name:
                raise
            # the detector was guessed from the generator's name: say how to name it
            raise CheckpointError(f"{exc} (name the detector with --detector)") from None
        det = TorchDetector(det_model, device)
    return marker, det


def check_model_rate(model: Any, name: str | None) -> Any:
    """``model`` if its card runs at 16 kHz, the rate the engine and the file commands
    resample every signal to; a clear error otherwise (it ran quietly at the wrong rate)."""
    rate = int(getattr(model, "sample_rate", MODEL_RATE))
    if rate != MODEL_RATE:
        raise CheckpointError(
            f"{name or 'the model'}: its card says it runs at {rate} Hz; the live engine and "
            f"the file commands run models at {MODEL_RATE} Hz"
        )
    return model


def _paired_detector(model: str | None) -> str | None:
    """The detector beside a generator: in its last path component only (a folder
    ``my_generators/v1`` holds both models; renaming it to ``my_detectors`` found nothing)."""
    if not model:
        return None
    head, sep, name = model.replace("\\", "/").rpartition("/")
    for a, b in (("_wm_", "_detector_"), ("generator", "detector")):
        if a in name:
            return model[: len(head) + len(sep)] + name.replace(a, b)
    return model
