"""`audioseal-live bench` runs end to end and prints its table (figures are not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys


def test_bench_prints_a_row_per_model_and_chunk() -> None:
    cmd = [sys.executable, "-m", "audioseal_live.cli", "bench", "--chunks", "320,1600"]
    cmd += ["--seconds", "0.5", "--rounds", "1", "--threads", "1", "--no-reference", "--bf16"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line.split() for line in out.splitlines() if re.match(r"(generator|detector) ", line)]
    assert [(r[0], r[1]) for r in rows] == [
        ("generator", "320"),
        ("generator", "1600"),
        ("detector", "320"),
        ("detector", "1600"),
    ]
    assert "bf16 p50" in out and "traced p50" in out
    for r in rows:  # ours p50, mean, RTF, traced p50, RTF, threads, bf16 p50, RTF: all > 0
        nums = [float(v) for v in r[3:] if v != "|"]
        assert len(nums) == 8 and all(v > 0 for v in nums)
        assert nums[5] == 1  # --threads 1: the traced step had one thread to run on


def test_bench_keeps_freed_memory_where_glibc_runs() -> None:
    import platform

    # in its own process: the setting is process-wide
    code = "from audioseal_live.bench import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out.stdout.strip() == str(glibc)


def test_table_gives_the_traced_speed_up_round_by_round() -> None:
    from audioseal_live.bench import OURS, OURS_TRACED, Timing, format_table

    rows = [
        Timing(OURS, "generator", 320, 10.0, 10.0, 0.5, 2, (10.0, 11.0, 12.0)),
        Timing(OURS_TRACED, "generator", 320, 7.0, 7.0, 0.35, 1, (7.0, 10.0, 6.0)),
        Timing("audioseal 0.2.0", "generator", 320, 20.0, 20.0, 1.0, 2, (21.0, 20.0, 24.0)),
    ]
    table = format_table(rows)
    assert "per round" in table.splitlines()[0]
    line = table.splitlines()[2]
    assert line.split()[-1] == "2.00-4.00x" and " 2.86x " in line  # 20/10, 24/6; 20/7


def test_bench_live_prints_the_engine_figures_beside_an_idle_server() -> None:
    """`bench --live` on its own JACK dummy server: the engine's figures, then the same server
    as long again with no engine, idle and beside a busy thread (the same-run baselines for
    xruns on a shared machine)."""
    import shutil

    import pytest

    if shutil.which("jackd") is None:
        pytest.skip("jackd is not installed")
    cmd = [sys.executable, "-m", "audioseal_live.cli", "bench", "--live", "--seconds-live", "3"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    fig = dict(
        (k.strip(), v.strip())
        for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
    )
    assert 0 < float(fig["latency_measured_ms"]) <= float(fig["latency_budget_ms"])
    assert 0 < float(fig["ms_per_chunk_p50"]) <= float(fig["ms_per_chunk_p99"])
    assert fig["native_callback"] in ("True", "False") and float(fig["rss_end_mb"]) > 0
    for key, tail in (("idle", ""), ("loaded", ", one busy thread beside")):
        text = fig[f"{key}_server_xruns"]
        assert re.fullmatch(r"\d+ xruns in 3 s \(CPU stolen: .+ s\) with no engine" + tail, text)
