"""SMS segment counting: GSM-7 (160 / 153 septets) or UCS-2 (70 / 67 UTF-16 units).

The engine charges exactly what `sms preview` shows: both call `count_segments`.

Rules (3GPP TS 23.038 / 23.040, as carriers and Plivo bill them):
- A message made only of GSM 03.38 characters is sent as GSM-7. The basic table costs one septet a
  character; the extension table (`^ { } \\ [ ~ ] | €` and form feed) costs two (escape + char).
  One part holds 160 septets; a concatenated message holds 153 per part (the user data header
  takes the rest) and an escape pair is never split across two parts.
- Anything else makes the whole message UCS-2 (UTF-16): 70 code units in one part, 67 per part
  when concatenated. Characters outside the BMP (most emoji) take two units (a surrogate pair)
  that are never split; a flag is two such characters, so four units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = "^{}\\[~]|€\f"
_BASIC = frozenset(GSM7_BASIC)
_EXT = frozenset(GSM7_EXTENSION)

GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True)
class SegmentInfo:
    encoding: Encoding
    segments: int
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)


def is_gsm7(text: str) -> bool:
    return all(ch in _BASIC or ch in _EXT for ch in text)


def non_gsm7_chars(text: str) -> list[str]:
    """The distinct characters (in order of appearance) that force a message into UCS-2."""
    seen: dict[str, None] = {}
    for ch in text:
        if ch not in _BASIC and ch not in _EXT:
            seen.setdefault(ch, None)
    return list(seen)


def _pack(unit_sizes: list[int], single: int, multi: int) -> int:
    """Segments needed when no unit (escape pair, surrogate pair) may be split across parts."""
    total = sum(unit_sizes)
    if total == 0:
        return 0
    if total <= single:
        return 1
    segments, used = 1, 0
    for size in unit_sizes:
        if used + size > multi:
            segments += 1
            used = 0
        used += size
    return segments


def count_segments(text: str) -> SegmentInfo:
    """Encoding, number of parts and length in units of `text` (an empty text is 0 parts)."""
    if is_gsm7(text):
        sizes = [2 if ch in _EXT else 1 for ch in text]
        return SegmentInfo("GSM-7", _pack(sizes, GSM7_SINGLE, GSM7_MULTI), sum(sizes))
    sizes = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return SegmentInfo("UCS-2", _pack(sizes, UCS2_SINGLE, UCS2_MULTI), sum(sizes))
