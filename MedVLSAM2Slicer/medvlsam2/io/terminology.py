"""Segment names -> DICOM/SNOMED CT terminology and display colour, as Slicer's ``.seg.nrrd`` stores them
(``SegmentN_Tags`` = "TerminologyEntry:<context>~<category>~<type>~<type modifier>~<anatomic context>~
<region>~<region modifier>|", each code "scheme^value^meaning"). Names are matched by words, so a
referring phrase ("the cyst in the left kidney") gets the finding's entry. Unknown names get a generic
"Tissue" entry and a colour from a fixed palette."""

from __future__ import annotations

import re

CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMY = "SCT^123037004^Anatomical Structure"
ALTERED = "SCT^49755003^Morphologically Altered Structure"
_RIGHT, _LEFT = "SCT^24028007^Right", "SCT^7771000^Left"
# (words that must all appear, category, type, colour 0-255); findings first, then organs
_TABLE = [
    (("cyst", "kidney"), ALTERED, "SCT^367643001^Cyst", (255, 250, 160)),
    (("cyst", "renal"), ALTERED, "SCT^367643001^Cyst", (255, 250, 160)),
    (("lesion",), ALTERED, "SCT^52988006^Lesion", (144, 238, 144)),
    (("mass",), ALTERED, "SCT^4147007^Mass", (144, 238, 144)),
    (("hypodensity",), ALTERED, "SCT^52988006^Lesion", (144, 238, 144)),
    (("liver",), ANATOMY, "SCT^10200004^Liver", (221, 130, 101)),
    (("hepatic",), ANATOMY, "SCT^10200004^Liver", (221, 130, 101)),
    (("spleen",), ANATOMY, "SCT^78961009^Spleen", (157, 108, 162)),
    (("splenic",), ANATOMY, "SCT^78961009^Spleen", (157, 108, 162)),
    (("kidney",), ANATOMY, "SCT^64033007^Kidney", (185, 102, 83)),
    (("renal",), ANATOMY, "SCT^64033007^Kidney", (185, 102, 83)),
    (("pancreas",), ANATOMY, "SCT^15776009^Pancreas", (249, 180, 111)),
    (("aorta",), ANATOMY, "SCT^15825003^Aorta", (224, 97, 76)),
    (("stomach",), ANATOMY, "SCT^69695003^Stomach", (216, 132, 105)),
]
_PALETTE = [(128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79), (220, 245, 20)]


def terminology(name: str, index: int = 0) -> tuple[str, tuple[int, int, int]]:
    """(``SegmentN_Tags`` value, RGB colour 0-255) for a segment called ``name`` (``index`` picks the fallback colour)."""
    words = set(re.findall(r"[a-z]+", name.lower()))
    side = _RIGHT if "right" in words else _LEFT if "left" in words else ""
    for needed, category, kind, colour in _TABLE:
        if set(needed) <= words:
            if category == ALTERED:  # a finding: the organ it lies in is its anatomic region
                region = next((k for n, c, k, _ in _TABLE if c == ANATOMY and set(n) <= words), "")
                entry = f"{CONTEXT}~{category}~{kind}~^^~Anatomic codes - DICOM master list~{region or '^^'}~{side or '^^'}"
            else:
                entry = f"{CONTEXT}~{category}~{kind}~{side or '^^'}~Anatomic codes - DICOM master list~^^~^^"
            return f"TerminologyEntry:{entry}|", colour
    generic = f"{CONTEXT}~SCT^85756007^Tissue~SCT^85756007^Tissue~^^~Anatomic codes - DICOM master list~^^~^^"
    return f"TerminologyEntry:{generic}|", _PALETTE[index % len(_PALETTE)]
