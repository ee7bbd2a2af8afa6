"""Watermark messages: parse, validate and draw the n-bit payload."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from audioseal_live.errors import MessageError

MessageLike = torch.Tensor | int | Sequence[int] | str


def random_message(
    batch_size: int, nbits: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    return torch.randint(0, 2, (batch_size, nbits), generator=generator)


def int_to_bits(value: int, nbits: int) -> torch.Tensor:
    """Most significant bit first, so hex 0x8001 reads 1000…0001."""
    if not 0 <= value < 2**nbits:
        raise MessageError(f"message {value} does not fit in {nbits} bits (0 … {2**nbits - 1})")
    return torch.tensor([(value >> (nbits - 1 - i)) & 1 for i in range(nbits)], dtype=torch.long)


def bits_to_int(bits: torch.Tensor | Sequence[int]) -> int:
    value = 0
    for b in bits.tolist() if isinstance(bits, torch.Tensor) else bits:
        value = (value << 1) | int(b)
    return value


def parse_message_text(text: str, nbits: int) -> torch.Tensor:
    """'0x1a2b' (hex), '6699' (decimal) or '0001101000101011' (nbits binary digits)."""
    t = text.strip().lower().replace("_", "").replace(" ", "")
    try:
        if t.startswith("0x"):
            return int_to_bits(int(t, 16), nbits)
        if t.startswith("0b"):
            t = t[2:]
            if len(t) != nbits:
                raise MessageError(f"binary message must have {nbits} digits, got {len(t)}")
        if len(t) == nbits and set(t) <= {"0", "1"}:
            return torch.tensor([int(c) for c in t], dtype=torch.long)
        if set(t) <= {"0", "1"} and (len(t) > 5 or (len(t) > 1 and t[0] == "0")):
            # no decimal of 16 bits looks like this: binary digits, but not nbits of them
            raise MessageError(
                f"message {text!r} looks binary but has {len(t)} digits, not {nbits} "
                f"(or write it in hex, 0x…, or decimal)"
            )
        if t.isdigit() and len(t) > 1 and t[0] == "0":
            # 0000000000000002: binary with a typo, not decimal 2 (a review found it taken)
            raise MessageError(
                f"message {text!r}: binary takes {nbits} digits of 0 and 1, and a decimal "
                "message has no leading zero (or write it in hex, 0x…)"
            )
        if t.isdigit() and len(t) == nbits:
            raise MessageError(
                f"message {text!r} has {nbits} digits but not all of them 0 or 1 (binary), "
                f"and as decimal it exceeds {(1 << nbits) - 1}"
            )
        return int_to_bits(int(t, 10), nbits)
    except ValueError as exc:
        if isinstance(exc, MessageError):
            raise
        raise MessageError(
            f"cannot read message {text!r}: expected hex (0x1a2b), decimal (6699) "
            f"or {nbits} binary digits"
        ) from None


def to_message_tensor(message: MessageLike, batch_size: int, nbits: int) -> torch.Tensor:
    """Any accepted message form → LongTensor (batch_size, nbits) of 0/1, or MessageError."""
    if nbits == 0:
        raise MessageError("this model carries no message (0 bits)")
    if isinstance(message, bool):
        raise MessageError("a message must be a tensor, an int or a bit sequence, not a bool")
    if isinstance(message, int):
        msg = int_to_bits(message, nbits)
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
