"""Errors a user can cause and fix. The CLI and the window show these as one clear line."""

from __future__ import annotations


class AudioSealLiveError(Exception):
    """Base of every error that is the user's to fix (bad file, checkpoint, device, message)."""


class CheckpointError(AudioSealLiveError, RuntimeError):
    """A checkpoint could not be found, read, trusted or matched to its model card."""


class MessageError(AudioSealLiveError, ValueError):
    """A watermark message of the wrong length or with non-binary values."""


class AudioFileError(AudioSealLiveError, OSError):
    """An audio file could not be read or written."""


class DeviceError(AudioSealLiveError, RuntimeError):
    """An audio device is missing, busy or does not support the requested settings."""


class SettingError(AudioSealLiveError, ValueError):
    """A setting out of its range: chunk length, watermark strength."""


class NotStreamableError(AudioSealLiveError, NotImplementedError):
    """A model that cannot stream exactly (a non-causal card) asked to stream: the live engine
    and the file commands stream every model."""
