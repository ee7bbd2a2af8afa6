"""Metrics snapshot: written by the worker, read by apps without ever blocking the audio path.

The worker builds a new frozen ``Snapshot`` per chunk and swaps one attribute reference
(atomic under the GIL); readers just take the current reference. No locks, no queues.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NO_MONITOR = "off"  # Detection.source when no detector listens (the monitor is set to off)


@dataclass(frozen=True)
class Detection:
    """Live detector result (monitor)."""

    prob_chunk: float = 0.0  # mean P(marked) over the last chunk
    prob_smoothed: float = 0.0  # mean over the last ~1 s, or the code's evidence if higher
    bits: tuple[int, ...] = ()  # the code's reader, or a vote over detected samples
    bit_confidence: tuple[float, ...] = ()  # |2 sigmoid(z or mean logit) - 1| per bit
    match: bool | None = None  # bits == embedded message (None: nothing detected yet)
    inverted: bool = False  # the inverted polarity scored higher
    # the polarity was taken from the embedded message (nothing else told it): the bits
    # read as its exact complement, which the message inverted or its complement as
    # recorded both give
    polarity_from_message: bool = False
    source: str = "output"  # "output" (digital), the capture device's name, or NO_MONITOR
    chunks: int = 0
    history: tuple[float, ...] = ()  # smoothed probability, one value per chunk (last ~10 s)
    dropped_samples: int = 0  # monitor fell behind and skipped audio (never affects output)
    code_sync: float | None = None  # the message code's sync score (None: no code)
    # the last chunk was too quiet to tell (a pause): prob_smoothed holds its value (up to 5 s)
    quiet: bool = False


NO_DETECTION = Detection(source=NO_MONITOR)  # what a snapshot says without a monitor


@dataclass(frozen=True)
class Snapshot:
    running: bool = False
    time_s: float = 0.0  # audio time processed
    input_frames: int = 0  # frames the input callback received (what the device delivered)
    sample_rate: int = 0
    chunk_ms: float = 0.0
    threads: int = 0
    device: str = "cpu"
    message: tuple[int, ...] = ()
    alpha: float = 1.0
    bypass: bool = False
    # levels of the last chunk (linear, full scale = 1)
    peak_in: float = 0.0
    rms_in: float = 0.0
    peak_out: float = 0.0
    rms_out: float = 0.0
    # compute
    chunks: int = 0
    ms_per_chunk: float = 0.0
    ms_per_chunk_p50: float = 0.0
    ms_per_chunk_p99: float = 0.0
    rtf: float = 0.0  # compute time / audio time over the recent window
    # rings (samples at the device rate)
    in_ring_fill: int = 0
    out_ring_fill: int = 0
    out_ring_target: int = 0
    # latency
    input_latency_ms: float = 0.0  # as PortAudio reports it
    output_latency_ms: float = 0.0  # as PortAudio reports it
    pipeline_delay_ms: float = 0.0  # resampler group delays (exact)
    latency_ms: float = 0.0  # current mic->out estimate: PA in + rings + pipeline + PA out
    latency_budget_ms: float = 0.0  # upper bound of the above at steady state
    # glitches
    input_overflows: int = 0  # PortAudio input overflow flags
    output_underflows: int = 0  # PortAudio output underflow flags
    xruns: int = 0  # sum of the two above
    underruns: int = 0  # output callbacks that found the ring short (zeros played)
    underrun_samples: int = 0
    input_ring_overflows: int = 0  # worker too slow to drain the input ring
    native_callback: bool = False  # the audio callback runs in C, without the GIL
    stale_dropped_s: float = 0.0  # input dropped after long stalls instead of played late
    unmarked_spans: int = 0
    unmarked_s: float = 0.0
    overloaded: bool = False
    drift_drops: int = 0
    drift_inserts: int = 0
    limiter_samples: int = 0
    callback_errors: int = 0
    last_error: str = ""
    detection: Detection = field(default_factory=Detection)

    @property
    def drift_corrections(self) -> int:
        return self.drift_drops + self.drift_inserts

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["drift_corrections"] = self.drift_corrections
        return d

    def status_line(self, width: int | None = None) -> str:
        """One line of the figures that matter live; within ``width`` columns if given (a
        terminal's: a wrapped line cannot be redrawn in place), padded to it so that a
        shorter redraw leaves no stale tail."""
        det = self.detection
        bits = "".join(map(str, det.bits)) if det.bits else "-" * 16
        match = {None: "?", True: "ok", False: "NO"}[det.match]
        if det.bits and det.inverted:  # "inv?": read off the message (see Detection)
            match += " inv?" if det.polarity_from_message else " inv"
        # the detector's part: no "P 0.00", which reads as "not marked", when none listens
        off = det.source == NO_MONITOR
        verdict = "detector off" if off else f"P {det.prob_smoothed:4.2f} {bits} {match:<7}"
        line = (
            f"t={self.time_s:6.1f}s in {db(self.peak_in):6.1f} dB out {db(self.peak_out):6.1f} dB"
            f" | {self.ms_per_chunk_p50:5.1f}/{self.ms_per_chunk_p99:5.1f} ms p50/p99"
            f" RTF {self.rtf:4.2f} | lat {self.latency_ms:5.1f} ms"
            f" | xruns {self.xruns} under {self.underruns} unmarked {self.unmarked_spans}"
            f" drift {self.drift_corrections} | {verdict}"
        )
        if width is None:
            return line
        room = max(1, width - 1)  # the last column would wrap on some terminals
        # Fewer figures until it fits: levels and bits go first, then compute.
        glitches = f"xruns {self.xruns} under {self.underruns} unmarked {self.unmarked_spans}"
        short = "detector off" if off else f"P {det.prob_smoothed:.2f} {match}"
        tail = f"lat {self.latency_ms:.0f} ms | {glitches} | {short}"
        compute = f"{self.ms_per_chunk_p50:.1f} ms RTF {self.rtf:.2f}"
        for candidate in (
            f"t={self.time_s:.1f}s | {compute} | {tail}",
            f"t={self.time_s:.1f}s | {tail}",
        ):
            if len(line) <= room:
                break
            line = candidate
        return line[:room].ljust(room)


def db(x: float) -> float:
    return 20 * math.log10(max(x, 1e-6))


class TimingWindow:
    """Recent per-chunk compute times for p50/p99 and RTF (worker side only)."""

    def __init__(self, size: int = 500, refresh_every: int = 5) -> None:
        self._ms = np.zeros(size, dtype=np.float64)
        self._audio_ms = np.zeros(size, dtype=np.float64)
        self._n = 0
        # Percentiles of 500 values cost ~0.3 ms: at 20 ms chunks that was 1.5 % of a core for
        # figures the window shows at 4 Hz. Recomputed every few chunks instead.
        self._refresh = max(1, int(refresh_every))
        self._stats: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._stats_n = 0

    def add(self, compute_ms: float, audio_ms: float) -> None:
        i = self._n % self._ms.shape[0]
        self._ms[i] = compute_ms
        self._audio_ms[i] = audio_ms
        self._n += 1

    def stats(self, fresh: bool = False) -> tuple[float, float, float]:
        """(p50 ms, p99 ms, RTF) over the window; at most ``refresh_every`` chunks old unless
        ``fresh``."""
        n = min(self._n, self._ms.shape[0])
        if n == 0:
            return 0.0, 0.0, 0.0
        if not fresh and 0 < self._n - self._stats_n < self._refresh:
            return self._stats
        ms = self._ms[:n]
        p50, p99 = np.percentile(ms, [50, 99])
        audio = float(self._audio_ms[:n].sum())
        self._stats = (float(p50), float(p99), float(ms.sum() / audio) if audio > 0 else 0.0)
        self._stats_n = self._n
        return self._stats

    def last_ms(self) -> float:
        """The latest chunk's compute (the window is a ring: slot order is not time order)."""
        return float(self._ms[(self._n - 1) % self._ms.shape[0]]) if self._n else 0.0

    def all_ms(self) -> np.ndarray:
        return self._ms[: min(self._n, self._ms.shape[0])].copy()
