"""audioseal-live: real-time neural audio watermarking with exact streaming.

from audioseal_live import AudioSeal
gen = AudioSeal.load_generator()
det = AudioSeal.load_detector()
"""

from audioseal_live.chunking import ChunkedStream
from audioseal_live.models import AudioSealDetector, AudioSealWM, ModelCard
from audioseal_live.models.loader import AudioSeal

__version__ = "0.1.0"

__all__ = [
    "AudioSeal",
    "AudioSealDetector",
    "AudioSealWM",
    "ChunkedStream",
    "ModelCard",
    "__version__",
]
