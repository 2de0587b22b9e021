"""The order in which s5.js writes directory entries: ``a.localeCompare(b)``.

s5.js sorts the ``dirs`` and ``files`` maps of a DirV1 blob with
``entries.sort((a, b) => a[0].localeCompare(b[0]))`` before encoding them, so the bytes of a
directory depend on that order. In Node (full ICU, default locale such as ``en-US``),
``localeCompare`` is the Unicode Collation Algorithm with the CLDR root collation at tertiary
strength: punctuation and symbols are *not* ignored (they sort before digits, digits before
letters), case is ignored at the first level, accents are compared at the second level and
case at the third (lowercase first), and no numeric ordering (``"10" < "9"``).

:func:`s5js_sort_key` builds the UCA sort key (primary, secondary, tertiary weights) from
small tables taken from ICU 78 (Node 20's ``Intl.Collator``), without a dependency on ICU.
It gives exactly Node's order for names made of

* printable ASCII (U+0020 to U+007E), and
* letters that decompose (NFD) into an ASCII letter followed by combining marks
  U+0300 to U+0362 (``é``, ``Ü``, ``ñ``, ``Å``, ``ç``, ``ǎ``, ...), in either composed form.

Other characters are placed by a documented approximation: other punctuation, symbols and
spaces between ``$`` and ``0``, everything else (other scripts, ``ß``, ``æ``, ``ø``, digits
of other scripts, emoji) after ``z``, each group by code point; control and format
characters are ignored as ICU ignores them. Locales with their own tailoring (Swedish ``å``
after ``z``, for instance) are not followed; s5.js run in such a locale sorts differently
from s5.js run in ``en``.

>>> sorted(["b", "B", "a_b", "a-b", "ab", "A", "10", "9", "é", "e"], key=s5js_sort_key)
['10', '9', 'A', 'a_b', 'a-b', 'ab', 'b', 'B', 'e', 'é']
"""

from __future__ import annotations

import unicodedata

__all__ = ["s5js_sort_key"]

# ICU root order of printable ASCII; characters of one string share their primary weight.
_ASCII_PRIMARY_CLASSES = (
    " _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$0123456789",
    "aA bB cC dD eE fF gG hH iI jJ kK lL mM nN oO pP qQ rR sS tT uU vV wW xX yY zZ",
)
# Secondary (accent) order of the combining marks U+0300..U+0362, lowest first; marks in one
# group compare equal (ICU 78, "a" + mark sorted with sensitivity "accent").
_MARK_SECONDARY_CLASSES = (
    "332",
    "313 343",
    "314",
    "301 341",
    "300 340",
    "306",
    "302",
    "30c",
    "30a",
    "342",
    "308",
    "344",
    "30b",
    "303",
    "307",
    "338",
    "327",
    "328",
    "304",
    "30d 30e 312 315 31a 33d 33e 33f 346 34a 34b 34c 350 351 352 357 35b 35d 35e",
    "316 317 318 319 31c 31d 31e 31f 320 329 32a 32b 32c 32f 333 33a 33b 33c 347 348 349 34d "
    "34e 353 354 355 356 359 35a 35c 35f 362",
    "336 337",
    "335",
    "305",
    "309",
    "30f",
    "310",
    "311",
    "31b",
    "321",
    "322",
    "323",
    "324",
    "325",
    "326",
    "32d",
    "32e",
    "330",
    "331",
    "334",
    "339",
    "345",
    "358",
    "360",
    "361",
)
_IGNORABLE_MARKS = frozenset({0x34F})  # COMBINING GRAPHEME JOINER

_STEP = 0x200000  # above every code point: room for the approximated characters


def _primary_table() -> dict[str, int]:
    table: dict[str, int] = {}
    rank = 0
    symbols, letters = _ASCII_PRIMARY_CLASSES
    for ch in symbols:
        rank += 1
        table[ch] = rank * _STEP
    for group in letters.split(" "):
        rank += 1
        for ch in group:
            table[ch] = rank * _STEP
    return table


_PRIMARY = _primary_table()
_SECONDARY = {
    int(cp, 16): weight
    for weight, group in enumerate(_MARK_SECONDARY_CLASSES, start=2)
    for cp in group.split()
}
_SYMBOL_BASE = _PRIMARY["$"]  # other punctuation and symbols: after "$", before "0"
_OTHER_BASE = _PRIMARY["z"]  # other letters and scripts: after "z"
_COMMON = 1
_UPPER = 2

SortKey = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def s5js_sort_key(name: str) -> SortKey:
    """A key that orders names as s5.js's ``a.localeCompare(b)`` does (see module docs)."""
    primary: list[int] = []
    secondary: list[int] = []
    tertiary: list[int] = []
    for ch in unicodedata.normalize("NFD", name):
        weight = _PRIMARY.get(ch)
        if weight is None:
            cp = ord(ch)
            accent = _SECONDARY.get(cp)
            if accent is not None:
                secondary.append(accent)
                tertiary.append(_COMMON)
                continue
            category = unicodedata.category(ch)
            if cp in _IGNORABLE_MARKS or category in ("Cc", "Cf"):
                continue
            base = _SYMBOL_BASE if category[0] in "PSZ" else _OTHER_BASE
            weight = base + 1 + cp
        primary.append(weight)
        secondary.append(_COMMON)
        tertiary.append(_UPPER if ch.isupper() else _COMMON)
    return tuple(primary), tuple(secondary), tuple(tertiary)
