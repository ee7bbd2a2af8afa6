"""Streaming building blocks: each keeps its own cache, so chunked == whole (layer 1 of 4)."""

from audioseal_live.blocks.conv import StreamingConv1d, StreamingConvTranspose1d
from audioseal_live.blocks.lstm import StreamingLSTM
from audioseal_live.blocks.streaming import StreamingAdd, StreamingModule, StreamingRoot

__all__ = [
    "StreamingAdd",
    "StreamingConv1d",
    "StreamingConvTranspose1d",
    "StreamingLSTM",
    "StreamingModule",
    "StreamingRoot",
]
