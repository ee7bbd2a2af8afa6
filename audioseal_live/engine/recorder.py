"""Record audio to WAV/FLAC on a writer thread; the file appears complete or not at all.

The worker hands chunks over a queue bounded in seconds of audio (it never blocks: past the
bound a chunk is dropped, counted, and written later as silence of the same length, so the
file keeps its timing). The writer writes to a hidden temp file next to the target and renames
it into place on close, so a crash or kill never leaves a truncated WAV/FLAC under the chosen
name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from audioseal_live.errors import AudioFileError

log = logging.getLogger(__name__)

FORMATS = {".wav": ("WAV", "PCM_24"), ".flac": ("FLAC", "PCM_24")}


FLAC_MAX_CHANNELS, FLAC_MAX_RATE = 8, 655350  # the format's own limits
WAV_MAX_BYTES = (1 << 32) - (1 << 20)  # a RIFF size field is 32 bits (less room for headers)
SFC_RF64_AUTO_DOWNGRADE = 0x1210  # sndfile.h: write RF64, fall back to WAV if it stays small
# float -> integer PCM, rounded here: libsndfile's WAV writer truncates (a -0.5 LSB bias;
# its FLAC writer rounds), which made the same audio differ between the two formats
PCM_SCALE = {"PCM_16": (1 << 15, np.int16, 0), "PCM_24": (1 << 23, np.int32, 8)}
PCM_SCALE["PCM_32"] = (1 << 31, np.int32, 0)


def format_for(path: Path, like: str | None = None) -> tuple[str, str]:
    """(format, subtype) for a .wav/.flac name; ``like``: the input's subtype, kept where the
    format has it (a 16-bit file stays 16-bit, a float WAV stays float), else 24-bit PCM."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioFileError(f"cannot write {path.name}: use a .wav or .flac file name")
    keep = {"WAV": ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"), "FLAC": ("PCM_16", "PCM_24")}
    return (fmt[0], like) if like in keep[fmt[0]] else fmt


def check_writable_format(path: Path, fmt: str, sample_rate: int, channels: int) -> None:
    """What FLAC cannot hold, said before anything is written (libsndfile's own error names
    the temp file and not the limit)."""
    if fmt == "FLAC" and channels > FLAC_MAX_CHANNELS:
        raise AudioFileError(
            f"cannot write {path}: FLAC holds at most {FLAC_MAX_CHANNELS} channels, not "
            f"{channels}; use a .wav name"
        )
    if fmt == "FLAC" and sample_rate > FLAC_MAX_RATE:
        raise AudioFileError(
            f"cannot write {path}: FLAC holds at most {FLAC_MAX_RATE} Hz, not {sample_rate}; "
            "use a .wav name"
        )


def _disk_full(folder: Path) -> bool:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(folder).free < 1 << 20
    return False


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it for every thread)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc (macOS, Windows): set and restore at once
    os.umask(mask)
    return mask


def _sample_bytes(subtype: str) -> int:
    return {"PCM_16": 2, "PCM_24": 3, "DOUBLE": 8}.get(subtype, 4)


