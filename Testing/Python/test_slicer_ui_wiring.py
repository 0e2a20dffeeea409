"""The panel's wiring, read from the .ui and the code: every MRML widget gets the scene, every parameter-node
binding and every widget the code names exists.

A qMRML widget without ``setMRMLScene`` stays empty in Slicer (no nodes to pick, ``setCurrentNode`` does
nothing), and ``connectGui`` silently skips a binding whose field or widget is missing; neither shows
outside the application, so ``wiring_problems`` reads both sides and names each mismatch.
"""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "MedVLSAM2Slicer"
MODULE_FILE = MODULE_DIR / "MedVLSAM2Slicer.py"
LIB_DIR = MODULE_DIR / "MedVLSAM2SlicerLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedVLSAM2Slicer.ui"
# code that touches the panel's widgets (``self.ui.X``, ``u.X``) or its parameter node
PANEL_CODE = (MODULE_FILE, LIB_DIR / "widget.py", LIB_DIR / "widget_language.py", LIB_DIR / "widget_tools.py",
              LIB_DIR / "selftest.py")
SCENE_SIGNAL, SCENE_SLOT = "mrmlSceneChanged(vtkMRMLScene*)", "setMRMLScene(vtkMRMLScene*)"
# what a parameterNodeWrapper instance offers besides its fields
WRAPPER_METHODS = {"connectGui", "disconnectGui", "parameterNode", "isCached", "default", "getValue", "setValue",
                   "AddObserver", "RemoveObserver", "StartModify", "EndModify"}
PARAMETER_NODE_CLASS = "MedVLSAM2SlicerParameterNode"


def parse_ui(text: str):
    root = ET.fromstring(text)
    top = root.find("widget")
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    bindings = {}
    for w in root.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                bindings[p.find("string").text] = w.get("name")
    connections = [tuple((c.findtext(k) or "") for k in ("sender", "signal", "receiver", "slot"))
                   for c in root.iter("connection")]
    return top.get("name"), widgets, bindings, connections


def parameter_fields(module_source: str) -> set[str]:
    tree = ast.parse(module_source)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == PARAMETER_NODE_CLASS)
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}


def code_uses(sources: list[str]) -> tuple[set[str], set[str], set[str]]:
    """(widget names used as ``ui.X``/``u.X``, widgets given the scene in code, parameter node attributes used)."""
    widgets, scene_in_code, params = set(), set(), set()
    functions = [f for s in sources for f in ast.walk(ast.parse(s)) if isinstance(f, ast.FunctionDef)]
    for function in functions:
        aliases = {"_parameterNode"}  # names bound to the parameter node in this function
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = ast.unparse(node.value)
                if value == "self._parameterNode" or value.endswith("getParameterNode()"):
                    aliases.add(node.targets[0].id)
        for node in ast.walk(function):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            if (isinstance(owner, ast.Attribute) and owner.attr == "ui") or (isinstance(owner, ast.Name) and owner.id == "u"):
                widgets.add(node.attr)
            elif (isinstance(owner, ast.Attribute) and owner.attr in aliases) or \
                    (isinstance(owner, ast.Name) and owner.id in aliases):
                params.add(node.attr)
            if node.attr == "setMRMLScene" and isinstance(owner, ast.Attribute):
                scene_in_code.add(owner.attr)  # ui.X.setMRMLScene(...)
    return widgets - {"__dict__"}, scene_in_code, params


def wiring_problems(ui_text: str, sources: list[str], module_source: str) -> list[str]:
    top, widgets, bindings, connections = parse_ui(ui_text)
    used, scene_in_code, params = code_uses(sources)
    problems = []
    for sender, signal, receiver, slot in connections:
        for name in (sender, receiver):
            if name not in widgets:
                problems.append(f"a connection names {name!r}, which the .ui does not have")
    scene_receivers = {r for s, sig, r, sl in connections if s == top and sig == SCENE_SIGNAL and sl == SCENE_SLOT}
    for name, cls in widgets.items():
        if name != top and cls.startswith("qMRML") and name not in scene_receivers | scene_in_code:
            problems.append(f"{name} ({cls}) never gets the scene: connect {top}.{SCENE_SIGNAL} to its {SCENE_SLOT}")
    fields = parameter_fields(module_source)
    for field, widget in bindings.items():
        if field not in fields:
            problems.append(f"{widget} is bound to parameter {field!r}, which {PARAMETER_NODE_CLASS} lacks")
    for field in sorted(fields - set(bindings)):
        problems.append(f"parameter {field!r} is bound to no widget (SlicerParameterName)")
    for name in sorted(used - set(widgets)):
        problems.append(f"the code uses ui.{name}, which the .ui does not have")
    for name in sorted(params - fields - WRAPPER_METHODS):
        problems.append(f"the code uses parameter node field {name!r}, which {PARAMETER_NODE_CLASS} lacks")
    return problems


def current() -> tuple[str, list[str], str]:
    module = MODULE_FILE.read_text(encoding="utf-8")
    return UI_FILE.read_text(encoding="utf-8"), [p.read_text(encoding="utf-8") for p in PANEL_CODE], module


def test_the_panel_is_wired_the_ui_gives_every_mrml_widget_the_scene_and_bindings_match():
    ui, sources, module = current()
    used, _, params = code_uses(sources)
    assert len(used) > 30 and {"lastSlice", "firstSlice"} <= params  # the scan really sees the panel's code
    sys.path.insert(0, str(MODULE_DIR))
    from MedVLSAM2SlicerLib.panel_state import CONTROLS
    from MedVLSAM2SlicerLib.shortcuts import SHORTCUTS

    assert wiring_problems(ui, sources, module) == []
    names = parse_ui(ui)[1]
    assert set(CONTROLS) | {b for _, b in SHORTCUTS.values()} <= set(names)


def without_connection(ui: str, receiver: str) -> str:
    root = ET.fromstring(ui)
    conns = root.find("connections")
    for c in list(conns):
        if c.findtext("receiver") == receiver:
            conns.remove(c)
    return ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize("mutation, expected", [
    # the .ui as it was before the fix: the segmentation selector stayed empty in Slicer
    (lambda ui, src, mod: (without_connection(ui, "segmentationSelector"), src, mod), "segmentationSelector"),
    (lambda ui, src, mod: (without_connection(ui, "inputVolumeSelector"), src, mod), "inputVolumeSelector"),
    (lambda ui, src, mod: (ui.replace("<string>firstSlice</string>", "<string>fristSlice</string>"), src, mod),
     "'fristSlice'"),
    (lambda ui, src, mod: (ui, [src[0], src[1].replace("self.ui.rangeFromSpinBox", "self.ui.rangeFromSpinbox"),
                                *src[2:]], mod), "ui.rangeFromSpinbox"),
    (lambda ui, src, mod: (ui, [src[0], src[1].replace("p.useSliceRange", "p.useRange"), *src[2:]], mod),
     "'useRange'"),
    (lambda ui, src, mod: (ui, src, mod.replace("    useSliceRange: bool = False\n", "")), "'useSliceRange'"),
], ids=["segmentation-selector-without-scene", "volume-selector-without-scene", "binding-to-no-field",
        "widget-missing-from-ui", "unknown-parameter-field", "field-removed"])
def test_each_wiring_mistake_is_named(mutation, expected):
    ui, sources, module = mutation(*current())
    assert (ui, sources, module) != current(), "the mutation did not change anything"
    problems = wiring_problems(ui, sources, module)
    assert problems and any(expected in p for p in problems), problems
