"""The watermark generator: SEANet encoder → message embedding → SEANet decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audioseal_live.errors import MessageError
from audioseal_live.models.base import CardModel
from audioseal_live.models.cards import ModelCard
from audioseal_live.models.messages import MessageLike, random_message, to_message_tensor
from audioseal_live.models.seanet import SEANetDecoder, SEANetEncoder


def _message_key(message: object) -> object:
    """A cheap value key, so that re-sending the same message skips re-validation."""
    if isinstance(message, Tensor):
        return (tuple(message.shape), str(message.dtype), tuple(message.flatten().tolist()))
    if isinstance(message, int | str):
        return (type(message), message)
    return None


class MsgProcessor(nn.Module):
    """Embeds each bit as one of two learned vectors; their sum is added to every frame."""

    def __init__(self, nbits: int, hidden_size: int) -> None:
        super().__init__()
        self.nbits = nbits
        self.msg_processor = nn.Embedding(2 * nbits, hidden_size)  # name kept for checkpoints

    def embed(self, message: Tensor) -> Tensor:
        """(B, nbits) bits → (B, hidden, 1)."""
        index = 2 * torch.arange(self.nbits, device=message.device) + message
        return self.msg_processor(index).sum(dim=-2).unsqueeze(-1)

    def forward(self, hidden: Tensor, message: Tensor) -> Tensor:
        return hidden + self.embed(message)


class AudioSealWM(CardModel):
    """Generator with the reference's API: ``gen(x, sample_rate, message, alpha)``."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card)
        self.encoder = SEANetEncoder(card.seanet)
        self.decoder = SEANetDecoder(
            card.seanet, card.final_activation, card.final_activation_params, card.trim_right_ratio
        )
        self.msg_processor = MsgProcessor(card.nbits, card.seanet.dimension) if card.nbits else None
        self._stream_message: Tensor | None = None
        self.last_message: Tensor | None = None  # the message the last call embedded
        self._given_key: object = None
        self._message = torch.zeros(0, dtype=torch.long)  # see the message property
        self._message_drawn = False  # _message is a random one drawn here, not the user's

    @property
    def message(self) -> Tensor:
        """The message a call without one embeds, as the reference's ``model.message``: empty
        until set, or until the first such call draws a random one (kept from then on, for
        that batch size: another draws again; a message you set is never replaced)."""
        return self._message

    @message.setter
    def message(self, value: MessageLike | None) -> None:
        self._message_drawn = False
        if value is None or (isinstance(value, Tensor) and value.numel() == 0):
            self._message = torch.zeros(0, dtype=torch.long)
            return
        rows = value.shape[0] if isinstance(value, Tensor) and value.ndim == 2 else 1
        self._message = to_message_tensor(value, rows, self.nbits)

    def _on_stream_start(self) -> None:
        self._stream_message = None

    def _on_stream_stop(self) -> None:
        self._stream_message = None

    def _on_select_streams(self, index: Tensor) -> None:
        if self._stream_message is not None:
            self._stream_message = self._stream_message[index]

    def random_message(self, batch_size: int) -> Tensor:
        return random_message(batch_size, self.nbits)

    def _default_message(self, batch_size: int) -> Tensor:
        """:attr:`message` for a batch: one row serves all; a random one is drawn when none
        is set (and again for another batch size, while it is one drawn here)."""
        rows = self._message.shape[0] if self._message.numel() else 0
        if rows in (1, batch_size):
            return self._message.expand(batch_size, -1)
        narrowed = self._stream_message  # its rows, narrowed by select_streams
        if self.is_streaming and narrowed is not None and narrowed.shape[0] == batch_size:
            return narrowed
        if rows and not self._message_drawn:  # the user's: never replaced behind their back
            raise MessageError(
                f"gen.message holds {rows} messages, but the audio batch is {batch_size}: "
                "set one message, or one per signal"
            )
        self._message, self._message_drawn = self.random_message(batch_size), True
        return self._message

    def _resolve_message(self, message: MessageLike | None, batch_size: int) -> Tensor:
        """None → :attr:`message` (a random one drawn at the first call, then kept)."""
        key = _message_key(message) if message is not None else None
        if (
            key is not None
            and key == self._given_key
            and self.last_message is not None
            and self.last_message.shape[0] == batch_size
        ):
            msg = self.last_message  # the same message as last call: already validated
        elif message is not None:
            msg = to_message_tensor(message, batch_size, self.nbits)
        else:  # gen.message, read at every call as the reference does
            msg = self._default_message(batch_size)
        if self.is_streaming:
            self._stream_message = msg
        self.last_message = msg
        self._given_key = key
        return msg

    def get_watermark(
        self,
        x: Tensor,
        sample_rate: int | None = None,
        message: MessageLike | None = None,
    ) -> Tensor:
        """The watermark alone (B, 1, T) for audio x (B, 1, T) at the model's rate.

        While streaming, T is a multiple of the hop (320 samples at 16 kHz), except in a
        stream's last chunk (zero-padded, see ``_pad_last_chunk``); for any chunk sizes
        throughout, use :class:`audioseal_live.ChunkedStream`.
        """
        length = x.shape[-1] if isinstance(x, Tensor) else 0
        with self._ragged_end(x) as x:
            self._check_input(x, sample_rate)
            if self.msg_processor is None:
                (wm,) = self._stepped("watermark", self._watermark_alone, x)
            else:
                msg = self._resolve_message(message, x.shape[0]).to(x.device)
                (wm,) = self._stepped("watermark", self._watermark_tuple, x, msg)
            return wm[..., :length]

    def _watermark_tuple(self, x: Tensor, message: Tensor) -> tuple[Tensor]:
        return (self.watermark_of(x, message),)

    def _watermark_alone(self, x: Tensor) -> tuple[Tensor]:
        return (self.watermark_of(x, None),)

    def watermark_of(self, x: Tensor, message: Tensor | None) -> Tensor:
        """:meth:`get_watermark`'s arithmetic alone: ``x`` already checked, ``message`` a
        validated (B, nbits) tensor of 0/1. No Python-side decisions on tensor values, so a
        traced streaming step (blocks.traced) keeps the message as an input."""
        length = x.shape[-1]
        self.release_traced_state()  # called directly in a traced stream: the modules' state
        self._start_recurrent(x)
        with self._chunk_threads(x):
            hidden = self.encoder(x)
            if self.msg_processor is not None and message is not None:
                hidden = self.msg_processor(hidden, message)
            return self.decoder(hidden)[..., :length]

    def forward(
        self,
        x: Tensor,
        sample_rate: int | None = None,
        message: MessageLike | None = None,
        alpha: float = 1.0,
    ) -> Tensor:
        """Watermarked audio: ``x + alpha * watermark``."""
        return x + alpha * self.get_watermark(x, sample_rate=sample_rate, message=message)
