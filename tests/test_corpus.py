"""Corpus builder: a tiny real build, manifest consistency, voice-disjoint deterministic splits."""

from __future__ import annotations

import argparse
import json
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audioseal_live.training import corpus as C

SCALE = 0.02


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deb-cache")  # shared: the second build reuses the downloads


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, dict, list[str]]:
    out = tmp_path_factory.mktemp("corpus")
    logs: list[str] = []
    summary = C.build_corpus(out, scale=SCALE, seed=0, log=logs.append, cache=cache)
    return out, summary, logs


def test_three_nonempty_splits(tiny: tuple[Path, dict, list[str]]) -> None:
    out, summary, _ = tiny
    entries = read_manifest(out)
    for split in C.SPLITS:
        assert any(e["split"] == split for e in entries), split
        assert summary["hours_per_split"][split] > 0
    assert summary["total_hours"] < 1.0  # a smoke build stays small


def test_files_are_16k_mono_flac_matching_the_manifest(tiny: tuple[Path, dict, list[str]]) -> None:
    out, summary, _ = tiny
    entries = read_manifest(out)
    on_disk = {
        p.relative_to(out).as_posix() for s in C.SPLITS for p in (out / s).rglob("*") if p.is_file()
    }
    assert on_disk == {e["path"] for e in entries}
    assert len(entries) == summary["files"]
    for e in entries:
        assert e["split"] in C.SPLITS and e["path"].startswith(e["split"] + "/")
        assert e["kind"] in C.KINDS and e["source"] and e["voice"]
        info = sf.info(str(out / e["path"]))
        assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)
        assert info.duration == pytest.approx(e["duration"], abs=1e-3)
        assert C.MIN_TAIL_S - 1e-3 <= e["duration"] <= C.SEGMENT_S[1] + 1e-3
    audio, _ = sf.read(str(out / entries[0]["path"]), dtype="float32")
    assert np.isfinite(audio).all() and 0 < np.abs(audio).max() < 1.0
    total = sum(e["duration"] for e in entries) / 3600
    assert summary["total_hours"] == pytest.approx(total, abs=1e-3)


def test_no_voice_in_two_splits(tiny: tuple[Path, dict, list[str]]) -> None:
    splits_of: dict[str, set[str]] = defaultdict(set)
    for e in read_manifest(tiny[0]):
        splits_of[e["voice"]].add(e["split"])
    shared = {v: s for v, s in splits_of.items() if len(s) > 1}
    assert not shared


def test_same_seed_same_corpus(
    tiny: tuple[Path, dict, list[str]], cache: Path, tmp_path: Path
) -> None:
    C.build_corpus(tmp_path, scale=SCALE, seed=0, log=lambda _: None, cache=cache)

    def key(out: Path) -> list[tuple]:
        return [(e["path"], e["split"], e["voice"], e["kind"]) for e in read_manifest(out)]

    assert key(tmp_path) == key(tiny[0])


def test_assign_splits_is_deterministic_and_covers_all_splits() -> None:
    weights = {f"v{i}": float(1 + i % 7) for i in range(60)}
    a = C.assign_splits(weights, seed=3)
    assert a == C.assign_splits(dict(reversed(weights.items())), seed=3)
    assert a != C.assign_splits(weights, seed=4)
    load = defaultdict(float)
    for g, s in a.items():
        load[s] += weights[g]
    total = sum(weights.values())
    for split, frac in C.SPLIT_FRACTIONS.items():
        assert load[split] / total == pytest.approx(frac, abs=0.05)
    # few, unequal groups (the 4 real speakers): still one each for valid and test
    few = C.assign_splits({"a": 56.0, "b": 26.0, "c": 24.0, "d": 25.0}, seed=0)
    assert set(few.values()) == set(C.SPLITS)


def _fake_job(voice: str) -> list[C.Clip]:
    rng = np.random.default_rng(sum(map(ord, voice)))
    return [C.Clip((rng.standard_normal(C.SR * 12) * 0.1).astype(np.float32), "tts", "fake", voice)]


