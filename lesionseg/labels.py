"""Label descriptions shared by model specs, segmentations and exports."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Words that make a label a lesion when nothing says otherwise (a spec without ``lesion_labels``, a MONAI
# bundle, a label read from a file). "nodal" and "nodule" are lesions; a bare "node" is not: a "lymph node"
# label is anatomy (SNOMED CT has it as an organ).
LESION_WORDS = re.compile(r"lesion|tumou?r|metasta|nodal|nodule|neoplasm|gtv|ctv|ptv", re.IGNORECASE)


def named_like_lesion(name: str) -> bool:
    """Whether a label's name says it is a lesion (:data:`LESION_WORDS`)."""
    return LESION_WORDS.search(name) is not None


# Distinct colours for labels that carry none (value 1 first); RGB in 0..1.
_FALLBACK_COLOURS = [
    (0.90, 0.32, 0.25),
    (0.30, 0.69, 0.29),
    (0.22, 0.49, 0.72),
    (0.99, 0.75, 0.18),
    (0.60, 0.31, 0.64),
    (0.10, 0.75, 0.80),
    (0.97, 0.51, 0.75),
    (0.65, 0.34, 0.16),
]


@dataclass(frozen=True)
class LabelInfo:
    value: int
    name: str
    color: tuple[float, float, float] = (1.0, 0.0, 0.0)
    terminology: Mapping[str, Any] = field(default_factory=dict)
    # A lesion (counted lesion by lesion, listed by ProstateMetSeg, coded as a lesion in DICOM SEG) or not. A
    # model spec's ``lesion_labels`` sets it; None (not stated) takes it from the name (:func:`named_like_lesion`).
    is_lesion: bool | None = None

    def __post_init__(self) -> None:
        if self.is_lesion is None:
            object.__setattr__(self, "is_lesion", named_like_lesion(self.name))
        if int(self.value) != self.value or self.value <= 0:
            raise ValueError(f"label value must be a positive integer, got {self.value!r} for {self.name!r}")
        if not self.name:
            raise ValueError(f"label {self.value} has an empty name")
        if len(self.color) != 3 or not all(0.0 <= c <= 1.0 for c in self.color):
            raise ValueError(f"label {self.name!r}: colour must be three values in 0..1, got {self.color!r}")

    @classmethod
    def default(cls, value: int) -> "LabelInfo":
        return cls(int(value), f"Label_{int(value)}", _FALLBACK_COLOURS[(int(value) - 1) % len(_FALLBACK_COLOURS)])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], is_lesion: bool | None = None) -> "LabelInfo":
        """A label as a spec writes it; ``is_lesion`` from the spec's ``lesion_labels`` (None: by its name)."""
        value = int(data["value"])
        color = tuple(float(c) for c in data.get("color", LabelInfo.default(value).color))
        if any(c > 1.0 for c in color):  # accept 0..255 as written in many tools
            color = tuple(c / 255.0 for c in color)
        return cls(value, str(data["name"]), color, dict(data.get("terminology", {})), is_lesion)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "name": self.name, "color": [round(c, 4) for c in self.color]}
        if self.terminology:
            out["terminology"] = dict(self.terminology)
        return out


def label_table(values: Iterable[int], known: Iterable[LabelInfo] | Mapping[int, str] | None = None) -> list[LabelInfo]:
    """LabelInfo for each value: from ``known`` when it names it, else ``Label_<n>``."""
    by_value: dict[int, LabelInfo] = {}
    if isinstance(known, Mapping):
        by_value = {int(v): LabelInfo(int(v), str(n), LabelInfo.default(int(v)).color) for v, n in known.items()}
    elif known is not None:
        by_value = {info.value: info for info in known}
    return [by_value.get(int(v), LabelInfo.default(int(v))) for v in sorted({int(v) for v in values}) if v != 0]
