"""Findings read from report text, and statements that contradict the segmentation.

The extractor works sentence by sentence (split at ".", ";" and newlines; the "Impression:" part is read
like any sentence) and knows three findings, the ones the phantoms have:
- ``liver lesion``: a sentence naming the liver (liver, hepatic, lobe) and a lesion word (lesion, mass,
  hypodensity, nodule, metastasis);
- ``renal cyst``: a sentence naming a cyst and the kidney (kidney, renal); ``side`` is "left" or "right"
  when the sentence says which;
- ``splenomegaly``: "splenomegaly", or the spleen said to be enlarged.
A sentence is negative when it holds a negation cue (no, without, not, normal, unremarkable, absent,
neither); negative sentences give ``present=False`` findings ("No focal liver lesion." -> a negated liver
lesion), which the contradiction check uses. ``size_mm`` is the first size in the sentence ("20 mm",
"1.4 cm" -> 14.0). Counts ("two lesions") are not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("liver lesion", "renal cyst", "splenomegaly")
_NEGATION = re.compile(r"\b(no|without|not|normal|unremarkable|absent|neither|none)\b")
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(mm|cm)\b")
_LESION = re.compile(r"\b(lesions?|mass(?:es)?|hypodensit(?:y|ies)|nodules?|metastas[ie]s)\b")
_LIVER = re.compile(r"\b(liver|hepatic|lobe)\b")
_CYST = re.compile(r"\bcysts?\b")
_KIDNEY = re.compile(r"\b(kidneys?|renal)\b")
_SIDE = re.compile(r"\b(left|right)\b")


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    present: bool
    side: str | None = None  # renal cyst: "left" / "right"
    size_mm: float | None = None
    sentence: str = ""


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<!\d)\.(?!\d)|;|\n|:", text)
    return [p.strip() for p in parts if p.strip()]


def _size(sentence: str) -> float | None:
    m = SIZE.search(sentence)
    if not m:
        return None
    value = float(m.group(1))
    return value * 10 if m.group(2) == "cm" else value


def extract_findings(text: str) -> list[Finding]:
    """Every mention of a known finding, in reading order (see the module docstring)."""
    out = []
    for s in sentences(text):
        low = s.lower()
        negative = bool(_NEGATION.search(low))
        if _LESION.search(low) and _LIVER.search(low) and not _CYST.search(low):
            out.append(Finding("liver lesion", not negative, None, _size(low), s))
        if _CYST.search(low) and (_KIDNEY.search(low) or "cysts" in low):
            side = _SIDE.search(low)
            out.append(Finding("renal cyst", not negative, side.group(1) if side else None, _size(low), s))
        if "splenomegaly" in low or ("spleen" in low and "enlarged" in low):
            out.append(Finding("splenomegaly", not negative, None, _size(low) if "spleen" in low else None, s))
    return out


def positive_findings(text: str) -> dict[tuple[str, str | None], Finding]:
    """The findings a report asserts, one per (kind, side), with the first size given for it; a finding that is
    both asserted and negated (e.g. "Impression: normal study" after a lesion) counts as asserted."""
    found: dict[tuple[str, str | None], Finding] = {}
    for f in extract_findings(text):
        if not f.present:
            continue
        key = (f.kind, f.side if f.kind == "renal cyst" else None)
        if key not in found or (found[key].size_mm is None and f.size_mm is not None):
            found[key] = f
    if ("renal cyst", None) in found and any(k[0] == "renal cyst" and k[1] for k in found):
        del found[("renal cyst", None)]  # "renal cyst" in the impression repeats the sided one
    return found


def segment_kind(name: str) -> tuple[str, str | None] | None:
    """The finding a segment's name denotes ("liver lesion", "cyst in the left kidney", ...) or None (an organ)."""
    low = name.lower()
    if _CYST.search(low) and (_KIDNEY.search(low) or "renal" in low):
        side = _SIDE.search(low)
        return ("renal cyst", side.group(1) if side else None)
    if _LESION.search(low) and _LIVER.search(low):
        return ("liver lesion", None)
    return None


def contradictions(text: str, segments: dict[str, float]) -> list[str]:
    """Statements of ``text`` that the segmentation contradicts. ``segments``: name -> axial long axis (mm)
    of each non-empty segment. Flags a negated finding whose segment exists ("No focal liver lesion." with
    a "liver lesion" segment) and a stated size more than 5 mm from the segment's long axis."""
    flags = []
    kinds = {name: segment_kind(name) for name in segments}
    for f in extract_findings(text):
        matching = [n for n, k in kinds.items() if k and k[0] == f.kind and (f.side is None or k[1] in (None, f.side))]
        if not matching:
            continue
        if not f.present:
            flags.append(f"\"{f.sentence}\" but the segmentation has {', '.join(repr(n) for n in matching)}")
        elif f.size_mm is not None:
            sizes = {n: segments[n] for n in matching}
            if all(abs(size - f.size_mm) > 5.0 for size in sizes.values()):
                measured = ", ".join(f"{n!r} {v:.0f} mm" for n, v in sizes.items())
                flags.append(f"\"{f.sentence}\" states {f.size_mm:g} mm; measured long axis: {measured}")
    return flags
