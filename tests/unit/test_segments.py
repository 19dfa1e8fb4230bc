"""SMS segment counting, checked against an independent reference written here.

The reference does what a modem does: it encodes the text (into GSM 03.38 septets, or into
UTF-16-LE bytes) and cuts the encoded stream into parts, moving an escape septet or a high
surrogate that would end a part to the next one. The implementation under test instead sums
per-character sizes; the two must agree on every text.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dunning.domain.segments import SegmentInfo, count_segments, is_gsm7, non_gsm7_chars

# --- the reference -------------------------------------------------------------------------

ESC = 0x1B
# GSM 03.38 default alphabet in code order (3GPP TS 23.038 6.2.1); None at 0x1B is the escape.
_BASIC_TABLE: list[str | None] = [
    "@", "£", "$", "¥", "è", "é", "ù", "ì", "ò", "Ç", "\n", "Ø", "ø", "\r", "Å", "å",
    "Δ", "_", "Φ", "Γ", "Λ", "Ω", "Π", "Ψ", "Σ", "Θ", "Ξ", None, "Æ", "æ", "ß", "É",
    " ", "!", '"', "#", "¤", "%", "&", "'", "(", ")", "*", "+", ",", "-", ".", "/",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", ":", ";", "<", "=", ">", "?",
    "¡", "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O",
    "P", "Q", "R", "S", "T", "U", "V", "W", "X", "Y", "Z", "Ä", "Ö", "Ñ", "Ü", "§",
    "¿", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o",
    "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z", "ä", "ö", "ñ", "ü", "à",
]
# Default extension table (6.2.1.1): code after the escape.
_EXTENSION_TABLE = {
    0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~", 0x3E: "]",
    0x40: "|", 0x65: "€",
}
_BASIC_CODE = {ch: code for code, ch in enumerate(_BASIC_TABLE) if ch is not None}
_EXT_CODE = {ch: code for code, ch in _EXTENSION_TABLE.items()}
GSM_CHARS = "".join(_BASIC_CODE) + "".join(_EXT_CODE)


def encode_septets(text: str) -> list[int] | None:
    """GSM 03.38 septets of `text`, or None when a character has no GSM-7 encoding."""
    out: list[int] = []
    for ch in text:
        if ch in _BASIC_CODE:
            out.append(_BASIC_CODE[ch])
        elif ch in _EXT_CODE:
            out.extend((ESC, _EXT_CODE[ch]))
        else:
            return None
    return out


def cut(stream: list[int], single: int, multi: int, keeps_next: object) -> int:
    """Parts for an encoded stream; a part never ends on a unit that needs the next one."""
    if not stream:
        return 0
    if len(stream) <= single:
        return 1
    parts, i = 0, 0
    while i < len(stream):
        end = min(i + multi, len(stream))
        if end < len(stream) and keeps_next(stream, end - 1):  # type: ignore[operator]
            end -= 1
        parts += 1
        i = end
    return parts


def _ends_on_escape(stream: list[int], idx: int) -> bool:
    # 0x1B only ever appears as the first septet of an escape pair (no basic character and no
    # extension code is 0x1B), so a part ending on it would split the pair.
    return stream[idx] == ESC


def _is_high_surrogate(units: list[int], idx: int) -> bool:
    return 0xD800 <= units[idx] <= 0xDBFF


def reference(text: str) -> tuple[str, int, int]:
    septets = encode_septets(text)
    if septets is not None:
        return "GSM-7", cut(septets, 160, 153, _ends_on_escape), len(septets)
    raw = text.encode("utf-16-le")
    units = [int.from_bytes(raw[k : k + 2], "little") for k in range(0, len(raw), 2)]
    return "UCS-2", cut(units, 70, 67, _is_high_surrogate), len(units)


def check(text: str) -> SegmentInfo:
    info = count_segments(text)
    assert (info.encoding, info.segments, info.units) == reference(text), repr(text)
    return info


# --- the reference itself ------------------------------------------------------------------


def test_reference_tables_are_complete() -> None:
    assert len(_BASIC_TABLE) == 128
    assert len(_BASIC_CODE) == 127  # everything but the escape
    assert len(_EXT_CODE) == 10
    assert encode_septets("@A€") == [0x00, 0x41, ESC, 0x65]
    assert encode_septets("Á") is None


# --- boundaries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "segments", "units"),
    [
        ("", "GSM-7", 0, 0),
        ("a", "GSM-7", 1, 1),
        ("a" * 160, "GSM-7", 1, 160),
        ("a" * 161, "GSM-7", 2, 161),
        ("a" * 306, "GSM-7", 2, 306),  # 153 x 2
        ("a" * 307, "GSM-7", 3, 307),
        ("a" * 1530, "GSM-7", 10, 1530),
        ("a" * 159 + "{", "GSM-7", 2, 161),  # the escape pair pushes it over 160
        ("a" * 158 + "{", "GSM-7", 1, 160),
        ("€" * 80, "GSM-7", 1, 160),
        ("€" * 81, "GSM-7", 2, 162),  # 76 pairs fit in 153 septets per part
        ("€" * 152, "GSM-7", 2, 304),
        ("€" * 153, "GSM-7", 3, 306),  # 306 septets, but pairs are never split
        ("a" * 152 + "[" + "a" * 152, "GSM-7", 3, 306),  # escape at the 153 boundary
        ("a" * 151 + "[" + "a" * 153, "GSM-7", 2, 306),  # pair fits exactly
        ("\f" * 3, "GSM-7", 1, 6),
        ("Á" * 70, "UCS-2", 1, 70),
        ("Á" * 71, "UCS-2", 2, 71),
        ("Á" * 134, "UCS-2", 2, 134),  # 67 x 2
        ("Á" * 135, "UCS-2", 3, 135),
        ("Á" * 68 + "😀", "UCS-2", 1, 70),
        ("Á" * 69 + "😀", "UCS-2", 2, 71),
        ("Á" * 66 + "😀" + "Á" * 66, "UCS-2", 3, 134),  # surrogate pair at the 67 boundary
        ("Á" * 65 + "😀" + "Á" * 67, "UCS-2", 2, 134),  # pair fits exactly
        ("😀" * 35, "UCS-2", 1, 70),
        ("😀" * 36, "UCS-2", 2, 72),  # 33 emoji (66 units) per part
        ("😀" * 67, "UCS-2", 3, 134),  # 134 units, but 33 + 33 + 1 emoji
        ("🇫🇷", "UCS-2", 1, 4),  # a flag is two regional indicators: 4 units
        ("🇫🇷" * 17 + "ab", "UCS-2", 1, 70),
        ("🇫🇷" * 18, "UCS-2", 2, 72),
        ("é" * 160, "GSM-7", 1, 160),  # é is in the GSM basic table
        ("ë", "UCS-2", 1, 1),  # ë is not
        ("Á", "UCS-2", 1, 1),  # nor is Á
        ("it\u2019s", "UCS-2", 1, 4),  # a typographic apostrophe forces UCS-2
    ],
)
def test_boundaries(text: str, encoding: str, segments: int, units: int) -> None:
    info = check(text)
    assert (info.encoding, info.segments, info.units) == (encoding, segments, units)


def test_twilio_public_vectors() -> None:
    # TwilioDevEd/message-segment-calculator tests/index.test.js (sizes there are in bits).
    one = (
        "{23456789012345678901234567890123456789012345678901234567890123456789012345678901"
        "234567890123456789012345678901234567890123456789012345678901234567890123456789"
    )
    two = (
        "{23456789012345678901234567890123456789012345678901234567890123456789012345678901"
        "2345678901234567890123456789012345678901234567890123456789012345678901234567890"
    )
    assert count_segments(one) == SegmentInfo("GSM-7", 1, 1120 // 7)
    assert count_segments(two) == SegmentInfo("GSM-7", 2, 1127 // 7)
    ucs_one = "😜23456789012345678901234567890123456789012345678901234567890123456789"
    ucs_two = "😜234567890123456789012345678901234567890123456789012345678901234567890"
    assert count_segments(ucs_one) == SegmentInfo("UCS-2", 1, 1120 // 16)
    assert count_segments(ucs_two) == SegmentInfo("UCS-2", 2, 1136 // 16)


def test_is_gsm7_and_the_characters_that_force_ucs2() -> None:
    assert is_gsm7("Café à 5€ {ok} [x] ~ ^ | \\")
    assert not is_gsm7("Ábc")
    assert non_gsm7_chars("Hi Zoë, it\u2019s 5€ 😀 ë") == ["ë", "\u2019", "😀"]
    assert non_gsm7_chars("plain") == []


# --- random texts --------------------------------------------------------------------------

_UNICODE_EXTRAS = "ÁëçÍõ\u2019\u201c\u201d\u2014\u2013…•ąłżšđ中文字😀👍🏽🇫🇷🇺🇸✓€{}[]~^|\\"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=GSM_CHARS, max_size=1700))
def test_random_gsm7_texts_match_the_reference(text: str) -> None:
    assert check(text).encoding == "GSM-7"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(GSM_CHARS + _UNICODE_EXTRAS), max_size=700))
def test_random_mixed_texts_match_the_reference(text: str) -> None:
    check(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
def test_random_unicode_texts_match_the_reference(text: str) -> None:
    check(text)


def test_seeded_texts_around_part_boundaries() -> None:
    """Lengths clustered around every boundary, which uniform random lengths rarely hit."""
    rng = random.Random(20240531)
    gsm_heavy = GSM_CHARS + "{}[]€" * 10
    seen_multi = {"GSM-7": 0, "UCS-2": 0}
    for _ in range(3000):
        if rng.random() < 0.5:
            target = rng.choice([160, 161, 306, 307, 459, 460]) + rng.randint(-4, 4)
            text = "".join(rng.choice(gsm_heavy) for _ in range(target))
        else:
            target = rng.choice([70, 71, 134, 135, 201, 202]) + rng.randint(-4, 4)
            pool = GSM_CHARS[:40] + "Á😀🇫🇷ë中"
            text = "".join(rng.choice(pool) for _ in range(target))
            if is_gsm7(text):
                text = "Á" + text
        info = check(text)
        if info.segments > 1:
            seen_multi[info.encoding] += 1
    assert seen_multi["GSM-7"] > 100 and seen_multi["UCS-2"] > 100


@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 470),
    st.sampled_from(sorted(_EXT_CODE)),
    st.integers(0, 470),
    st.sampled_from(["a", "é", "@"]),
)
def test_escape_pairs_anywhere(before: int, ext: str, after: int, filler: str) -> None:
    check(filler * before + ext + filler * after)


@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 210),
    st.sampled_from(["😀", "🇫🇷", "👍🏽", "中", "Á"]),
    st.integers(0, 210),
    st.sampled_from(["Á", "a", "€"]),
)
def test_surrogate_pairs_anywhere(before: int, special: str, after: int, filler: str) -> None:
    check(filler * before + special + filler * after)
