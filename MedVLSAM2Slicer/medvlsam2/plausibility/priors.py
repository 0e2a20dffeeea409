"""The anatomical priors table (``priors.json`` next to this file): one row per structure class, keyed by the SNOMED CT
type code that ``io.terminology`` gives the segment's name, each value with its source. Torch-free."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..io.terminology import match

PRIORS_FILE = Path(__file__).with_name("priors.json")


@dataclass(frozen=True)
class Prior:
    code: str  # SNOMED CT value of the terminology type (e.g. "10200004" Liver)
    structure: str
    volume_ml: tuple[float, float]
    hu_median: tuple[float, float]
    finding: bool  # a finding lies within the organ it is named with ("cyst in the left kidney")
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AnyStructure:
    """What holds for every segment, named or not."""
    outside_body_max: float
    hu_median: tuple[float, float]
    sources: dict[str, str]


@dataclass(frozen=True)
class Hypodense:
    """A finding named dark (hypodense, low density, cyst...) is darker than the tissue right around it."""
    words: str  # regular expression matched in the lower-case name
    shell_voxels: int
    sources: dict[str, str]


@dataclass(frozen=True)
class FocalFinding:
    """A focal finding differs in attenuation from the tissue right around it (darker or brighter; the shell is
    ``Hypodense.shell_voxels`` thick)."""
    min_contrast_hu: float
    sources: dict[str, str]


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, Prior], AnyStructure, Hypodense, FocalFinding]:
    data = json.loads(PRIORS_FILE.read_text(encoding="utf-8"))
    rows = {}
    for r in data["rows"]:
        rows[r["code"]] = Prior(r["code"], r["structure"], tuple(r["volume_ml"]), tuple(r["hu_median"]),
                                r["within"] is not None, dict(r["sources"]))
    a, h, f = data["any_structure"], data["hypodense_finding"], data["focal_finding"]
    return (rows, AnyStructure(float(a["outside_body_max"]), tuple(a["hu_median"]), dict(a["sources"])),
            Hypodense(h["words"], int(h["shell_voxels"]), dict(h["sources"])),
            FocalFinding(float(f["min_contrast_hu"]), dict(f["sources"])))


def priors() -> dict[str, Prior]:
    """Every row, by code."""
    return dict(_table()[0])


def any_structure() -> AnyStructure:
    return _table()[1]


def hypodense() -> Hypodense:
    return _table()[2]


def focal_finding() -> FocalFinding:
    return _table()[3]


def prior_for(name: str) -> tuple[Prior | None, Prior | None]:
    """(the prior of what ``name`` names, the prior of the organ a named finding lies in), each None when unknown."""
    found = match(name)
    if found is None:
        return None, None
    rows = _table()[0]
    organ = rows.get(found.region.type[1]) if found.region is not None else None
    return rows.get(found.term.type[1]), organ