def _boom() -> list[C.Clip]:
    raise FileNotFoundError("tool not installed")


def test_failing_source_is_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [C.Job(f"fake{i}", _fake_job, {"voice": f"fake:{i}"}) for i in range(5)]
    monkeypatch.setattr(C, "fetch_packages", lambda *a, **k: {})
    monkeypatch.setattr(C, "plan_jobs", lambda *a, **k: [*jobs, C.Job("broken", _boom, {})])
    logs: list[str] = []
    summary = C.build_corpus(tmp_path, scale=0.01, log=logs.append)
    assert any("broken" in m and "WARNING" in m for m in logs)
    assert summary["files"] > 0 and all(summary["hours_per_split"][s] > 0 for s in C.SPLITS)


def test_nothing_built_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "fetch_packages", lambda *a, **k: {})
    monkeypatch.setattr(C, "plan_jobs", lambda *a, **k: [C.Job("broken", _boom, {})])
    with pytest.raises(C.CorpusError):
        C.build_corpus(tmp_path, scale=0.01, log=lambda _: None)


def test_a_folder_of_the_users_own_is_never_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--out naming a folder with train/ in it but no manifest of ours: refused, untouched
    (a review lost a notes file). A rebuild of our own drops the manifest before the audio."""
    mine = tmp_path / "train" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("precious")
    with pytest.raises(C.CorpusError, match="not a corpus this command built"):
        C.build_corpus(tmp_path, scale=0.01, log=lambda _: None)
    assert mine.read_text() == "precious"
    jobs = [C.Job(f"fake{i}", _fake_job, {"voice": f"fake:{i}"}) for i in range(5)]
    monkeypatch.setattr(C, "fetch_packages", lambda *a, **k: {})
    monkeypatch.setattr(C, "plan_jobs", lambda *a, **k: jobs)
    ours = tmp_path / "ours"
    C.build_corpus(ours, scale=0.01, log=lambda _: None)
    real_write = C.write_clips
    calls: list[int] = []

    def interrupted(*args: object, **kwargs: object) -> list[dict]:
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C while the splits are written
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(C, "write_clips", interrupted)
    with pytest.raises(KeyboardInterrupt):  # a rebuild that stops half-way...
        C.build_corpus(ours, scale=0.01, log=lambda _: None)
    assert not (ours / "manifest.jsonl").exists()  # ...leaves no manifest of deleted audio
    assert (ours / "train").is_dir()
    monkeypatch.setattr(C, "write_clips", real_write)
    C.build_corpus(ours, scale=0.01, log=lambda _: None)  # ...and can be built again there
    assert (ours / "manifest.jsonl").is_file()


def test_midi_writer_makes_a_valid_file() -> None:
    data, seconds = C.random_song(np.random.default_rng(0))
    assert data[:4] == b"MThd" and struct.unpack(">IHHH", data[4:14]) == (6, 0, 1, 480)
    assert data[14:18] == b"MTrk"
    assert struct.unpack(">I", data[18:22])[0] == len(data) - 22
    assert data.endswith(b"\xff\x2f\x00") and 15 < seconds < 90


def test_cli_arguments() -> None:
    parser = argparse.ArgumentParser()
    C.add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--scale", "0.5", "--workers", "2"])
    assert (args.out, args.scale, args.seed, args.workers) == (Path("x"), 0.5, 0, 2)
    for bad in (["--scale", "-1"], ["--scale", "0"], ["--workers", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_the_same_person_behind_two_tts_engines_is_one_speaker() -> None:
    """festival's CMU ARCTIC voices are flite's speakers again: one split per person."""
    assert C.tts_speaker("cmu_us_slt_arctic_hts") == C.tts_speaker("slt") == "slt"
    assert C.tts_speaker("cmu_us_awb_cg") == "awb" and C.tts_speaker("kal_diphone") == "kal"
    assert C.tts_speaker("en1_mbrola") == "en1_mbrola"
