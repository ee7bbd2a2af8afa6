"""Real-time engine: audio I/O, rings, resampling, worker, monitor, recording, metrics.

Importing this package does not import torch; the model adapters import it when built.
"""

from __future__ import annotations

from audioseal_live.engine.engine import Engine, EngineConfig
from audioseal_live.engine.metrics import Detection, Snapshot

__all__ = ["Detection", "Engine", "EngineConfig", "Snapshot"]
