"""Training data: random 1 s segments from the corpus manifest, held in memory.

The whole split is read once into int16 arrays (~0.5 GB for 4.5 h): the trainer then never
touches the disk again, so a corpus rebuilt during a run cannot break it, and sampling is a
pure function of a numpy Generator whose state goes into every checkpoint (exact resume).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from audioseal_live.errors import AudioSealLiveError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


class CorpusMissingError(AudioSealLiveError, FileNotFoundError):
    """No manifest, or no usable audio for the requested split."""


@dataclass
class Entry:
    path: Path
    split: str
    kind: str
    source: str
    voice: str
    duration: float


def read_manifest(
    root: str | Path, split: str | None = None, kinds: Iterable[str] | None = None
) -> list[Entry]:
    """Manifest lines of one split (all when None), optionally only some kinds."""
    root = Path(root)
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise CorpusMissingError(
            f"no corpus manifest at {manifest}: build one with `audioseal-live corpus --out {root}`"
        )
    wanted = set(kinds) if kinds is not None else None
    entries = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            d["split"], d["kind"], d["path"]  # noqa: B018 (the keys every line has)
        except (ValueError, KeyError, TypeError):
            raise CorpusMissingError(
                f"{manifest}, line {number}: not a manifest entry; rebuild the corpus with "
                f"`audioseal-live corpus --out {root}`"
            ) from None
        if split is not None and d["split"] != split:
            continue
        if wanted is not None and d["kind"] not in wanted:
            continue
        entries.append(
            Entry(
                root / d["path"],
                d["split"],
                d["kind"],
                d.get("source", ""),
                d.get("voice", ""),
                float(d.get("duration", 0.0)),
            )
        )
    return entries


def empty_split(root: str | Path, split: str, hint: str = "") -> CorpusMissingError:
    """The error for a split with no lines in the manifest (named, with the folder)."""
    root = Path(root)
    return CorpusMissingError(
        f"the corpus {root} has no {split} split (no {split!r} lines in "
        f"{root / 'manifest.jsonl'}): rebuild it with `audioseal-live corpus --out {root}`{hint}"
    )


def require_split(root: str | Path, split: str, hint: str = "") -> list[Entry]:
    """The manifest lines of ``split``; a CorpusMissingError naming the folder and the split
    when there are none (checked before a run folder is made). ``hint`` ends the message."""
    entries = read_manifest(root, split)
    if not entries:
        raise empty_split(root, split, hint)
    return entries


def read_audio(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz (the corpus is already 16 kHz mono)."""
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        import soxr  # only for foreign files; the corpus is 16 kHz

        audio = soxr.resample(audio, sr, SAMPLE_RATE)
    return audio.mean(axis=1).astype(np.float32)


class SegmentPool:
    """All clips of a split in memory; draws random fixed-length segments."""

    def __init__(
        self,
        entries: list[Entry],
        segment: int = SAMPLE_RATE,
        max_clips: int | None = None,
        root: str | Path | None = None,
        split: str | None = None,
    ) -> None:
        """``root`` and ``split`` (where the entries come from) name them in errors."""
        self.segment = segment
        self.clips: list[np.ndarray] = []
        self.entries: list[Entry] = []
        unreadable: list[Entry] = []
        for e in entries[:max_clips] if max_clips else entries:
            try:
                audio = read_audio(e.path)
            except (OSError, RuntimeError) as err:  # a corpus being rebuilt: skip the file
                if not unreadable:  # the first says why; the count says how many
                    log.warning("skipping %s: %s", e.path, err)
                unreadable.append(e)
                continue
            if len(audio) < SAMPLE_RATE // 10:
                continue
            self.clips.append(np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16))
            self.entries.append(e)
        self.unreadable = len(unreadable)
        if split is None and entries:
            split = entries[0].split
        where = f"{split} split" if split else "corpus split"
        if unreadable:
            log.warning(
                "%d of %d files of the %s could not be read",
                len(unreadable),
                len(unreadable) + len(self.clips),
                where,
            )
        if not self.clips:
            if root is not None:
                folder = Path(root)
            elif entries:  # entries lie at ROOT/split/kind/source/file: ROOT is to rebuild
                path = entries[0].path
                folder = path.parents[3] if len(path.parents) > 3 else path.parent
            else:
                raise CorpusMissingError(f"the {where} is empty: no clips to read")
            if not entries:
                raise empty_split(folder, split or "requested")
            raise CorpusMissingError(
                f"no readable audio in the {where} of {folder} ({len(unreadable)} files "
                f"missing or unreadable): rebuild it with `audioseal-live corpus --out {folder}`"
            )
        lengths = np.array([len(c) for c in self.clips], dtype=np.float64)
        # clips drawn in proportion to their length: every second of audio equally likely
        self.weights = lengths / lengths.sum()
        self.seconds = float(lengths.sum()) / SAMPLE_RATE

    @classmethod
    def from_corpus(
        cls,
        root: str | Path,
        split: str,
        segment: int = SAMPLE_RATE,
        kinds: Iterable[str] | None = None,
        max_clips: int | None = None,
    ) -> SegmentPool:
        return cls(read_manifest(root, split, kinds), segment, max_clips, root=root, split=split)

    def __len__(self) -> int:
        return len(self.clips)

    def draw(self, rng: np.random.Generator, batch: int) -> Tensor:
        """(batch, 1, segment) float32; short clips are zero-padded at a random offset."""
        out = np.zeros((batch, 1, self.segment), dtype=np.float32)
        idx = rng.choice(len(self.clips), size=batch, p=self.weights)
        for b, i in enumerate(idx):
            clip = self.clips[i]
            if len(clip) >= self.segment:
                start = int(rng.integers(0, len(clip) - self.segment + 1))
                out[b, 0] = clip[start : start + self.segment]
            else:
                start = int(rng.integers(0, self.segment - len(clip) + 1))
                out[b, 0, start : start + len(clip)] = clip
        return torch.from_numpy(out / 32767.0)


@dataclass
class Batch:
    """Half the batch is watermarked whole clips, half stays unmarked whole clips.

    Unmarked whole clips (not only unmarked windows) are what keeps the detector from the
    "always marked" collapse (shared/DATA.md).
    """

    audio: Tensor  # (B, 1, T) host audio
    other: Tensor  # (B, 1, T) unrelated audio, for swapped windows
    message: Tensor  # (B, nbits) long
    marked: Tensor  # (B,) bool: this example gets the watermark


def make_batch(
    pool: SegmentPool, rng: np.random.Generator, generator: torch.Generator, batch: int, nbits: int
) -> Batch:
    audio = pool.draw(rng, batch)
    other = pool.draw(rng, batch)
    message = torch.randint(0, 2, (batch, nbits), generator=generator)
    marked = torch.arange(batch) < (batch + 1) // 2
    return Batch(audio, other, message, marked)
