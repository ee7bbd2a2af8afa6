"""Mark and detect audio files of any length in constant memory, through the same streaming
models as the live path. Multi-channel: the model sees the mean of the channels; the
watermark is added to every channel. Files are read and written in blocks; resampling uses
soxr HQ streams (latency does not matter here, quality does)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audioseal_live.engine.limiter import SoftLimiter
from audioseal_live.engine.mark_level import QUIET_RMS, MarkLevelCap
from audioseal_live.engine.model import (
    HOP,
    MODEL_RATE,
    FrameDetector,
    Marker,
    best_phase,
    decode_bits,
    guess_polarity,
    inverted_wins,
    polarity_told,
)
from audioseal_live.engine.recorder import AtomicSoundFile
from audioseal_live.engine.resample import SoxrResampler
from audioseal_live.engine.ring import Fifo
from audioseal_live.engine.worker import check_alpha
from audioseal_live.errors import AudioFileError
from audioseal_live.message_bits import bits_hex

BLOCK_S = 1.0  # seconds read per step: memory stays O(block), not O(file)
# Detection locks as the live monitor does: after this much audio with the mark found in
# enough of it, the polarity and grid phase are settled, and the rest of the file streams
# through that one pair instead of 2 x sync_phases (8x less work for the 4-phase default).
LOCK_SEARCH_S = 10.0
LOCK_MARKED_S = 3.0


def report_path(path: str | None) -> Path | None:
    """Where a JSON report (--stats-json, bench --json) goes, checked before the work it
    reports on: its folder must exist."""
    if not path:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        raise AudioFileError(f"cannot write {p}: it is a folder (name a file in it)")
    if not p.parent.is_dir():
        raise AudioFileError(f"cannot write {p}: folder does not exist")
    if not os.access(p.parent, os.W_OK):
        raise AudioFileError(f"cannot write {p}: the folder is not writable")
    return p


def write_report(path: Path, data: Any) -> None:
    try:
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    except OSError as exc:
        raise AudioFileError(f"cannot write {path}: {exc.strerror or exc}") from None


def open_audio(path: str | os.PathLike[str]) -> Any:
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        why = (
            "a folder"
            if p.is_dir()
            else "not a regular file (pipes and devices cannot be read: save it to a file)"
            if p.exists()
            else "no such file"
        )
        raise AudioFileError(f"cannot read {p}: {why}")
    try:
        # as bytes: a name that is not UTF-8 (legal on Linux: Latin-1 names from old archives)
        # is one soundfile cannot encode
        f = sf.SoundFile(os.fsencode(p))
    except Exception as exc:  # libsndfile's message says what is wrong
        why = str(exc)
        if why.startswith("Error opening "):  # "Error opening b'name': Format not recognised."
            why = why.split(": ", 1)[-1]
        raise AudioFileError(f"cannot read {p}: not a readable audio file ({why})") from None
    if f.frames == 0:
        f.close()
        raise AudioFileError(f"cannot read {p}: the file holds no audio")
    return f


def read_blocks(f: Any, path: Path) -> Any:
    """The file in blocks of BLOCK_S; a NaN or infinite sample (a float file written by a
    broken tool) stops with the time it occurs at: marking or reading around it would put out
    a file that is silently not what came in."""
    n = int(BLOCK_S * f.samplerate)
    pos = 0
    while True:
        try:
            x = f.read(n, dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioFileError(f"cannot read {path}: {exc}") from None
        if x.shape[0] == 0:
            return
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            first = pos + int(np.argmax(bad))
            raise AudioFileError(
                f"cannot use {path}: sample {first} ({first / f.samplerate:.3f} s) is NaN or "
                "infinite; repair or re-export the file"
            )
        pos += x.shape[0]
        yield x


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="s", unit_scale=True, disable=not enabled or None)


# A float file may hold peaks above full scale on purpose: written as float, it keeps them
# (the limiter is for PCM, which would clip).
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def embed_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    marker: Marker,
    message: Sequence[int],
    alpha: float = 1.0,
    progress: bool = False,
) -> dict[str, Any]:
    alpha = check_alpha(alpha)
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise AudioFileError("the output must be a different file than the input")
    with open_audio(src) as f:
        rate, ch = f.samplerate, f.channels
        down = SoxrResampler(rate, MODEL_RATE)
        up = SoxrResampler(MODEL_RATE, rate)
        limiter = SoftLimiter(rate)
        cap = MarkLevelCap(rate, ch)  # per channel: a silent channel gets no mark
        fifo16, wm_fifo = Fifo(), Fifo()
        pending: list[np.ndarray] = []  # original blocks (device rate) awaiting their mark
        pending_n = 0
        written = 0
        marker.reset()

        def mark(x16: np.ndarray) -> None:
            wm = marker.process(x16, message) * np.float32(alpha)
            wm_fifo.push(up.process(wm))

        def emit(out: AtomicSoundFile, final: bool = False) -> None:
            nonlocal pending_n, written
            n = pending_n if final else min(len(wm_fifo), pending_n)
            if n <= 0:
                return
            orig = np.concatenate(pending)
            wm = wm_fifo.pop(n)
            if wm.shape[0] < n:  # soxr's flush can end a sample short
                wm = np.concatenate([wm, np.zeros(n - wm.shape[0], dtype=np.float32)])
            y = orig[:n] + cap.apply(orig[:n], wm)
            if out.subtype not in FLOAT_SUBTYPES:  # PCM clips at full scale: limit first
                peak = np.max(np.abs(y), axis=1)
                limited = limiter.process(peak)  # one gain for all channels keeps the balance
                gain = np.where(peak > 0, limited / np.maximum(peak, 1e-12), 1.0)
                y = y * gain[:, None].astype(np.float32)
            out.write(y)
            pending[:] = [orig[n:]]
            pending_n -= n
            written += n

        with (
            AtomicSoundFile(dst, rate, ch, like=f.subtype, frames=f.frames) as out,
            _progress(f.frames / rate, src.name, progress) as bar,
        ):
            for x in read_blocks(f, src):
                pending.append(x)
                pending_n += x.shape[0]
                fifo16.push(down.process(x.mean(axis=1)))
                k = len(fifo16) // HOP * HOP
                if k:
                    mark(fifo16.pop(k))
                emit(out)
                bar.update(x.shape[0] / rate)
            fifo16.push(down.flush())
            rest = fifo16.pop(len(fifo16))
            if rest.shape[0]:
                pad = (-rest.shape[0]) % HOP
                mark(np.concatenate([rest, np.zeros(pad, dtype=np.float32)]))
            wm_fifo.push(up.flush())
            emit(out, final=True)
    marker.close()
    return {
        "input": str(src),
        "output": str(dst),
        "sample_rate": rate,
        "channels": ch,
        "frames": written,
        "message": "".join(map(str, message)),
    }


@dataclass
class DetectResult:
    path: str
    seconds: float
    probability: float  # fraction of samples judged marked (as AudioSeal's detect_watermark)
    mean_probability: float
    bits: tuple[int, ...]
    bit_confidence: tuple[float, ...]
    inverted: bool
    marked: bool
    match: bool | None = None
    polarity_from_message: bool = False  # as Detection's (engine.metrics)
    windows: list[float] = field(default_factory=list)  # P(marked) per second
    code_sync: float | None = None  # the message code's sync over the file (None: no code)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        # no message where none was found: an unmarked file's bits are noise (the text
        # report hides them too), and a detector without a message has none
        d["message"] = "".join(map(str, self.bits)) if self.marked else None
        d["message_hex"] = (bits_hex(self.bits) or None) if self.marked else None
        return d


def detect_file(
    src: str | os.PathLike[str],
    detector: FrameDetector,
    expected: Sequence[int] | None = None,
    threshold: float = 0.5,
    progress: bool = False,
    on_window: Callable[[float], None] | None = None,
) -> DetectResult:
    src = Path(src)
    nb = detector.nbits
    with open_audio(src) as f:
        rate = f.samplerate
        down = SoxrResampler(rate, MODEL_RATE)
        fifo16 = Fifo()
        detector.reset(batch_size=2)  # the signal and its inverse
        n_det = np.zeros(2)
        p_sum = np.zeros(2)
        logit_sum = np.zeros((2, detector.phases, nb))
        total = 0
        heard = 0  # samples of 20 ms frames above QUIET_RMS: where a mark can be
        windows: list[float] = []
        pending = np.zeros(0)  # per-sample P of the second not yet complete
        locked: tuple[int, int] | None = None  # (signal, phase) once settled
        code = detector.code_stream(None)  # a model with a message code: read over the file

        def shares() -> tuple[float, float]:
            """Of the samples with sound, the share detected in x and in -x."""
            n = max(heard, 1)
            return n_det[0] / n, n_det[1] / n

        def settle() -> tuple[int, int]:
            """The signal (x or -x) that carries the mark so far, and its surest phase."""
            b = int(inverted_wins(*shares()))
            return b, best_phase(logit_sum[b])

        def run(x16: np.ndarray) -> None:
            nonlocal total, heard, pending, locked
            # Pauses carry no mark (the engine and embed keep it 20 dB under the signal):
            # only frames with sound count for or against it.
            loud = np.sqrt(np.mean(x16.reshape(-1, HOP) ** 2, axis=1)) >= QUIET_RMS
            sound = np.repeat(loud, HOP)
            heard += int(sound.sum())
            if locked is None:  # search: x and -x at every grid phase
                p, logits = detector.process(np.stack([x16, -x16]))
                det = (p > threshold) & sound
                n_det[:] += det.sum(axis=1)
                p_sum[:] += p.sum(axis=1)
                logit_sum[:] += np.einsum("bpkt,bt->bpk", logits, det.astype(logits.dtype))
            else:  # locked: the one pair that carries the mark
                b, k = locked
                p, logits = detector.process((-x16 if b else x16)[None])
                det = (p[0] > threshold) & sound
                n_det[b] += det.sum()
                p_sum[b] += p[0].sum()
                logit_sum[b, k] += logits[0, 0] @ det.astype(logits.dtype)
            if code is not None:
                code.push(x16)
            total += x16.shape[0]
            if locked is None and heard >= LOCK_SEARCH_S * MODEL_RATE:
                b, k = settle()
                if n_det[b] >= LOCK_MARKED_S * MODEL_RATE:
                    locked = (b, k)
                    detector.narrow(b, k)
            pending = np.concatenate([pending, p.max(axis=0).reshape(-1)])
            whole = pending.shape[0] // MODEL_RATE * MODEL_RATE  # per-second windows
            for v in pending[:whole].reshape(-1, MODEL_RATE).mean(axis=1, dtype=np.float64):
                windows.append(float(v))
                if on_window:
                    on_window(windows[-1])
            pending = pending[whole:]

        with _progress(f.frames / rate, src.name, progress) as bar:
            for x in read_blocks(f, src):
                fifo16.push(down.process(x.mean(axis=1)))
                k = len(fifo16) // HOP * HOP
                if k:
                    run(fifo16.pop(k))
                bar.update(x.shape[0] / rate)
            fifo16.push(down.flush())
            rest = fifo16.pop(len(fifo16))
            if rest.shape[0] >= HOP:
                run(rest[: rest.shape[0] // HOP * HOP])
    detector.close()
    if total == 0:
        raise AudioFileError(f"{src}: too short to detect (needs at least 20 ms)")
    b, k = locked or settle()
    cnt = n_det[b]
    mean_logit = logit_sum[b, k] / cnt if cnt else np.zeros(nb)
    frac = float(cnt / heard) if heard else 0.0  # of the samples with sound
    marked = frac > 0.5
    read = code.read() if code is not None else None
    guessed = False
    # the code is there at all (as the monitor asks); read and not there: no message read
    there = read is not None and read.sync >= code.sync_min  # type: ignore[union-attr]
    unread = read is not None and not there
    if read is not None:  # the code: bits at any alignment, its own polarity check
        b = int(read.inverted) if read.inverted is not None else b
        mean_logit = -read.z if b else read.z
        marked = marked or read.p_marked >= 0.5
        told = polarity_told(*shares())
        if read.inverted is None and not told and there and expected is not None:
            b, mean_logit, guessed = guess_polarity(b, mean_logit, tuple(int(v) for v in expected))
    bits, confidence = decode_bits(mean_logit)
    if unread:  # the code is not there (the network alone called it marked): no message read
        bits, confidence = (), ()
    # unmarked audio has no message to match (its bits are noise): None, as without one
    match = (
        None
        if expected is None or not marked or unread
        else bits == tuple(int(v) for v in expected)
    )
    return DetectResult(
        path=str(src),
        seconds=total / MODEL_RATE,
        probability=frac,
        mean_probability=float(p_sum[b] / total),
        bits=bits,
        bit_confidence=confidence,
        inverted=bool(b),
        marked=marked,
        match=match,
        polarity_from_message=guessed,
        windows=windows,
        code_sync=None if read is None else read.sync,
    )
