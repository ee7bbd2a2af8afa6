"""The engine's callback state shared with the C callback (``_rtio``), which runs on PortAudio's
audio thread without the GIL.

One int64 block holds the two rings' buffer addresses, capacities and indices, the channel
layout and every counter the callbacks keep. The Python side sees the same objects as with
the Python callback: :class:`SharedRing` is a :class:`RingBuffer` whose indices live in the
block (read and published through the module's acquire/release helpers), and
:class:`NativeStats` is an :class:`IOStats` whose counters do. ``CallbackIO``'s Python
callback bodies still work on them (the demo source and the test fakes drive those).

Without the compiled module (no C compiler at install) or with ``AUDIOSEAL_LIVE_PY_CALLBACK=1``
the engine uses the Python callback; ``native_module()`` says which.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

import numpy as np

from audioseal_live.engine.audio_io import CallbackIO, IOStats
from audioseal_live.engine.ring import RingBuffer

log = logging.getLogger(__name__)

# The C module's slot order (its enum); a build that disagrees is not used.
SLOTS = (
    "in_buf",
    "in_cap",
    "in_w",
    "in_r",
    "out_buf",
    "out_cap",
    "out_w",
    "out_r",
    "in_channels",
    "out_channels",
    "input_channel",
    "started",
    "input_overflows",
    "output_underflows",
    "underruns",
    "underrun_samples",
    "callbacks_in",
    "callbacks_out",
    "frames_in",
    "frames_out",
    "max_block",
    "ring_overflow_events",
    "ring_overflow_samples",
    "io_balance",
)
SLOT = {name: i for i, name in enumerate(SLOTS)}
COUNTERS = SLOTS[SLOTS.index("input_overflows") :]  # IOStats fields kept by the callback


_said_missing = False


def native_module() -> ModuleType | None:
    """The compiled callback module, or None (not built, stale, or switched off)."""
    if os.environ.get("AUDIOSEAL_LIVE_PY_CALLBACK", "") not in ("", "0"):
        return None
    try:
        from audioseal_live.engine import _rtio  # type: ignore[attr-defined]
    except ImportError:
        global _said_missing
        if not _said_missing:  # said once: the user can fix it, and it costs glitches
            _said_missing = True
            log.warning(
                "the C audio callback was not built at install (it needs a C compiler and "
                "Python's headers: apt-get install gcc python3-dev, then reinstall); the "
                "Python callback glitches more on a busy machine"
            )
        return None
    if getattr(_rtio, "N_SLOTS", None) != len(SLOTS):
        log.warning("audioseal_live.engine._rtio is from another version: Python callback")
        return None
    return _rtio


class SharedBlock:
    """The int64 block, its slots by name, and the module's atomic helpers."""

    def __init__(self, rt: ModuleType) -> None:
        self.rt = rt
        self.values = np.zeros(len(SLOTS), dtype=np.int64)
        self.base = int(self.values.ctypes.data)

    def address(self, name: str) -> int:
        return self.base + 8 * SLOT[name]

    def load(self, name: str) -> int:
        return int(self.rt.load(self.address(name)))

    def store(self, name: str, value: int) -> None:
        self.rt.store(self.address(name), int(value))


def _shared_index(address_attr: str) -> Any:
    def get(self: SharedRing) -> int:
        return int(self._block.rt.load(getattr(self, address_attr)))

    def set_(self: SharedRing, value: int) -> None:
        self._block.rt.store(getattr(self, address_attr), int(value))

    return property(get, set_)


def _overflow_counter(slot: str, local: int) -> Any:
    """The input ring's producer is the C callback: its overflow counts live in the block. The
    output ring's producer is the worker: its counts stay in Python."""

    def get(self: SharedRing) -> int:
        return self._block.load(slot) if self._side == "in" else self._ov[local]

    def set_(self: SharedRing, value: int) -> None:
        if self._side == "in":
            self._block.store(slot, value)
        else:
            self._ov[local] = int(value)

    return property(get, set_)


