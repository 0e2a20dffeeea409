"""Terminology entry and colour of text-prompt segments, from Slicer's terminology where it has the structure.

The structure a prompt names is read by the project's one table (``medvlsam2.io.terminology``: Slicer's
General Anatomy codes, laterality as a type modifier, a finding's organ as its anatomic region). Its type is
then looked up in the terminologies Slicer has loaded (its terminology logic), whose category, type,
modifier and recommended colour are used; the table's own entry and colour where Slicer lacks the type
(or runs without its terminology module, as under slicer-core). Unmatched prompts get a palette colour.
"""

from __future__ import annotations

from medvlsam2.io import terminology as table

TERMINOLOGY_CONTEXT = table.CONTEXT


def _rgb(color) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in color)


def entry_and_color(prompt: str, index: int, logic=None) -> tuple[str | None, tuple[float, float, float]]:
    """(terminology entry string for the segment's "TerminologyEntry" tag or None, colour 0..1) for ``prompt``;
    ``index`` picks the palette colour of a prompt the table does not know."""
    found = table.match(prompt)
    if found is None:
        return None, _rgb(table.palette_color(index))
    return slicer_term(found, logic) or (found.entry(), _rgb(found.term.color))


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


def _set_code(target, code: table.Code) -> None:
    target.SetCodingSchemeDesignator(code[0])
    target.SetCodeValue(code[1])
    target.SetCodeMeaning(code[2])


def _color(kind, fallback) -> tuple[float, float, float]:
    """Slicer's recommended colour of ``kind``, else ``fallback`` (Slicer leaves it grey when a type only has
    colours per modifier, as Kidney)."""
    rgb = tuple(kind.GetRecommendedDisplayRGBValue())
    return _rgb(rgb) if rgb != (127, 127, 127) else _rgb(fallback)


def slicer_term(found: table.Match, logic) -> tuple[str, tuple[float, float, float]] | None:
    """(terminology entry string, colour 0..1) of ``found`` from a terminology loaded in Slicer's ``logic``;
    None when there is no logic or Slicer lacks the type (or the laterality modifier it needs)."""
    if logic is None:
        return None
    import slicer

    for name in _loaded_names(logic):
        category = slicer.vtkSlicerTerminologyCategory()
        for c in range(logic.GetNumberOfCategoriesInTerminology(name)):
            logic.GetNthCategoryInTerminology(name, c, category)
            kind = slicer.vtkSlicerTerminologyType()
            for t in range(logic.GetNumberOfTypesInTerminologyCategory(name, category)):
                logic.GetNthTypeInTerminologyCategory(name, category, t, kind)
                if (kind.GetCodingSchemeDesignator(), kind.GetCodeValue()) == found.term.type[:2]:
                    return _entry(logic, name, category, kind, found)
    return None


def _entry(logic, name: str, category, kind, found: table.Match) -> tuple[str, tuple[float, float, float]] | None:
    import slicer

    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(name)
    entry.GetCategoryObject().Copy(category)
    entry.GetTypeObject().Copy(kind)
    color = _color(kind, found.term.color)
    if found.modifier is not None:
        modifier = slicer.vtkSlicerTerminologyType()
        for m in range(logic.GetNumberOfTypeModifiersInTerminologyType(name, category, kind)):
            logic.GetNthTypeModifierInTerminologyType(name, category, kind, m, modifier)
            if modifier.GetCodeValue() == found.modifier[1]:
                entry.GetTypeModifierObject().Copy(modifier)
                color = _color(modifier, found.term.color)
                break
        else:
            return None  # Slicer's type has no such side: the table's entry says it
    if found.region is not None:
        entry.SetRegionContextName(table.ANATOMIC_CONTEXT)
        _set_code(entry.GetRegionObject(), found.region.type)
        if found.region_modifier is not None:
            _set_code(entry.GetRegionModifierObject(), found.region_modifier)
    return logic.SerializeTerminologyEntry(entry), color
