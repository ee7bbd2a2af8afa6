"""audioseal-live: real-time neural audio watermarking with exact streaming.

    from audioseal_live import AudioSeal
    gen = AudioSeal.load_generator()
    det = AudioSeal.load_detector()

Names are imported on first use (PEP 562), so that the CLI's help, the engine's pure-numpy
parts and the window's first paint do not wait for torch to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "AudioSeal": "audioseal_live.models.loader",
    "AudioSealWM": "audioseal_live.models.generator",
    "AudioSealDetector": "audioseal_live.models.detector",
    "ModelCard": "audioseal_live.models.cards",
    "ChunkedStream": "audioseal_live.chunking",
}

__all__ = [
    "AudioSeal",
    "AudioSealDetector",
    "AudioSealWM",
    "ChunkedStream",
    "ModelCard",
    "__version__",
]

if TYPE_CHECKING:
    from audioseal_live.chunking import ChunkedStream
    from audioseal_live.models.cards import ModelCard
    from audioseal_live.models.detector import AudioSealDetector
    from audioseal_live.models.generator import AudioSealWM
    from audioseal_live.models.loader import AudioSeal


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'audioseal_live' has no attribute {name!r}")