class AtomicSoundFile:
    """``soundfile.SoundFile`` writing to a temp file, renamed onto ``path`` by ``commit()``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        channels: int,
        like: str | None = None,
        frames: int | None = None,
    ) -> None:
        """``frames``: how long the file will be, if known; None for a recording, which may
        run for hours. A WAV that may outgrow the 4 GiB a RIFF header can count is written
        as RF64 (a recording falls back to a plain WAV header when it stays under 4 GiB;
        libsndfile's WAV writer silently clamped the header: a 9 h recording read as 8.3 h)."""
        import soundfile as sf

        self.path = Path(path)
        fmt, subtype = format_for(self.path, like)
        big = fmt == "WAV" and (
            frames is None or frames * channels * _sample_bytes(subtype) > WAV_MAX_BYTES
        )
        self.subtype = subtype
        check_writable_format(self.path, fmt, int(sample_rate), channels)
        if not self.path.parent.is_dir():
            raise AudioFileError(f"cannot write {self.path}: folder does not exist")
        if self.path.is_dir():
            raise AudioFileError(f"cannot write {self.path}: it is a folder")
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent
            )
        except OSError as exc:
            raise AudioFileError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        os.close(fd)
        self.tmp = Path(tmp)
        # mkstemp makes the file private (0600); the finished file gets the usual mode
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o666 & ~_umask())
        try:
            self._f: Any = sf.SoundFile(
                os.fsencode(tmp),  # a name that is not UTF-8 (see files.open_audio)
                "w",
                samplerate=int(sample_rate),
                channels=channels,
                format="RF64" if big else fmt,
                subtype=subtype,
            )
            if big and frames is None:
                sf._snd.sf_command(self._f._file, SFC_RF64_AUTO_DOWNGRADE, sf._ffi.NULL, 1)
        except Exception as exc:
            self.tmp.unlink(missing_ok=True)
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> AudioFileError:
        """One line that names the user's file, not the hidden temp file, and says when the
        disk is full (libsndfile says only "System error")."""
        why = str(exc).replace(str(self.tmp), str(self.path))
        if _disk_full(self.path.parent):
            why = f"the disk is full ({why})"
        return AudioFileError(f"cannot write {self.path}: {why}")

    def write(self, x: np.ndarray) -> None:
        pcm = PCM_SCALE.get(self.subtype)
        if pcm is not None:
            scale, dtype, shift = pcm
            q = np.clip(np.rint(np.asarray(x, dtype=np.float64) * scale), -scale, scale - 1)
            x = q.astype(dtype) << shift if shift else q.astype(dtype)
        try:
            self._f.write(x)
        except Exception as exc:  # disk full, device gone: one line for the user
            raise self._error(exc) from None

    def commit(self) -> None:
        try:
            self._f.close()
            os.replace(self.tmp, self.path)
        except Exception as exc:
            raise self._error(exc) from None

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicSoundFile:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Recorder:
    """A worker sink (``push``) that records to ``path`` on its own thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        max_queue_s: float = 10,
        what: str = "output",
    ) -> None:
        self.path = Path(path)
        self.what = what  # what it records: "output" (marked) or "input"
        self.sample_rate = int(sample_rate)
        self._file = AtomicSoundFile(self.path, sample_rate, 1)
        # (silence to write first, audio): unbounded as a queue, bounded in samples by push()
        self._q: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue()
        self._limit = max(1, int(max_queue_s * self.sample_rate))
        self._pushed = 0  # samples queued, written by the worker only...
        self._taken = 0  # ...and samples the writer has taken off the queue, by it only
        self._gap = 0  # samples dropped since the last queued chunk (worker only)
        self.dropped = 0  # samples that reached the file as silence: the disk fell behind
        self.frames = 0
        self.error: str = ""
        self._thread = threading.Thread(target=self._run, name="audioseal-recorder", daemon=True)
        self._thread.start()

    def push(self, x: np.ndarray) -> None:
        """Worker side: never blocks."""
        n = int(x.shape[0])
        if self._pushed - self._taken + n > self._limit:
            self._gap += n
            self.dropped += n
            return
        self._q.put((self._gap, x.copy()))
        self._pushed += n
        self._gap = 0

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            gap, x = item
            self._taken += x.shape[0]
            if self.error:
                continue
            try:
                for start in range(0, gap, self.sample_rate):  # silence in 1 s pieces
                    self._file.write(np.zeros(min(self.sample_rate, gap - start), np.float32))
                self._file.write(x)
                self.frames += gap + x.shape[0]
            except Exception as exc:  # disk full etc.: keep audio running, report
                self.error = f"recording {self.path}: {exc}"
                log.error("%s", self.error)

    def summary(self, saved: bool) -> dict[str, object]:
        """For a session's report: where, what, whether it was saved, and what went wrong."""
        return {
            "path": str(self.path),
            "what": self.what,
            "saved": saved,
            "seconds": self.frames / self.sample_rate,
            "silence_s": self.dropped / self.sample_rate,  # the disk fell behind
            "error": self.error,
        }

    def close(self) -> None:
        """Flush, then rename into place (or delete the temp file if writing failed). Never
        raises: what went wrong is in ``error`` (and the log)."""
        self._finish()
        if not self.error:
            try:
                self._file.commit()
            except AudioFileError as exc:
                self.error = f"recording {exc}"
        if self.error:
            self._file.abort()
            log.error("%s; nothing was saved", self.error)
            return
        log.info("recorded %.1f s to %s", self.frames / self.sample_rate, self.path)
        if self.dropped:
            log.warning(
                "recording %s: %.2f s came faster than the disk took them and were written as "
                "silence",
                self.path,
                self.dropped / self.sample_rate,
            )

    def abort(self) -> None:
        """Stop and delete the temp file: nothing appears under ``path`` (a failed start)."""
        self._finish()
        self._file.abort()

    def _finish(self) -> None:
        self._q.put((self._gap, np.zeros(0, np.float32)))  # a trailing gap keeps the length
        self._gap = 0
        self._q.put(None)
        self._thread.join(timeout=30)
