"""GPT-2's printable form of token bytes, as its vocab.bpe and Hugging Face's vocab.json and
merges.txt write them: each byte is one character, the printable Latin-1 bytes stand for
themselves and the rest (space, control bytes, ...) are shifted to characters from U+0100 up, so
" the" reads "Ġthe" and a newline "Ċ".
"""

from __future__ import annotations

from functools import cache


@cache
def printable_bytes() -> tuple[str, ...]:
    """GPT-2's byte -> printable character table: the character that stands for each byte.

    The printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other
    68 bytes, in byte order, take the characters U+0100, U+0101, ...
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, shifted = [], 0
    for b in range(256):
        if b in keep:
            table.append(chr(b))
        else:
            table.append(chr(256 + shifted))
            shifted += 1
    return tuple(table)


# str.translate tables between a token's bytes, read as Latin-1, and its printable form: GPT-2's
# 100,000 merge halves convert in 21 ms instead of 50 by a loop over their characters (each
# vocabulary read or written). Back from the printable form, a Latin-1 character outside the
# table becomes U+FFFF, which then fails to encode, as does any character past Latin-1.
@cache
def _printable_of_latin1() -> dict[int, str]:
    return dict(enumerate(printable_bytes()))


@cache
def _latin1_of_printable() -> dict[int, int]:
    return dict.fromkeys(range(256), 0xFFFF) | {ord(c): b for b, c in enumerate(printable_bytes())}


def token_to_text(token: bytes) -> str:
    """`token` in GPT-2's printable form, one character per byte."""
    return token.decode("latin-1").translate(_printable_of_latin1())


def text_to_token(text: str) -> bytes:
    """Inverse of :func:`token_to_text`; a character outside the table is a ValueError."""
    try:
        return text.translate(_latin1_of_printable()).encode("latin-1")
    except UnicodeEncodeError as error:  # one character for one: the same position in text
        raise ValueError(
            f"{text!r} is not a token in printable byte form ({text[error.start]!r})"
        ) from None


def gpt2_specials(encoder: dict[str, int], first_special: int) -> list[str]:
    """encoder.json's tokens past the merges (GPT-2: just <|endoftext|> = 50256), in id order."""
    specials = sorted((i, t) for t, i in encoder.items() if i >= first_special)
    if [i for i, _ in specials] != list(range(first_special, first_special + len(specials))):
        raise ValueError("special token ids do not follow the merges contiguously")
    return [t for _, t in specials]


def parse_merge(line: str) -> tuple[bytes, bytes]:
    """ "Ġ t" -> (b" ", b"t"): two tokens in printable form, one space between."""
    parts = line.split(" ") if isinstance(line, str) else []
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"merge {line!r} is not two tokens separated by one space")
    return text_to_token(parts[0]), text_to_token(parts[1])
