"""Fakes for engine tests: a numpy marker/detector, a clock, and a callback-driving backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from audioseal_live.engine.audio_io import CallbackIO


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeMarker:
    """Watermark = a fixed small fraction of the input (deterministic, cheap). ``cost_s``
    advances a fake clock per call to simulate a slow model."""

    nbits = 16

    def __init__(self, scale: float = 0.01, clock: FakeClock | None = None, cost_s: float = 0.0):
        self.scale = scale
        self.clock = clock
        self.cost_s = cost_s
        self.calls = 0
        self.resets = 0
        self.fail = False

    def reset(self) -> None:
        self.resets += 1

    def process(self, x16k: np.ndarray, message: Sequence[int]) -> np.ndarray:
        self.calls += 1
        if self.clock is not None:
            self.clock.t += self.cost_s
        if self.fail:
            raise RuntimeError("model exploded")
        return (self.scale * x16k).astype(np.float32)

    def close(self) -> None:
        pass


class FakeDetector:
    """P(marked) = 0.9 where x > level; bit logits +-2 by the given message at phase ``sync``.

    The other phases (``phases`` > 1) carry the inverted message, less sure (+-0.5): a
    decoder that does not pick the surest phase reads the wrong bits.
    """

    nbits = 16

    def __init__(
        self, bits: Sequence[int], level: float = 0.01, phases: int = 1, sync: int = 0
    ) -> None:
        self.bits = np.array(bits, dtype=np.float32)
        self.level = level
        self.phases = phases
        self.sync = sync
        self.batch = 0
        self.active = list(range(phases))
        self.calls: list[int] = []  # batch x phases of every call: the work done

    def reset(self, batch_size: int) -> None:
        self.batch = batch_size
        self.active = list(range(self.phases))

    def narrow(self, signal: int, phase: int) -> None:
        self.batch, self.active = 1, [phase]

    def process(self, x16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert x16k.shape[0] == self.batch
        self.calls.append(self.batch * len(self.active))
        p = np.where(x16k > self.level, 0.9, 0.1).astype(np.float32)  # polarity-sensitive
        sign = 2 * self.bits - 1
        per_phase = np.stack([2.0 * sign if k == self.sync else -0.5 * sign for k in self.active])
        logits = np.broadcast_to(
            per_phase[None, :, :, None], (x16k.shape[0], len(self.active), 16, x16k.shape[1])
        )
        return p, np.ascontiguousarray(logits)

    def warm_up(self, chunk: int) -> None:
        pass

    def code_stream(self, seconds: float | None) -> None:
        return None  # bits from the logits

    def close(self) -> None:
        pass


class FakeBackend:
    """Drives the real callback bodies (CallbackIO) from a test, block by block."""

    def __init__(self, io: CallbackIO, cfg: Any, rate: int = 48000, block: int = 256) -> None:
        self.io = io
        self.stats = io.stats
        self.sample_rate = rate
        self.block = block
        self.source = np.zeros(0, dtype=np.float32)
        self.pos = 0
        self.out: list[np.ndarray] = []
        self.started = False
        self.stats.output_latency = block / rate

    def open(self) -> None:
        pass

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        pass

    def block_estimate(self) -> int:
        return self.block

    def feed(self, frames: int, channels: int = 1) -> None:
        x = self.source[self.pos : self.pos + frames]
        if x.shape[0] < frames:
            x = np.concatenate([x, np.zeros(frames - x.shape[0], dtype=np.float32)])
        self.pos += frames
        self.io.on_input(np.repeat(x[:, None], channels, axis=1), frames, False)

    def drain(self, frames: int, channels: int = 1) -> np.ndarray:
        out = np.full((frames, channels), np.nan, dtype=np.float32)
        self.io.on_output(out, frames, False)
        self.out.append(out[:, 0].copy())
        return out

    def output(self) -> np.ndarray:
        return np.concatenate(self.out) if self.out else np.zeros(0, dtype=np.float32)


def fake_factory(rate: int = 48000, block: int = 256) -> Any:
    holder: dict[str, FakeBackend] = {}

    def make(io: CallbackIO, cfg: Any) -> FakeBackend:
        holder["backend"] = FakeBackend(io, cfg, rate, block)
        return holder["backend"]

    make.holder = holder  # type: ignore[attr-defined]
    return make
