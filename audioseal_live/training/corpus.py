"""Offline training corpus: real speech, multi-voice TTS, music, noise and reverberant mixtures.

Everything comes from Debian packages and local tools, so the corpus can be rebuilt on a machine
without access to dataset hosts. Audio is written as 16 kHz mono FLAC segments under
``OUT/{train,valid,test}/<kind>/<source>/`` with ``OUT/manifest.jsonl`` and ``OUT/summary.json``.

PyPI dependencies: numpy, soundfile, soxr (required); g722 (decodes the Asterisk G.722 prompts;
ffmpeg is used instead when it is missing), pyroomacoustics (room impulse responses; a synthetic
exponential-decay RIR is used instead when it is missing).
Debian packages (optional, each missing one only skips a source): apt-get/dpkg (to fetch the
data packages), espeak-ng, flite, festival, fluidsynth + timgm6mb-soundfont.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audioseal_live.errors import AudioSealLiveError

SR = 16_000
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}
KINDS = ("speech", "tts", "music", "noise", "mix")
SEGMENT_S = (5.0, 10.0)  # segment length range; short tails below MIN_TAIL_S are dropped
MIN_TAIL_S = 2.0
MIN_EXCERPT_S = 12.0  # shortest excerpt taken from one music file

# Minutes of audio per source at scale 1.0 (None: take everything the source has).
BUDGET_MIN: dict[str, float | None] = {
    "asterisk": None,  # ~131 min, 4 speakers
    "espeak-ng": 55.0,
    "flite": 10.0,
    "festival": 5.0,
    "warzone2100": 60.0,
    "colobot": 30.0,
    "moh": None,  # ~18 min
    "midi": 15.0,
    "noise": 10.0,
    "mix": 20.0,
}

ASTERISK_SPEECH = [f"asterisk-core-sounds-{lang}-g722" for lang in ("en", "es", "fr", "it", "ru")]
MUSIC_PACKAGES = {
    "warzone2100": ("warzone2100-music", "usr/share/games/warzone2100/music", ("*.opus", "*.ogg")),
    "colobot": ("colobot-common-sounds", "usr/share/games/colobot/music", ("*.ogg",)),
    "moh": ("asterisk-moh-opsound-g722", "usr/share/asterisk/moh", ("*.g722",)),
}

# espeak-ng language -> gettext locale folders that hold text in that language.
ESPEAK_LANGS = {
    "en-us": ["en_GB", "en_CA", "en_AU"],
    "en-gb": ["en_GB", "en_AU"],
    "de": ["de"],
    "fr-fr": ["fr"],
    "es": ["es"],
    "it": ["it"],
    "pt": ["pt"],
    "pt-br": ["pt_BR"],
    "pl": ["pl"],
    "nl": ["nl"],
    "sv": ["sv"],
    "cs": ["cs"],
    "fi": ["fi"],
    "ru": ["ru"],
    "tr": ["tr"],
    "da": ["da"],
    "hu": ["hu"],
    "ro": ["ro"],
    "el": ["el"],
    "uk": ["uk"],
    "ca": ["ca"],
    "sk": ["sk"],
    "hr": ["hr"],
    "nb": ["nb"],
    "id": ["id"],
    "vi": ["vi"],
}
# flite/festival voices recorded from the same person share one speaker id, so they never
# straddle two splits.
TTS_SPEAKER = {"kal": "kal", "kal16": "kal", "kal_diphone": "kal"}
# festival's CMU ARCTIC voices are flite's speakers again: cmu_us_slt_arctic_hts is slt
_CMU_VOICE = re.compile(r"cmu_us_([a-z]+)_")


def tts_speaker(voice: str) -> str:
    """The person behind a flite/festival voice name (one split per person)."""
    cmu = _CMU_VOICE.match(voice)
    return TTS_SPEAKER.get(voice, cmu.group(1) if cmu else voice)


class CorpusError(AudioSealLiveError, RuntimeError):
    """Raised when no source at all could produce audio (or the output cannot be written)."""


@dataclass
class Clip:
    """A stretch of 16 kHz mono audio from one source and one voice (the split unit)."""

    audio: np.ndarray
    kind: str
    source: str
    voice: str
    lang: str = ""


Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------
# small helpers


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """Independent, reproducible stream per (seed, job), whatever order jobs run in."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _to_mono16k(audio: np.ndarray, sr: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if sr != SR:
        audio = soxr.resample(audio, sr, SR, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _read_audio(path: Path, start_s: float = 0.0, dur_s: float | None = None) -> np.ndarray:
    """Read (an excerpt of) any soundfile-readable file as 16 kHz mono."""
    with sf.SoundFile(str(path)) as fh:
        start = min(int(start_s * fh.samplerate), max(fh.frames - 1, 0))
        if start:
            fh.seek(start)
        frames = -1 if dur_s is None else int(dur_s * fh.samplerate)
        audio = fh.read(frames, dtype="float32", always_2d=True)
        return _to_mono16k(audio, fh.samplerate)


def _duration(path: Path) -> float:
    if path.suffix == ".g722":
        return path.stat().st_size / 8000.0  # 64 kbit/s = 8000 bytes per second
    return sf.info(str(path)).duration


def _decode_g722(path: Path) -> np.ndarray:
    """G.722 at 64 kbit/s -> 16 kHz float; the `g722` wheel, or ffmpeg as a fallback."""
    try:
        import G722  # the `g722` PyPI package installs the module under this name
    except ImportError:
        G722 = None
    if G722 is not None:
        pcm = np.asarray(G722.G722(SR, 64000).decode(path.read_bytes()), dtype=np.int16)
        return pcm.astype(np.float32) / 32768.0
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("neither the `g722` package nor ffmpeg is available for G.722")
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-f",
        "g722",
        "-i",
        str(path),
        "-f",
        "f32le",
        "-ac",
        "1",
        "-ar",
        str(SR),
        "-",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(out, dtype=np.float32).copy()


def _run_quiet(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, timeout=timeout, **kw)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "x"


# ----------------------------------------------------------------------------------------------
# Debian data packages: downloaded once into OUT/.cache, extracted without installing


def fetch_packages(names: Iterable[str], cache: Path, log: Log) -> dict[str, Path]:
    """Return {package: extracted root} for the packages that could be fetched."""
    debs, roots = cache / "debs", cache / "pkgs"
    debs.mkdir(parents=True, exist_ok=True)
    names = list(names)
    missing = [
        n for n in names if not (roots / n / ".done").exists() and not list(debs.glob(f"{n}_*.deb"))
    ]
    if missing and shutil.which("apt-get"):
        # one call for all is much faster; if one name is unknown it fails, so retry singly
        try:
            _run_quiet(["apt-get", "download", *missing], timeout=900, cwd=debs)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            for name in missing:
                try:
                    _run_quiet(["apt-get", "download", name], timeout=600, cwd=debs)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
                    log(f"WARNING: apt-get download {name} failed ({err}); source skipped")
    elif missing:
        log(f"WARNING: apt-get not found; skipping packages {missing}")
    found = {}
    for name in names:
        root = roots / name
        if not (root / ".done").exists():
            deb = sorted(debs.glob(f"{name}_*.deb"))
            if not deb:
                continue
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            try:
                _run_quiet(["dpkg", "-x", str(deb[-1]), str(root)], timeout=600)
            except (OSError, subprocess.CalledProcessError) as err:
                log(f"WARNING: could not extract {deb[-1].name} ({err}); source skipped")
                continue
            (root / ".done").touch()
        found[name] = root
    return found


# ----------------------------------------------------------------------------------------------
# text for TTS: translations shipped with the system (.mo catalogs) give real sentences in many
# languages; Python's own docstrings are the English fallback that always exists


def _mo_strings(path: Path) -> list[str]:
    """Translated strings of a GNU gettext .mo catalog (tiny reader: header + string table)."""
    data = path.read_bytes()
    if len(data) < 28:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if endian is None:
        return []
    count, _, trans_off = struct.unpack(endian + "3I", data[8:20])
    out = []
    for i in range(count):
        entry = trans_off + 8 * i
        length, offset = struct.unpack(endian + "2I", data[entry : entry + 8])
        raw = data[offset : offset + length].split(b"\0")[0]
        out.append(raw.decode("utf-8", errors="ignore"))
    return out


_FORMAT_RE = re.compile(r"%[-#0 +]*(\(\w+\))?\d*(\.\d+)?[a-zA-Z]|\{[^}]*\}|<[^>]*>|[_&\\|*@$#]")


def _clean_sentence(text: str) -> str | None:
    text = " ".join(_FORMAT_RE.sub(" ", text).split())
    letters = sum(ch.isalpha() for ch in text)
    if len(text.split()) < 4 or len(text) > 300 or letters < 0.75 * len(text.replace(" ", "")):
        return None
    return text


def text_pool(locales: list[str], max_files: int = 60, limit: int = 4000) -> list[str]:
    """Sentences in one language from /usr/share/locale (deduplicated, sorted: deterministic)."""
    pool: set[str] = set()
    for loc in locales:
        files = sorted(Path("/usr/share/locale", loc, "LC_MESSAGES").glob("*.mo"))[:max_files]
        for path in files:
            for s in _mo_strings(path):
                if (c := _clean_sentence(s)) is not None:
                    pool.add(c)
            if len(pool) >= limit:
                break
    return sorted(pool)


def english_fallback_pool() -> list[str]:
    """English sentences from the license texts and stdlib docstrings (always present)."""
    # docstrings of modules this file imports anyway
    texts = [
        m.__doc__ or ""
        for m in (argparse, json, random, re, shutil, struct, subprocess, tempfile, hashlib)
    ]
    for path in sorted(Path("/usr/share/common-licenses").glob("*"))[:8]:
        if path.is_file():
            texts.append(path.read_text(errors="ignore"))
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(texts))
    return sorted({c for s in sentences if (c := _clean_sentence(s)) is not None})


