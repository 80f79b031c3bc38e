"""User-given names as DICOM short (SH) and long (LO) strings: valid bytes whatever the name holds.

A segment name can be anything a user types: a backslash (the DICOM value delimiter, which would make
one name several values), control characters, emoji, CJK, hundreds of characters.  The writers of
RTSTRUCT and DICOM SEG put such names through :func:`fit_names`, which

* replaces what the VR forbids (backslash by ``-``; control, separator and surrogate code points by a
  space) and drops the leading and trailing spaces DICOM does not keep;
* cuts on a character boundary so that the name's bytes, in the character set the object declares,
  fit the VR (SH 16, LO 64): DICOM counts these limits in bytes of the encoded value;
* keeps the names distinct, ending a repeat with `` 2``, `` 3``...;
* says, in one note per name, what it changed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Bytes a value may hold, by VR (PS3.5 table 6.2-1).
MAX_BYTES = {"SH": 16, "LO": 64}
UTF8 = "ISO_IR 192"
# Code-point categories a SH/LO value must not hold: controls (ESC only for ISO 2022, which we never
# write), line and paragraph separators, lone surrogates (not encodable), unassigned code points.
_FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp", "Cn"}
# Characters that only join or modify the one before them; a cut must not leave them dangling.
_JOINERS = {"\u200d", "\u200c", "\u2060"}


@dataclass
class FittedNames:
    """Names ready to write, in input order, and one note per name that had to change."""

    names: list[str]
    notes: list[str] = field(default_factory=list)


def character_set(texts: Iterable[str], declared: str | Sequence[str] | None) -> str | Sequence[str]:
    """The SpecificCharacterSet to declare: ``declared`` while every text is ASCII, else (or when
    nothing is declared) UTF-8.

    pydicom decodes copied attributes (a patient name in Latin-1, say) to text and encodes every
    value with the set the object declares, so switching to UTF-8 keeps those attributes right.
    """
    if declared and all(text.isascii() for text in texts):
        return declared
    return UTF8


def python_encoding(specific_character_set: str | Sequence[str] | None) -> str:
    """The Python codec pydicom writes text with for this SpecificCharacterSet (first value)."""
    from pydicom.charset import python_encoding as table

    value = specific_character_set
    if value is not None and not isinstance(value, str):
        value = next(iter(value), "")
    return table.get((value or "").strip() or "ISO_IR 6", "iso8859")


def clean(name: str) -> str:
    """``name`` with the VR's delimiter and forbidden characters replaced and spaces tidied."""
    out = []
    for char in name:
        if char == "\\":
            out.append("-")  # not "/": readers such as plastimatch name files after ROIs
        elif unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            out.append(" ")
        else:
            out.append(char)
    return _collapse_spaces("".join(out))


def _encoded_length(text: str, encoding: str) -> int:
    return len(text.encode(encoding, errors="replace"))


def _cut(text: str, limit: int, encoding: str) -> str:
    """The longest prefix of ``text`` on a character boundary whose encoding fits ``limit`` bytes."""
    size = 0
    end = 0
    for index, char in enumerate(text):
        size += _encoded_length(char, encoding)
        if size > limit:
            break
        end = index + 1
    out = text[:end]
    # A combining mark or joiner left at the end would modify nothing, or pull in a character cut away.
    while out and (out[-1] in _JOINERS or unicodedata.combining(out[-1]) or unicodedata.category(out[-1]) == "Mn"):
        out = out[:-1]
    while out and out[-1] in _JOINERS:
        out = out[:-1]
    return out.rstrip(" ")


def _collapse_spaces(text: str) -> str:
    return " ".join(part for part in text.split(" ") if part)


def fit_names(
    names: Sequence[str],
    vr: str,
    specific_character_set: str | Sequence[str] | None = UTF8,
    *,
    what: str = "name",
    fallback: str = "Segment",
) -> FittedNames:
    """``names`` as valid, distinct values of ``vr`` (SH or LO) encoded in ``specific_character_set``.

    ``what`` names the attribute in the notes (e.g. "ROI Observation Label"); an empty name becomes
    ``fallback``.
    """
    if vr not in MAX_BYTES:
        raise ValueError(f"fit_names handles {', '.join(MAX_BYTES)}, not {vr}")
    limit = MAX_BYTES[vr]
    encoding = python_encoding(specific_character_set)
    used: set[str] = set()
    out: list[str] = []
    notes: list[str] = []
    for original in names:
        text = clean(str(original))
        changes = []
        # Spaces are tidied without a note: DICOM ignores the leading and trailing ones anyway.
        if "\\" in str(original):
            changes.append("'\\' is the DICOM value delimiter, written as '-'")
        if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in str(original)):
            changes.append("control or unassigned characters written as spaces")
        if not text:
            text = fallback
            changes.append("nothing writable was left")
        if _encoded_length(text, encoding) > limit:
            text = _cut(text, limit, encoding) or fallback
            changes.append(f"shortened to the {limit} bytes a DICOM {vr} holds")
        base, number = text, 1
        while text.casefold() in used:
            number += 1
            ending = f" {number}"
            text = _cut(base, limit - len(ending.encode(encoding)), encoding) + ending
        if number > 1:
            changes.append(f"numbered {number}, as another {what} reads the same")
        used.add(text.casefold())
        out.append(text)
        if changes:
            notes.append(f"{what} {original!r} written as {text!r} ({'; '.join(changes)})")
    return FittedNames(out, notes)


def fit_name(name: str, vr: str, specific_character_set: str | Sequence[str] | None = UTF8) -> str:
    """One value of ``vr``; no uniqueness to keep."""
    return fit_names([name], vr, specific_character_set).names[0]