class SharedRing(RingBuffer):
    """A RingBuffer whose indices (and, for the input ring, overflow counters) live in the
    shared block, so that the C callback can be its producer or consumer."""

    def __init__(self, block: SharedBlock, side: str, capacity: int) -> None:
        if capacity & (capacity - 1):
            raise ValueError("a shared ring's capacity must be a power of two")
        self._block = block
        self._w_addr = block.address(f"{side}_w")
        self._r_addr = block.address(f"{side}_r")
        self._side = side
        self._ov = [0, 0]  # the output ring's overflow counts (its producer is Python)
        super().__init__(capacity)
        block.store(f"{side}_buf", int(self._buf.ctypes.data))
        block.store(f"{side}_cap", capacity)

    # the producer's and the consumer's index, published and read with release/acquire
    _w = _shared_index("_w_addr")
    _r = _shared_index("_r_addr")
    overflow_events = _overflow_counter("ring_overflow_events", 0)
    overflow_samples = _overflow_counter("ring_overflow_samples", 1)


def _counter(name: str) -> property:
    def get(self: NativeStats) -> int:
        return self._block.load(name)

    def set_(self: NativeStats, value: int) -> None:
        self._block.store(name, value)

    return property(get, set_)


class NativeStats(IOStats):
    """IOStats whose callback counters are the shared block's slots."""

    def __init__(self, block: SharedBlock) -> None:
        self._block = block
        super().__init__()


for _name in COUNTERS:
    if _name not in ("ring_overflow_events", "ring_overflow_samples"):
        setattr(NativeStats, _name, _counter(_name))


class NativeCallbackIO(CallbackIO):
    """CallbackIO on shared state; ``callback`` and ``userdata`` are what PortAudio's stream
    needs to run the C callback on it."""

    def __init__(
        self,
        rt: ModuleType,
        capacity: int,
        input_channel: int | None = None,
        started: bool = True,
    ) -> None:
        self.block = SharedBlock(rt)
        super().__init__(
            SharedRing(self.block, "in", capacity),
            SharedRing(self.block, "out", capacity),
            input_channel,
            NativeStats(self.block),
            started,
        )
        self.block.store("input_channel", -1 if input_channel is None else input_channel)
        self.block.store("in_channels", 1)
        self.block.store("out_channels", 1)

    @property  # type: ignore[override]
    def started(self) -> bool:
        return bool(self.block.load("started"))

    @started.setter
    def started(self, value: bool) -> None:
        self.block.store("started", int(bool(value)))

    def set_channels(self, in_channels: int, out_channels: int) -> None:
        """The interleaved channel counts PortAudio will hand the callback."""
        self.block.store("in_channels", in_channels)
        self.block.store("out_channels", out_channels)

    @property
    def callback(self) -> int:
        return int(self.block.rt.callback_address())

    @property
    def userdata(self) -> int:
        return self.block.base


def make_callback_io(
    capacity: int, input_channel: int | None = None, started: bool = True
) -> tuple[CallbackIO, RingBuffer, RingBuffer]:
    """The callback state for a new engine: native when the C module is there."""
    rt = native_module()
    if rt is not None:
        io: CallbackIO = NativeCallbackIO(rt, capacity, input_channel, started)
    else:
        io = CallbackIO(RingBuffer(capacity), RingBuffer(capacity), input_channel, None, started)
    return io, io.in_ring, io.out_ring


def stream_callback(io: Any, in_channels: int, out_channels: int) -> tuple[Any, Any] | None:
    """Set ``io`` up for streams of these channel counts: (callback pointer, userdata
    pointer) as cffi objects for sounddevice, or None when ``io`` runs the Python callback.
    ``io.stats.native_callback`` says which."""
    native = isinstance(io, NativeCallbackIO)
    io.stats.native_callback = native
    if not native:
        return None
    import sounddevice as sd

    io.set_channels(in_channels, out_channels)
    ffi = sd._ffi
    return ffi.cast("PaStreamCallback *", io.callback), ffi.cast("void *", io.userdata)