def _paragraph(pool: list[str], rng: np.random.Generator, chars: int) -> str:
    parts: list[str] = []
    while sum(map(len, parts)) < chars:
        s = pool[int(rng.integers(len(pool)))]
        parts.append(s if s[-1] in ".!?" else s + ".")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# source jobs: each returns a list of Clips and runs in its own process when workers > 1


def job_asterisk(root: Path, scale: float, seed: int) -> list[Clip]:
    """Studio prompts of one language pack, joined with short pauses into ~1 min stretches."""
    clips = []
    for spk_dir in sorted((root / "usr/share/asterisk/sounds").iterdir()):
        lang, *_, speaker = spk_dir.name.split("_")  # e.g. es_MX_f_Allison
        files = sorted(spk_dir.rglob("*.g722"))
        rng = _rng(seed, "asterisk", spk_dir.name)
        rng.shuffle(files)
        budget = sum(map(_duration, files)) * min(scale, 1.0)
        budget = max(budget, 12.0)  # every speaker gets a few segments, even in a smoke build
        chunk: list[np.ndarray] = []
        used = 0.0
        for path in files:
            audio = _decode_g722(path)
            pause = np.zeros(int(rng.uniform(0.15, 0.6) * SR), np.float32)
            chunk += [audio, pause]
            used += (len(audio) + len(pause)) / SR
            if sum(map(len, chunk)) >= 60 * SR or used >= budget:
                clips.append(
                    Clip(np.concatenate(chunk), "speech", "asterisk", f"asterisk:{speaker}", lang)
                )
                chunk = []
            if used >= budget:
                break
        if chunk:
            clips.append(
                Clip(np.concatenate(chunk), "speech", "asterisk", f"asterisk:{speaker}", lang)
            )
    return clips


