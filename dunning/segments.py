"""SMS segment counting: GSM-7 (160 / 153 septets) or UCS-2 (70 / 67 UTF-16 units).

The engine charges exactly what `sms preview` shows: both call `count_segments`.
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

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True)
class SegmentInfo:
    encoding: Encoding
    segments: int
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)


def is_gsm7(text: str) -> bool:
    return all(ch in _BASIC or ch in _EXT for ch in text)


def _pack(unit_sizes: list[int], single: int, multi: int) -> int:
    """Segments needed when no unit (escape pair, surrogate pair) may be split across parts."""
    total = sum(unit_sizes)
    if total <= single:
        return 1 if total else 1
    segments, used = 1, 0
    for size in unit_sizes:
        if used + size > multi:
            segments += 1
            used = 0
        used += size
    return segments


def count_segments(text: str) -> SegmentInfo:
    if is_gsm7(text):
        sizes = [2 if ch in _EXT else 1 for ch in text]
        return SegmentInfo("GSM-7", _pack(sizes, 160, 153), sum(sizes))
    sizes = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return SegmentInfo("UCS-2", _pack(sizes, 70, 67), sum(sizes))
