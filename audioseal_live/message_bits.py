"""A watermark message as bits: int <-> bits, hex, and parsing what a user types. No torch
here, so the CLI, the engine's numpy parts and the window use it before torch imports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from audioseal_live.errors import MessageError

NBITS = 16  # the message of the shipped model and the official 16-bit cards


def bits_of(value: int, nbits: int = NBITS) -> tuple[int, ...]:
    """Most significant bit first, so hex 0x8001 reads 1000…0001."""
    if not 0 <= value < 2**nbits:
        raise MessageError(f"message {value} does not fit in {nbits} bits (0 … {2**nbits - 1})")
    return tuple((value >> (nbits - 1 - i)) & 1 for i in range(nbits))


def bits_to_int(bits: Iterable[int]) -> int:
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value


def bits_hex(bits: Sequence[int]) -> str:
    """'0x1a2b' with a digit per 4 bits; '' for no bits (a detector without a message)."""
    if not bits:
        return ""
    return f"0x{bits_to_int(bits):0{(len(bits) + 3) // 4}x}"


def parse_message_text(text: str, nbits: int = NBITS) -> tuple[int, ...]:
    """'0x1a2b' (hex), '6699' (decimal) or '0001101000101011' (nbits binary digits)."""
    t = text.strip().lower().replace("_", "").replace(" ", "")
    try:
        if t.startswith("0x"):
            return bits_of(int(t, 16), nbits)
        if t.startswith("0b"):
            t = t[2:]
            if len(t) != nbits:
                raise MessageError(f"binary message must have {nbits} digits, got {len(t)}")
        if len(t) == nbits and set(t) <= {"0", "1"}:
            return tuple(int(c) for c in t)
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
        return bits_of(int(t, 10), nbits)
    except ValueError as exc:
        if isinstance(exc, MessageError):
            raise
        raise MessageError(
            f"cannot read message {text!r}: expected hex (0x1a2b), decimal (6699) "
            f"or {nbits} binary digits"
        ) from None
