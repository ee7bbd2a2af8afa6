"""Models (layer 2 of 4): cards, generator, detector, checkpoints, the AudioSeal facade."""

from audioseal_live.models.cards import OFFICIAL_CARDS, ModelCard, SEANetCard, small_card
from audioseal_live.models.detector import AudioSealDetector
from audioseal_live.models.generator import AudioSealWM

__all__ = [
    "OFFICIAL_CARDS",
    "AudioSealDetector",
    "AudioSealWM",
    "ModelCard",
    "SEANetCard",
    "small_card",
]