def job_espeak(variants: list[str], seconds: float, seed: int) -> list[Clip]:
    """espeak-ng: each variant (a synthetic 'speaker') reads text in 2 random languages."""
    rng = _rng(seed, "espeak", tuple(variants))
    pools = {}
    clips = []
    per_voice = seconds / max(len(variants), 1)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        for variant in variants:
            langs = rng.choice(sorted(ESPEAK_LANGS), size=2, replace=False)
            for lang in langs:
                if lang not in pools:
                    pools[lang] = text_pool(ESPEAK_LANGS[lang]) or (
                        english_fallback_pool() if lang.startswith("en") else []
                    )
                if not pools[lang]:
                    continue
                # ~14 characters per second of speech at the default rate
                text = _paragraph(pools[lang], rng, int(per_voice / 2 * 14))
                rate, pitch = int(rng.integers(120, 200)), int(rng.integers(25, 75))
                cmd = [
                    "espeak-ng",
                    "-v",
                    f"{lang}+{variant}",
                    "-s",
                    str(rate),
                    "-p",
                    str(pitch),
                    "-w",
                    str(wav),
                ]
                _run_quiet(cmd, input=text.encode())
                clips.append(
                    Clip(_read_audio(wav), "tts", "espeak-ng", f"espeak-ng:{variant}", lang)
                )
    return clips


def _read_aloud(
    source: str, voice: str, seconds: float, seed: int, synth: Callable[[Path, Path], list[str]]
) -> list[Clip]:
    """English TTS: paragraphs through `synth(text_file, wav_file) -> command` until `seconds`."""
    rng = _rng(seed, source, voice)
    pool = english_fallback_pool() + text_pool(["en_GB"])
    speaker = tts_speaker(voice)
    clips: list[Clip] = []
    with tempfile.TemporaryDirectory() as tmp:
        txt, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        while sum(len(c.audio) for c in clips) < seconds * SR:
            txt.write_text(_paragraph(pool, rng, 250), encoding="utf-8")
            _run_quiet(synth(txt, wav))
            clips.append(Clip(_read_audio(wav), "tts", source, f"tts:{speaker}", "en"))
    return clips


def job_flite(voice: str, seconds: float, seed: int) -> list[Clip]:
    return _read_aloud(
        "flite",
        voice,
        seconds,
        seed,
        lambda txt, wav: ["flite", "-voice", voice, "-f", str(txt), "-o", str(wav)],
    )


def job_festival(voice: str, seconds: float, seed: int) -> list[Clip]:
    return _read_aloud(
        "festival",
        voice,
        seconds,
        seed,
        lambda txt, wav: ["text2wave", "-eval", f"(voice_{voice})", "-o", str(wav), str(txt)],
    )


