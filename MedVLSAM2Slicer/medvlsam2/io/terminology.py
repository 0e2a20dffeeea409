"""The project's one terminology table: segment names -> SNOMED CT codes and display colour, with the codes and
recommended colours of Slicer's own General Anatomy list (``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy``):
category + type, laterality as a type modifier ("left kidney" = Kidney + Left), a finding's organ as its
anatomic region ("cyst in the left kidney" = Cyst, region Kidney + Left).

Used by the engine for the ``SegmentN_Tags`` of ``.seg.nrrd`` files ("TerminologyEntry:<context>~<category>~
<type>~<type modifier>~<anatomic context>~<region>~<region modifier>|", each code "scheme^value^meaning") and by
the Slicer panel where Slicer's loaded terminologies lack an entry. Names are matched by whole words; findings
before organs, the longest phrase first. Unknown names get Slicer's generic "Tissue" and a palette colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Code = tuple[str, str, str]  # (coding scheme, value, meaning)
CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMY: Code = ("SCT", "123037004", "Anatomical Structure")
ALTERED: Code = ("SCT", "49755003", "Morphologically Altered Structure")
TISSUE: Code = ("SCT", "85756007", "Tissue")
RIGHT: Code = ("SCT", "24028007", "Right")
LEFT: Code = ("SCT", "7771000", "Left")


@dataclass(frozen=True)
class Term:
    words: tuple[str, ...]  # lower-case phrases, any of which (as whole words) selects this entry
    category: Code
    type: Code
    color: tuple[int, int, int]  # 0-255, Slicer's recommended display colour
    sided: bool = False  # takes Slicer's laterality modifier (Left/Right)


TERMS: tuple[Term, ...] = (
    Term(("cyst", "cysts"), ALTERED, ("SCT", "367643001", "Cyst"), (205, 205, 100)),
    Term(("mass", "tumor", "tumour", "lesion", "nodule", "hypodensity"), ALTERED, ("SCT", "4147007", "Mass"),
         (144, 238, 144)),
    Term(("liver", "hepatic"), ANATOMY, ("SCT", "10200004", "Liver"), (221, 130, 101)),
    Term(("spleen", "splenic"), ANATOMY, ("SCT", "78961009", "Spleen"), (157, 108, 162)),
    Term(("kidney", "kidneys", "renal"), ANATOMY, ("SCT", "64033007", "Kidney"), (185, 102, 83), sided=True),
    Term(("pancreas", "pancreatic"), ANATOMY, ("SCT", "15776009", "Pancreas"), (249, 180, 111)),
    Term(("aorta", "aortic"), ANATOMY, ("SCT", "15825003", "Aorta"), (224, 97, 76)),
    Term(("gallbladder", "gall bladder"), ANATOMY, ("SCT", "28231008", "Gallbladder"), (139, 150, 98)),
    Term(("stomach", "gastric"), ANATOMY, ("SCT", "69695003", "Stomach"), (216, 132, 105)),
    Term(("lung", "lungs", "pulmonary"), ANATOMY, ("SCT", "39607008", "Lung"), (197, 165, 145), sided=True),
    Term(("heart", "cardiac"), ANATOMY, ("SCT", "80891009", "Heart"), (206, 110, 84)),
    Term(("bladder", "urinary bladder"), ANATOMY, ("SCT", "89837001", "Bladder"), (222, 154, 132)),
    Term(("esophagus", "oesophagus"), ANATOMY, ("SCT", "32849002", "Esophagus"), (211, 171, 143)),
)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
    (183, 156, 220), (252, 208, 110), (144, 238, 144), (255, 160, 122), (100, 149, 237),
)


@dataclass(frozen=True)
class Match:
    """What a name says: the entry, its laterality, and for a finding the organ it lies in."""

    term: Term
    modifier: Code | None = None  # laterality of a sided organ
    region: Term | None = None  # a finding's organ
    region_modifier: Code | None = None

    def entry(self) -> str:
        """Slicer's serialized terminology entry (the ``TerminologyEntry`` tag value, without prefix and bar)."""
        region = self.region.type if self.region else None
        return "~".join([CONTEXT, _code(self.term.category), _code(self.term.type), _code(self.modifier),
                         ANATOMIC_CONTEXT, _code(region), _code(self.region_modifier)])


def _code(code: Code | None) -> str:
    return "^".join(code) if code else "^^"


def _best(text: str, terms) -> Term | None:
    """The entry whose phrase appears in ``text`` as whole words, the longest phrase first."""
    found = [(len(w), t) for t in terms for w in t.words if re.search(rf"\b{re.escape(w)}\b", text)]
    return max(found, key=lambda f: f[0])[1] if found else None


def match(name: str) -> Match | None:
    """The table's reading of ``name`` ("the cyst in the left kidney" -> Cyst in Kidney, Left), or None."""
    text = name.lower()
    side = RIGHT if re.search(r"\bright\b", text) else LEFT if re.search(r"\bleft\b", text) else None
    organ = _best(text, [t for t in TERMS if t.category == ANATOMY])
    finding = _best(text, [t for t in TERMS if t.category == ALTERED])
    if finding is not None:
        return Match(finding, region=organ, region_modifier=side if organ is not None and organ.sided else None)
    if organ is not None:
        return Match(organ, modifier=side if organ.sided else None)
    return None


def palette_color(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def terminology(name: str, index: int = 0) -> tuple[str, tuple[int, int, int]]:
    """(``SegmentN_Tags`` value, RGB colour 0-255) for a segment called ``name`` (``index`` picks the fallback colour)."""
    found = match(name)
    if found is None:
        found, colour = Match(Term((), TISSUE, TISSUE, PALETTE[0])), palette_color(index)
    else:
        colour = found.term.color
    return f"TerminologyEntry:{found.entry()}|", colour
