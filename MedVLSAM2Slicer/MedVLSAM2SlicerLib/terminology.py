"""Colour and standard terminology (SNOMED CT) for text-prompt segments.

A prompt names a structure when one of an entry's words appears in it as a whole word; the longest match
wins ("left kidney" before "kidney"). The entry's code is then looked up in the terminologies Slicer has
loaded (its terminology logic and the General Anatomy list it ships), whose category, type and
recommended colour are used. The table below is the fallback where Slicer lacks the entry (or runs
without its terminology module, as under slicer-core); unmatched prompts get a palette colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CATEGORY_ANATOMY = ("SCT", "123037004", "Anatomical Structure")
CATEGORY_MORPHOLOGY = ("SCT", "49755003", "Morphologically Altered Structure")
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Term:
    words: tuple[str, ...]  # lower-case phrases that select this entry
    code: tuple[str, str, str]  # (scheme, value, meaning)
    color: tuple[int, int, int]  # 0-255, close to Slicer's GenericAnatomyColors
    category: tuple[str, str, str] = CATEGORY_ANATOMY


TERMS: tuple[Term, ...] = (
    Term(("liver",), ("SCT", "10200004", "Liver"), (221, 130, 101)),
    Term(("spleen",), ("SCT", "78961009", "Spleen"), (157, 108, 162)),
    Term(("left kidney",), ("SCT", "18639004", "Left kidney"), (185, 102, 83)),
    Term(("right kidney",), ("SCT", "9846003", "Right kidney"), (185, 102, 83)),
    Term(("kidney", "kidneys"), ("SCT", "64033007", "Kidney"), (185, 102, 83)),
    Term(("pancreas",), ("SCT", "15776009", "Pancreas"), (249, 180, 111)),
    Term(("aorta",), ("SCT", "15825003", "Aorta"), (224, 97, 76)),
    Term(("gallbladder", "gall bladder"), ("SCT", "28231008", "Gallbladder"), (139, 150, 98)),
    Term(("stomach",), ("SCT", "69695003", "Stomach"), (216, 132, 105)),
    Term(("lung", "lungs"), ("SCT", "39607008", "Lung"), (197, 165, 145)),
    Term(("heart",), ("SCT", "80891009", "Heart"), (206, 110, 84)),
    Term(("bladder", "urinary bladder"), ("SCT", "89837001", "Urinary bladder"), (222, 154, 132)),
    Term(("esophagus", "oesophagus"), ("SCT", "32849002", "Esophagus"), (211, 171, 143)),
    Term(("tumor", "tumour", "mass", "lesion", "nodule"), ("SCT", "108369006", "Neoplasm"), (255, 255, 0),
         CATEGORY_MORPHOLOGY),
)

PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
    (183, 156, 220), (252, 208, 110), (144, 238, 144), (255, 160, 122), (100, 149, 237),
)


def match(prompt: str) -> Term | None:
    """The terminology entry whose phrase appears in ``prompt`` (longest phrase first), or None."""
    text = prompt.lower()
    candidates = [(len(w), t) for t in TERMS for w in t.words if re.search(rf"\b{re.escape(w)}\b", text)]
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def color_for(prompt: str, index: int) -> tuple[float, float, float]:
    """RGB in 0..1: the matched entry's colour, else the ``index``-th palette colour."""
    term = match(prompt)
    rgb = term.color if term else PALETTE[index % len(PALETTE)]
    return tuple(c / 255.0 for c in rgb)


def terminology_entry(prompt: str) -> str | None:
    """Slicer's terminology entry string for ``prompt`` (segment tag "TerminologyEntry"), or None."""
    term = match(prompt)
    if term is None:
        return None
    code = "^".join(term.code)
    category = "^".join(term.category)
    return f"{TERMINOLOGY_CONTEXT}~{category}~{code}~^^~{ANATOMIC_CONTEXT}~^^~^^"


def slicer_logic():
    """Slicer's terminology logic when the application has it, else None."""
    import slicer

    module = getattr(getattr(slicer, "modules", None), "terminologies", None)
    return module.logic() if module is not None else None


def _loaded_names(logic) -> list[str]:
    import vtk

    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    found = [names.GetValue(n) for n in range(names.GetNumberOfValues())]
    return sorted(found, key=lambda name: name != TERMINOLOGY_CONTEXT)  # Slicer's General Anatomy list first


def slicer_term(prompt: str, logic) -> tuple[str, tuple[float, float, float]] | None:
    """(terminology entry string, colour 0..1) of the structure ``prompt`` names, from a terminology loaded in
    Slicer's ``logic``; None when nothing matches or Slicer lacks the code."""
    import slicer

    term = match(prompt)
    if term is None or logic is None:
        return None
    for name in _loaded_names(logic):
        category = slicer.vtkSlicerTerminologyCategory()
        for c in range(logic.GetNumberOfCategoriesInTerminology(name)):
            logic.GetNthCategoryInTerminology(name, c, category)
            kind = slicer.vtkSlicerTerminologyType()
            for t in range(logic.GetNumberOfTypesInTerminologyCategory(name, category)):
                logic.GetNthTypeInTerminologyCategory(name, category, t, kind)
                if (kind.GetCodingSchemeDesignator(), kind.GetCodeValue()) == term.code[:2]:
                    entry = slicer.vtkSlicerTerminologyEntry()
                    entry.SetTerminologyContextName(name)
                    entry.GetCategoryObject().Copy(category)
                    entry.GetTypeObject().Copy(kind)
                    rgb = tuple(v / 255.0 for v in kind.GetRecommendedDisplayRGBValue())
                    return logic.SerializeTerminologyEntry(entry), rgb
    return None