def job_music_file(
    path: Path, source: str, group: str, seconds: float | None, seed: int
) -> list[Clip]:
    """One excerpt (or all) of one music file; the file is the split unit."""
    if path.suffix == ".g722":
        audio = _decode_g722(path)
        if seconds is not None and seconds < len(audio) / SR:
            start = int(_rng(seed, "music", group).uniform(0, len(audio) / SR - seconds) * SR)
            audio = audio[start : start + int(seconds * SR)]
    else:
        total = _duration(path)
        start = 0.0
        if seconds is not None and seconds < total:
            start = float(_rng(seed, "music", group).uniform(0, total - seconds))
        audio = _read_audio(path, start, seconds)
    return [Clip(audio, "music", source, group)]


# --- MIDI: random songs from our own tiny generator and SMF writer, rendered by fluidsynth


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append((value & 0x7F) | 0x80)
    return bytes(reversed(out))


def midi_file(events: list[tuple[int, bytes]], bpm: float, ppq: int = 480) -> bytes:
    """Standard MIDI file, format 0, from (absolute tick, message bytes) events."""
    tempo = int(60_000_000 / bpm)
    track = b"\x00\xff\x51\x03" + tempo.to_bytes(3, "big")
    last = 0
    for tick, msg in sorted(events, key=lambda e: (e[0], e[1][0] & 0xF0 != 0x80)):
        track += _vlq(tick - last) + msg
        last = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, ppq)
    return header + b"MTrk" + struct.pack(">I", len(track)) + track


