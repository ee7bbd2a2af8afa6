"""Watermark messages: parse, validate and draw the n-bit payload."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from audioseal_live.errors import MessageError
from audioseal_live.message_bits import bits_of
from audioseal_live.message_bits import parse_message_text as parse_text

MessageLike = torch.Tensor | int | Sequence[int] | str


def random_message(
    batch_size: int, nbits: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    return torch.randint(0, 2, (batch_size, nbits), generator=generator)


def int_to_bits(value: int, nbits: int) -> torch.Tensor:
    """Most significant bit first, so hex 0x8001 reads 1000…0001."""
    return torch.tensor(bits_of(value, nbits), dtype=torch.long)


def parse_message_text(text: str, nbits: int) -> torch.Tensor:
    """'0x1a2b' (hex), '6699' (decimal) or '0001101000101011' (nbits binary digits)."""
    return torch.tensor(parse_text(text, nbits), dtype=torch.long)


def to_message_tensor(message: MessageLike, batch_size: int, nbits: int) -> torch.Tensor:
    """Any accepted message form → LongTensor (batch_size, nbits) of 0/1, or MessageError."""
    if nbits == 0:
        raise MessageError("this model carries no message (0 bits)")
    if isinstance(message, bool):
        raise MessageError("a message must be a tensor, an int or a bit sequence, not a bool")
    if isinstance(message, torch.Tensor) and message.ndim == 0 and not message.is_floating_point():
        message = int(message)  # a 0-dim integer tensor is an int
    if isinstance(message, numbers.Integral):  # int, numpy's integers
        msg = int_to_bits(int(message), nbits)
    elif isinstance(message, str):
        msg = parse_message_text(message, nbits)
    else:
        msg = torch.as_tensor(message)
    if msg.is_floating_point() and not torch.all(msg == msg.round()):
        raise MessageError(f"message bits must be 0 or 1, got non-integer values {msg.tolist()}")
    if msg.ndim not in (1, 2) or msg.shape[-1] != nbits:  # the shape as given, not expanded
        raise MessageError(
            f"expected a message of {nbits} bits, shaped ({nbits},) or (batch, {nbits}); "
            f"got shape {tuple(msg.shape)}"
        )
    if msg.ndim == 1 or msg.shape[0] == 1:  # one message for the whole batch, as the reference
        msg = msg.reshape(1, nbits).expand(batch_size, -1)
    if msg.shape[0] != batch_size:
        raise MessageError(f"message batch {msg.shape[0]} does not match audio batch {batch_size}")
    if not torch.all((msg == 0) | (msg == 1)):
        raise MessageError(
            f"message bits must be 0 or 1, got values {sorted(set(msg.flatten().tolist()))}"
        )
    return msg.long()
