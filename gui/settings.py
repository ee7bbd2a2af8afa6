"""Persistent window settings (QSettings). Devices are saved by *name* and host API, never by
index: indices change whenever a device is plugged in or PortAudio rescans."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audioseal_live_gui import APP_NAME, ORG_NAME
from PySide6.QtCore import QByteArray, QSettings

CHUNK_CHOICES_MS = tuple(range(20, 201, 20))
RATE_CHOICES = (0, 44100, 48000, 96000)  # 0 = the output device's default rate
MONITOR_OUTPUT = "output"  # detector on the marked output (digital loopback)
MONITOR_OFF = "off"


@dataclass(frozen=True)
class DeviceRef:
    """A device as the user picked it. ``name`` empty = the system default."""

    name: str = ""
    hostapi: str = ""

    @property
    def is_default(self) -> bool:
        return not self.name


@dataclass
class GuiSettings:
    input: DeviceRef = field(default_factory=DeviceRef)
    output: DeviceRef = field(default_factory=DeviceRef)
    monitor: str = MONITOR_OUTPUT  # "output", "off" or a capture device name
    monitor_hostapi: str = ""
    sample_rate: int = 0
    chunk_ms: int = 20
    message: int = 0x1A2B
    alpha: float = 1.0
    device: str = "cpu"  # torch device
    model_kind: str = "default"  # default | card | file
    model_card: str = "audioseal_wm_streaming"
    model_file: str = ""
    record_dir: str = field(default_factory=lambda: str(Path.home()))
    geometry: bytes = b""


def qsettings(path: str | None = None) -> QSettings:
    """The app's QSettings: the platform's native store, or an INI file (tests, portable)."""
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings(ORG_NAME, APP_NAME)


def _get(s: QSettings, key: str, default: Any) -> Any:
    v = s.value(key, default)
    if v is None:
        return default
    # INI files and some native stores give strings back: convert to the default's type.
    try:
        if isinstance(default, bool):
            return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(v)
        if isinstance(default, float):
            x = float(v)
            return x if math.isfinite(x) else default  # nan, inf, 1e999
        if isinstance(default, bytes):
            return bytes(v.data()) if isinstance(v, QByteArray) else default
        return str(v)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        return default


def load(s: QSettings) -> GuiSettings:
    d = GuiSettings()
    out = GuiSettings(
        input=DeviceRef(_get(s, "devices/input", ""), _get(s, "devices/input_hostapi", "")),
        output=DeviceRef(_get(s, "devices/output", ""), _get(s, "devices/output_hostapi", "")),
        monitor=_get(s, "devices/monitor", d.monitor) or d.monitor,
        monitor_hostapi=_get(s, "devices/monitor_hostapi", ""),
        sample_rate=_get(s, "audio/sample_rate", d.sample_rate),
        chunk_ms=_get(s, "audio/chunk_ms", d.chunk_ms),
        message=_get(s, "watermark/message", d.message),
        alpha=_get(s, "watermark/alpha", d.alpha),
        device=_get(s, "model/device", d.device),
        model_kind=_get(s, "model/kind", d.model_kind),
        model_card=_get(s, "model/card", d.model_card),
        model_file=_get(s, "model/file", d.model_file),
        record_dir=_get(s, "record/dir", d.record_dir),
        geometry=_get(s, "window/geometry", b""),
    )
    return sanitize(out)


def sanitize(g: GuiSettings) -> GuiSettings:
    """Clamp values a hand-edited or stale settings file may hold; a value that is not a
    usable number (NaN, inf, out of range, another type) falls back to the default."""
    d = GuiSettings()

    def number(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return dataclasses.replace(
        g,
        sample_rate=g.sample_rate if g.sample_rate in RATE_CHOICES else d.sample_rate,
        chunk_ms=g.chunk_ms if g.chunk_ms in CHUNK_CHOICES_MS else d.chunk_ms,
        message=g.message if isinstance(g.message, int) and 0 <= g.message < 1 << 16 else d.message,
        # NaN got through min/max (the window did not open); inf is not 200 %
        alpha=min(max(g.alpha, 0.0), 2.0) if number(g.alpha) else d.alpha,
        device=g.device if g.device in ("cpu", "cuda") else d.device,
        model_kind=g.model_kind if g.model_kind in ("default", "card", "file") else d.model_kind,
        geometry=g.geometry if isinstance(g.geometry, bytes) else d.geometry,
    )


def save(s: QSettings, g: GuiSettings) -> None:
    s.setValue("devices/input", g.input.name)
    s.setValue("devices/input_hostapi", g.input.hostapi)
    s.setValue("devices/output", g.output.name)
    s.setValue("devices/output_hostapi", g.output.hostapi)
    s.setValue("devices/monitor", g.monitor)
    s.setValue("devices/monitor_hostapi", g.monitor_hostapi)
    s.setValue("audio/sample_rate", int(g.sample_rate))
    s.setValue("audio/chunk_ms", int(g.chunk_ms))
    s.setValue("watermark/message", int(g.message))
    s.setValue("watermark/alpha", float(g.alpha))
    s.setValue("model/device", g.device)
    s.setValue("model/kind", g.model_kind)
    s.setValue("model/card", g.model_card)
    s.setValue("model/file", g.model_file)
    s.setValue("record/dir", g.record_dir)
    if g.geometry:
        s.setValue("window/geometry", QByteArray(g.geometry))
    s.sync()
