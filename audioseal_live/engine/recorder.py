"""Record audio to WAV/FLAC on a writer thread; the file appears complete or not at all.

The worker hands chunks over a bounded queue (never blocks: a full queue drops and counts).
The writer writes to a hidden temp file next to the target and renames it into place on
close, so a crash or kill never leaves a truncated WAV/FLAC under the chosen name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from audioseal_live.errors import AudioFileError

log = logging.getLogger(__name__)

FORMATS = {".wav": ("WAV", "PCM_24"), ".flac": ("FLAC", "PCM_24")}


def format_for(path: Path) -> tuple[str, str]:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioFileError(f"cannot write {path.name}: use a .wav or .flac file name")
    return fmt


class AtomicSoundFile:
    """``soundfile.SoundFile`` writing to a temp file, renamed onto ``path`` by ``commit()``."""

    def __init__(self, path: str | os.PathLike[str], sample_rate: int, channels: int) -> None:
        import soundfile as sf

        self.path = Path(path)
        fmt, subtype = format_for(self.path)
        if not self.path.parent.is_dir():
            raise AudioFileError(f"cannot write {self.path}: folder does not exist")
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent
        )
        os.close(fd)
        self.tmp = Path(tmp)
        try:
            self._f: Any = sf.SoundFile(
                tmp,
                "w",
                samplerate=int(sample_rate),
                channels=channels,
                format=fmt,
                subtype=subtype,
            )
        except Exception as exc:
            self.tmp.unlink(missing_ok=True)
            raise AudioFileError(f"cannot write {self.path}: {exc}") from None

    def write(self, x: np.ndarray) -> None:
        self._f.write(x)

    def commit(self) -> None:
        self._f.close()
        os.replace(self.tmp, self.path)

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
    def __init__(
        self, path: str | os.PathLike[str], sample_rate: int, max_queue_s: float = 10
    ) -> None:
        self.path = Path(path)
        self.sample_rate = int(sample_rate)
        self._file = AtomicSoundFile(self.path, sample_rate, 1)
        self._q: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=max(8, int(max_queue_s * 50)))
        self.dropped = 0
        self.frames = 0
        self.error: str = ""
        self._thread = threading.Thread(target=self._run, name="audioseal-recorder", daemon=True)
        self._thread.start()

    def push(self, x: np.ndarray) -> None:
        """Worker side: never blocks."""
        try:
            self._q.put_nowait(x.copy())
        except queue.Full:
            self.dropped += x.shape[0]

    def _run(self) -> None:
        while True:
            x = self._q.get()
            if x is None:
                return
            if self.error:
                continue
            try:
                self._file.write(x)
                self.frames += x.shape[0]
            except Exception as exc:  # disk full etc.: keep audio running, report
                self.error = f"recording {self.path}: {exc}"
                log.error("%s", self.error)

    def close(self) -> None:
        """Flush, then rename into place (or delete the temp file if writing failed)."""
        self._q.put(None)
        self._thread.join(timeout=30)
        if self.error:
            self._file.abort()
        else:
            self._file.commit()
            log.info("recorded %.1f s to %s", self.frames / self.sample_rate, self.path)