def random_song(rng: np.random.Generator, ppq: int = 480) -> tuple[bytes, float]:
    """Chords, bass, melody and drums over a diatonic progression; returns (SMF, seconds)."""
    bpm = float(rng.uniform(70, 160))
    root = int(rng.integers(45, 57))
    steps = [0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.6 else [0, 2, 3, 5, 7, 8, 10]
    scale = [root + 12 * o + s for o in range(4) for s in steps]
    progression = [int(d) for d in rng.choice([0, 3, 4, 5, 1, 2], size=4)]
    bars = int(rng.integers(12, 24))
    programs = {
        0: int(rng.choice([0, 4, 16, 19, 24, 48, 52, 88, 89])),  # chords
        1: int(rng.integers(32, 40)),  # bass
        2: int(rng.choice([0, 11, 13, 40, 56, 60, 65, 71, 73, 80, 81])),
    }  # melody
    ev: list[tuple[int, bytes]] = [(0, bytes([0xC0 | ch, p])) for ch, p in programs.items()]

    def note(ch: int, pitch: int, start: int, length: int, vel: int) -> None:
        pitch = int(np.clip(pitch, 0, 127))
        ev.append((start, bytes([0x90 | ch, pitch, int(np.clip(vel, 1, 127))])))
        ev.append((start + max(length - 10, 10), bytes([0x80 | ch, pitch, 0])))

    bar = 4 * ppq
    for b in range(bars):
        deg, t0 = progression[b % 4], b * bar
        for k in (0, 2, 4):  # triad
            note(0, scale[7 + deg + k], t0, bar, int(rng.integers(50, 80)))
        for beat in range(4):
            note(1, scale[deg], t0 + beat * ppq, ppq, int(rng.integers(70, 100)))
        t = t0
        while t < t0 + bar:  # melody: chord tones and passing notes
            length = int(rng.choice([ppq // 2, ppq, ppq * 3 // 2]))
            if rng.random() < 0.85:
                note(
                    2,
                    scale[14 + deg + int(rng.integers(-2, 5))],
                    t,
                    length,
                    int(rng.integers(60, 110)),
                )
            t += length
        for eighth in range(8):  # drums on channel 10
            t = t0 + eighth * ppq // 2
            note(9, 42, t, ppq // 4, int(rng.integers(40, 80)))
            if eighth in (0, 4) or rng.random() < 0.1:
                note(9, 36, t, ppq // 4, 100)
            if eighth in (2, 6):
                note(9, 38, t, ppq // 4, 90)
    return midi_file(ev, bpm, ppq), bars * 4 * 60.0 / bpm


def soundfonts() -> list[Path]:
    found = {
        p.resolve()
        for d in ("/usr/share/sounds/sf2", "/usr/share/soundfonts")
        for p in Path(d).glob("*.sf2")
        if p.exists()
    }
    return sorted(found)


def job_midi(first: int, count: int, seed: int) -> list[Clip]:
    fonts = soundfonts()
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "song.mid", Path(tmp) / "song.wav"
        for i in range(first, first + count):
            rng = _rng(seed, "midi", i)
            data, _ = random_song(rng)
            mid.write_bytes(data)
            font = fonts[int(rng.integers(len(fonts)))]
            _run_quiet(
                [
                    "fluidsynth",
                    "-ni",
                    "-g",
                    "0.5",
                    "-r",
                    str(SR),
                    "-F",
                    str(wav),
                    str(font),
                    str(mid),
                ]
            )
            clips.append(Clip(_read_audio(wav), "music", "midi", f"midi:song{i:04d}"))
    return clips


# ----------------------------------------------------------------------------------------------
# planning: which jobs to run, given the tools and packages present


@dataclass
class Job:
    name: str
    fn: Callable[..., list[Clip]]
    kwargs: dict


def plan_jobs(pkgs: dict[str, Path], scale: float, seed: int, log: Log) -> list[Job]:
    jobs: list[Job] = []
    jobs += _plan_speech(pkgs, scale, seed, log)
    jobs += _plan_tts(scale, seed, log)
    jobs += _plan_music(pkgs, scale, seed, log)
    return jobs


def _minutes(source: str, scale: float) -> float | None:
    budget = BUDGET_MIN[source]
    return None if budget is None else budget * scale


def _plan_speech(pkgs: dict[str, Path], scale: float, seed: int, log: Log) -> list[Job]:
    if not any(p in pkgs for p in ASTERISK_SPEECH):
        log("WARNING: no asterisk-core-sounds package could be fetched; no real speech")
    return [
        Job(f"asterisk:{name}", job_asterisk, dict(root=pkgs[name], scale=scale, seed=seed))
        for name in ASTERISK_SPEECH
        if name in pkgs
    ]


def espeak_variants() -> list[str]:
    """Voice variants (+f3, +klatt, ...) from the espeak-ng data folder."""
    for folder in [
        *Path("/usr/lib").glob("*/espeak-ng-data/voices/!v"),
        Path("/usr/share/espeak-ng-data/voices/!v"),
        Path("/usr/lib/espeak-ng-data/voices/!v"),
    ]:
        if folder.is_dir():
            return sorted(p.name for p in folder.iterdir() if p.is_file() and " " not in p.name)
    return ["m1", "m2", "m3", "f1", "f2", "f3"] if shutil.which("espeak-ng") else []


def flite_voices() -> list[str]:
    try:
        out = _run_quiet(["flite", "-lv"]).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return []
    # awb_time is a talking clock (limited domain); kal and kal16 are one speaker: keep kal16
    return [v for v in out.split(":")[-1].split() if v not in ("awb_time", "kal")]


def festival_voices() -> list[str]:
    if not shutil.which("text2wave"):
        return []
    return sorted(p.name for p in Path("/usr/share/festival/voices").glob("*/*") if p.is_dir())


def _plan_tts(scale: float, seed: int, log: Log) -> list[Job]:
    jobs = []
    variants = espeak_variants() if shutil.which("espeak-ng") else []
    if variants:
        seconds = _minutes("espeak-ng", scale) * 60
        # about 30 s per variant; a smoke build uses a few variants, the full one uses them all
        count = int(np.clip(round(seconds / 30), 3, len(variants)))
        rng = _rng(seed, "espeak-variants")
        chosen = sorted(rng.choice(variants, size=count, replace=False).tolist())
        for i in range(0, count, 12):
            part = chosen[i : i + 12]
            jobs.append(
                Job(
                    f"espeak-ng:{i // 12}",
                    job_espeak,
                    dict(variants=part, seconds=seconds * len(part) / count, seed=seed),
                )
            )
    else:
        log("WARNING: espeak-ng not found; no espeak TTS")
    voices = flite_voices()
    if not voices:
        log("WARNING: flite not found; no flite TTS")
    for v in voices:
        seconds = _minutes("flite", scale) * 60 / len(voices)
        jobs.append(Job(f"flite:{v}", job_flite, dict(voice=v, seconds=seconds, seed=seed)))
    fvoices = festival_voices()
    if not fvoices:
        log("WARNING: festival not found (optional); no festival TTS")
    for v in fvoices:
        seconds = _minutes("festival", scale) * 60 / len(fvoices)
        jobs.append(Job(f"festival:{v}", job_festival, dict(voice=v, seconds=seconds, seed=seed)))
    return jobs


def _music_group(source: str, path: Path) -> str:
    """Split unit of a music file: "trackN" and "trackN_enhanced" are one piece."""
    return f"{source}:{re.sub(r'_enhanced$', '', path.stem)}"


def _music_file_jobs(
    source: str, files: list[Path], budget_min: float | None, scale: float, seed: int
) -> list[Job]:
    """One excerpt per file, equal share of the budget, at least MIN_EXCERPT_S each.

    Small builds use a seeded subset of the files (at least 3, so every split can get one)
    instead of many tiny excerpts, which keeps smoke builds fast.
    """
    durations = {f: _duration(f) for f in files}
    total = sum(durations.values())
    budget = total * min(scale, 1.0) if budget_min is None else min(budget_min * 60, total)
    if not files or budget >= total:  # everything, whole files
        return [
            Job(
                f"{source}:{f.name}",
                job_music_file,
                dict(path=f, source=source, group=_music_group(source, f), seconds=None, seed=seed),
            )
            for f in files
        ]
    order = list(files)
    random.Random(f"{seed}:{source}").shuffle(order)
    count = int(np.clip(budget // MIN_EXCERPT_S, 3, len(order)))
    share = budget / count
    jobs = []
    for f in sorted(order[:count]):
        seconds = None if share >= durations[f] else max(share, MIN_EXCERPT_S)
        jobs.append(
            Job(
                f"{source}:{f.name}",
                job_music_file,
                dict(
                    path=f, source=source, group=_music_group(source, f), seconds=seconds, seed=seed
                ),
            )
        )
    return jobs


def _plan_music(pkgs: dict[str, Path], scale: float, seed: int, log: Log) -> list[Job]:
    jobs = []
    for source, (pkg, folder, patterns) in MUSIC_PACKAGES.items():
        if pkg not in pkgs:
            log(f"WARNING: {pkg} unavailable; no {source} music")
            continue
        files = sorted(f for pat in patterns for f in (pkgs[pkg] / folder).rglob(pat))
        jobs += _music_file_jobs(source, files, _minutes(source, scale), scale, seed)
    if shutil.which("fluidsynth") and soundfonts():
        songs = max(3, round(_minutes("midi", scale) * 60 / 40))  # songs last ~40 s
        for first in range(0, songs, 8):
            jobs.append(
                Job(
                    f"midi:{first}",
                    job_midi,
                    dict(first=first, count=min(8, songs - first), seed=seed),
                )
            )
    else:
        log("WARNING: fluidsynth or a GM soundfont missing; no MIDI music")
    return jobs


def _run_job(job: Job) -> tuple[str, list[Clip], str | None, float]:
    t0 = time.time()
    try:
        return job.name, job.fn(**job.kwargs), None, time.time() - t0
    except Exception as err:  # one broken tool or file must not stop the build
        return job.name, [], f"{type(err).__name__}: {err}", time.time() - t0


def run_jobs(jobs: list[Job], workers: int, log: Log) -> list[Clip]:
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_run_job, jobs))
    else:
        results = [_run_job(j) for j in jobs]
    clips = []
    for name, got, err, secs in results:
        if err:
            log(f"WARNING: {name} failed ({err}); skipped")
        else:
            log(f"  {name}: {sum(len(c.audio) for c in got) / SR / 60:.1f} min in {secs:.1f} s")
        clips += got
    return clips


# ----------------------------------------------------------------------------------------------
# splits: whole voices / source files, deterministic for a seed


def assign_splits(
    weights: dict[str, float], seed: int, fractions: dict[str, float] = SPLIT_FRACTIONS
) -> dict[str, str]:
    """Map each group (voice or source file) to a split.

    Groups are visited in a seeded random order. With 3+ groups, test and valid first take one
    group each (preferring one no larger than their share) so no split is empty; the rest go
    greedily to the split furthest below its target share of the total weight.
    """
    groups = sorted(weights)
    random.Random(seed).shuffle(groups)
    total = sum(weights.values())
    load = dict.fromkeys(SPLITS, 0.0)
    out: dict[str, str] = {}
    if len(groups) >= 3:
        for split in ("test", "valid"):
            share = fractions[split] * total
            fits = [g for g in groups if g not in out and weights[g] <= share]
            pick = (
                fits[0]
                if fits
                else min(
                    (g for g in groups if g not in out), key=lambda g: (weights[g], groups.index(g))
                )
            )
            out[pick] = split
            load[split] += weights[pick]
    elif len(groups) == 2:
        out[groups[1]] = "test"
        load["test"] += weights[groups[1]]
    for g in groups:
        if g not in out:
            split = max(SPLITS, key=lambda s: fractions[s] * total - load[s])
            out[g] = split
            load[split] += weights[g]
    return out


def split_clips(clips: list[Clip], seed: int) -> dict[str, str]:
    """Voice -> split, assigned per kind so every kind is spread over the splits."""
    mapping: dict[str, str] = {}
    for kind in KINDS:
        weights: dict[str, float] = {}
        for c in clips:
            if c.kind == kind:
                weights[c.voice] = weights.get(c.voice, 0.0) + len(c.audio) / SR
        mapping.update(assign_splits(weights, seed))
    return mapping


# ----------------------------------------------------------------------------------------------
# derived material: noise scenes and reverberant mixtures, built inside each split


def colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    spec *= f ** (-exponent / 2)
    out = np.fft.irfft(spec, n)
    return (out / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)


def room_impulse_response(rng: np.random.Generator) -> np.ndarray:
    """Shoebox room (pyroomacoustics image method), else an exponentially decaying noise tail."""
    rt60 = float(rng.uniform(0.15, 0.9))
    try:
        import pyroomacoustics as pra

        dims = rng.uniform([3, 3, 2.4], [10, 8, 4])
        absorption, max_order = pra.inverse_sabine(rt60, dims)
        room = pra.ShoeBox(
            dims, fs=SR, materials=pra.Material(absorption), max_order=min(max_order, 15)
        )
        room.add_source(rng.uniform(0.5, dims - 0.5))
        room.add_microphone(rng.uniform(0.5, dims - 0.5))
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float32)
    except Exception:  # missing package or a degenerate room: the synthetic RIR is good enough
        t = np.arange(int(rt60 * SR)) / SR
        rir = (rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)).astype(np.float32)
        rir[0] = 1.0
    return rir / (np.abs(rir).max() + 1e-12)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12)


def _fit(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random excerpt of length n, looping short inputs."""
    if len(x) < n:
        x = np.tile(x, n // max(len(x), 1) + 1)
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start : start + n]


def make_noise(pool: list[Clip], split: str, seconds: float, seed: int) -> list[Clip]:
    """White/pink/brown noise with slow level changes, and babble from the split's speech."""
    rng = _rng(seed, "noise", split)
    clips = []
    got, i = 0.0, 0
    speech = [c for c in pool if c.kind in ("speech", "tts")]
    while got < seconds:
        n = int(rng.uniform(*SEGMENT_S) * SR)
        kind = ["white", "pink", "brown", "babble"][i % (4 if len(speech) >= 3 else 3)]
        if kind == "babble":
            talkers = rng.choice(
                len(speech), size=min(len(speech), int(rng.integers(3, 8))), replace=False
            )
            x = sum(_fit(speech[t].audio, n, rng) / _rms(speech[t].audio) for t in talkers)
        else:
            x = colored_noise(n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind], rng)
            x *= 1 + 0.5 * np.sin(
                2 * np.pi * rng.uniform(0.05, 0.5) * np.arange(n) / SR + rng.uniform(0, 6.3)
            )
        clips.append(
            Clip(np.asarray(x, np.float32), "noise", f"noise-{kind}", f"noise:{split}", "")
        )
        got += n / SR
        i += 1
    return clips


def make_mixes(pool: list[Clip], split: str, seconds: float, seed: int) -> list[Clip]:
    """Speech in a simulated room plus noise or music at 0-25 dB SNR."""
    rng = _rng(seed, "mix", split)
    speech = [c for c in pool if c.kind in ("speech", "tts")]
    background = [c for c in pool if c.kind in ("music", "noise")]
    if not speech:
        return []
    clips = []
    got = 0.0
    while got < seconds:
        n = int(rng.uniform(*SEGMENT_S) * SR)
        fg = speech[int(rng.integers(len(speech)))]
        x = _fit(fg.audio, n, rng)
        x = np.convolve(x, room_impulse_response(rng))[:n]
        if background:
            bg = _fit(background[int(rng.integers(len(background)))].audio, n, rng)
            snr = rng.uniform(0, 25)
            x = x + bg * (_rms(x) / _rms(bg)) * 10 ** (-snr / 20)
        clips.append(Clip(x.astype(np.float32), "mix", "mix", fg.voice, fg.lang))
        got += n / SR
    return clips


# ----------------------------------------------------------------------------------------------
# writing


def segments(audio: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Cut into 5-10 s pieces; drop near-silent ones and short tails."""
    out, pos = [], 0
    while len(audio) - pos >= MIN_TAIL_S * SR:
        n = int(rng.uniform(*SEGMENT_S) * SR)
        seg = audio[pos : pos + n]
        pos += n
        if _rms(seg) > 10 ** (-60 / 20):
            out.append(seg)
    return out


def normalize(seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random loudness (-32..-16 dBFS RMS) so models see realistic levels; peak kept < 1."""
    seg = seg * (10 ** (rng.uniform(-32, -16) / 20) / _rms(seg))
    peak = float(np.abs(seg).max())
    if peak > 0.98:
        seg = seg * (0.98 / peak)
    return seg.astype(np.float32)


def write_clips(
    clips: list[Clip], split: str, out: Path, seed: int, counters: dict[str, int]
) -> list[dict]:
    entries = []
    for c in clips:
        rng = _rng(seed, "segments", c.voice, counters.get(c.voice, 0))
        for seg in segments(c.audio, rng):
            idx = counters.get(c.voice, 0)
            counters[c.voice] = idx + 1
            rel = Path(split, c.kind, _safe(c.source), f"{_safe(c.voice)}_{idx:05d}.flac")
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(out / rel), normalize(seg, rng), SR, format="FLAC", subtype="PCM_16")
            entries.append(
                dict(
                    path=rel.as_posix(),
                    split=split,
                    kind=c.kind,
                    source=c.source,
                    voice=c.voice,
                    lang=c.lang,
                    duration=round(len(seg) / SR, 4),
                )
            )
    return entries


def summarize(entries: list[dict]) -> dict:
    hours = {s: dict.fromkeys(KINDS, 0.0) for s in SPLITS}
    sources: dict[str, float] = {}
    for e in entries:
        hours[e["split"]][e["kind"]] += e["duration"] / 3600
        sources[e["source"]] = sources.get(e["source"], 0.0) + e["duration"] / 3600
    return {
        "hours": {s: {k: round(v, 4) for k, v in kinds.items()} for s, kinds in hours.items()},
        "hours_per_split": {s: round(sum(k.values()), 4) for s, k in hours.items()},
        "hours_per_source": {s: round(v, 4) for s, v in sorted(sources.items())},
        "total_hours": round(sum(e["duration"] for e in entries) / 3600, 4),
        "files": len(entries),
        "voices": len({e["voice"] for e in entries}),
    }


# ----------------------------------------------------------------------------------------------
# entry points


BUILD_MARK = ".audioseal-corpus"  # in OUT from a build's start: the splits there are ours


def build_corpus(
    out: Path,
    scale: float = 1.0,
    seed: int = 0,
    workers: int = 1,
    log: Log = print,
    cache: Path | None = None,
) -> dict:
    """Build the corpus under `out` and return its summary (also written to summary.json).

    `cache` holds downloaded .deb files (default OUT/.cache) so rebuilds skip the downloads.
    """
    t0 = time.time()
    out = Path(out)
    cache = Path(cache) if cache is not None else out / ".cache"
    manifest, mark = out / "manifest.jsonl", out / BUILD_MARK
    found = [split for split in SPLITS if (out / split).exists()]
    if found and not manifest.is_file() and not mark.is_file():
        # a rebuild replaces a corpus of ours; a folder of the user's own is left alone
        raise CorpusError(
            f"{out} already holds {', '.join(found)} but no manifest.jsonl: not a corpus "
            "this command built; choose a new or empty folder for --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    # Ours from here on, even if this build is interrupted (it can then be built again).
    mark.write_text(
        "audio built by `audioseal-live corpus`; rebuilding replaces it\n", encoding="utf-8"
    )
    # The manifest goes first: an interrupted rebuild then leaves no manifest that names
    # deleted audio (train would read it); the audio is replaced, never the cache.
    for name in ("manifest.jsonl", "summary.json"):
        (out / name).unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)

    pkgs = fetch_packages(
        [*ASTERISK_SPEECH, *(p for p, _, _ in MUSIC_PACKAGES.values())], cache, log
    )
    log(f"packages ready: {len(pkgs)} ({time.time() - t0:.1f} s)")
    jobs = plan_jobs(pkgs, scale, seed, log)
    clips = run_jobs(jobs, workers, log)
    clips = [c for c in clips if len(c.audio) >= MIN_TAIL_S * SR]
    if not clips:
        raise CorpusError(
            "no source produced audio: install espeak-ng/flite/fluidsynth or make "
            "`apt-get download` work (see warnings above)"
        )
    log(
        f"sources decoded/synthesized: {sum(len(c.audio) for c in clips) / SR / 3600:.2f} h "
        f"({time.time() - t0:.1f} s)"
    )

    split_of = split_clips(clips, seed)
    entries: list[dict] = []
    counters: dict[str, int] = {}
    for split in SPLITS:
        pool = [c for c in clips if split_of[c.voice] == split]
        frac = SPLIT_FRACTIONS[split]
        noise = make_noise(pool, split, BUDGET_MIN["noise"] * 60 * scale * frac, seed)
        mixes = make_mixes(pool + noise, split, BUDGET_MIN["mix"] * 60 * scale * frac, seed)
        entries += write_clips(pool + noise + mixes, split, out, seed, counters)
    entries.sort(key=lambda e: e["path"])

    summary = summarize(entries)
    summary.update(scale=scale, seed=seed, build_seconds=round(time.time() - t0, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    part = manifest.with_suffix(".part")
    with open(part, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    os.replace(part, manifest)  # last: it says the corpus is complete
    log(
        f"corpus: {summary['total_hours']:.2f} h in {summary['files']} files, "
        f"{summary['hours_per_split']} ({summary['build_seconds']} s)"
    )
    return summary


def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/corpus"),
        help="output folder (audio, manifest.jsonl, summary.json, .cache)",
    )
    parser.add_argument(
        "--scale",
        type=_positive(float),
        default=1.0,
        help="amount of audio relative to the full corpus (~6 h); 0.02 = smoke",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for splits and synthesis")
    parser.add_argument("--workers", type=_positive(int), default=1, help="parallel processes")


def run(args: argparse.Namespace) -> int:
    build_corpus(args.out, scale=args.scale, seed=args.seed, workers=args.workers)
    return 0  # a CorpusError reaches the CLI: "audioseal-live: error: ..." and status 2


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
