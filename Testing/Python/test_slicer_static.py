"""Static checks of the Slicer module: light imports, widget names, CMake lists and extension metadata."""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "MedVLSAM2Slicer"
MODULE_FILE = MODULE_DIR / "MedVLSAM2Slicer.py"
LIB_DIR = MODULE_DIR / "MedVLSAM2SlicerLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedVLSAM2Slicer.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"

# What a Slicer module file may import at file scope: Slicer's own bindings, the standard library basics and
# the Qt-free logic (whose light imports test_lib_imports_neither_torch_nor_qt_nor_slicer checks).
ALLOWED_TOP_LEVEL = {"__future__", "logging", "os", "typing", "ctk", "qt", "slicer", "vtk", "MedVLSAM2SlicerLib.logic"}
# Lib modules that need Slicer (qt, slicer): same file-scope rule as the module file, not importable in pytest.
SLICER_ONLY = ("widget", "widget_language", "widget_install", "widget_tools", "selftest")
PANEL_PARTS = {"widget": {"widget_language", "widget_install", "widget_tools"}}  # the panel class is split over these files
SHELL_MAX_LINES = 150  # the module file stays a thin shell (SlicerDentalSegmentator style)


def module_tree(path: Path = MODULE_FILE) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


@pytest.mark.parametrize("path", [MODULE_FILE, *(LIB_DIR / f"{m}.py" for m in SLICER_ONLY)], ids=lambda p: p.name)
def test_slicer_files_import_nothing_heavy_and_run_nothing_at_import(path):
    for node in module_tree(path).body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            assert path.parent == LIB_DIR, f"line {node.lineno}: relative import outside MedVLSAM2SlicerLib"
            # the panel may use the Qt-free modules and its own parts only
            assert node.module not in SLICER_ONLY or node.module in PANEL_PARTS.get(path.stem, ())
            continue
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        elif isinstance(node, ast.Assign) and all(isinstance(n, ast.Constant) for n in ast.walk(node.value)
                                                   if not isinstance(n, (ast.Tuple, ast.List, ast.Load))):
            continue  # plain constants
        else:
            raise AssertionError(f"line {node.lineno}: statement runs code at import ({ast.dump(node)[:80]})")
        for name in names:
            assert name in ALLOWED_TOP_LEVEL or name.split(".")[0] in ALLOWED_TOP_LEVEL - {"MedVLSAM2SlicerLib.logic"}, \
                f"{path.name} line {node.lineno}: file-scope import of {name}"


def test_module_file_follows_the_slicer_template():
    classes = {n.name: n for n in module_tree().body if isinstance(n, ast.ClassDef)}
    for name in ("MedVLSAM2Slicer", "MedVLSAM2SlicerWidget", "MedVLSAM2SlicerLogic", "MedVLSAM2SlicerTest",
                 "MedVLSAM2SlicerParameterNode"):
        assert name in classes, f"{name} missing from the module file"
    decorators = [ast.unparse(d) for d in classes["MedVLSAM2SlicerParameterNode"].decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    assert [ast.unparse(b) for b in classes["MedVLSAM2SlicerLogic"].bases] == ["ScriptedLoadableModuleLogic",
                                                                               "MedVLSAM2Logic"]


def test_module_file_is_a_thin_shell_over_the_lib():
    lines = len(MODULE_FILE.read_text(encoding="utf-8").splitlines())
    assert lines <= SHELL_MAX_LINES, f"{MODULE_FILE.name} has {lines} lines; move code into MedVLSAM2SlicerLib"
    widget = next(n for n in module_tree().body if isinstance(n, ast.ClassDef) and n.name == "MedVLSAM2SlicerWidget")
    for method in widget.body:
        if isinstance(method, ast.FunctionDef):
            assert method.end_lineno - method.lineno < 10, f"Widget.{method.name} does work; delegate to the panel"
    assert "MedVLSAM2Panel(self, self.logic)" in ast.unparse(widget)  # logic injected into the panel


def test_lib_imports_neither_torch_nor_qt_nor_slicer():
    modules = sorted(p.stem for p in LIB_DIR.glob("*.py") if p.stem not in ("__init__", *SLICER_ONLY))
    assert "logic" in modules and "connection" in modules
    code = (f"import sys; sys.path.insert(0, {str(MODULE_DIR)!r})\n"
            + "".join(f"import MedVLSAM2SlicerLib.{m}\n" for m in modules)
            + "bad = [m for m in ('torch', 'qt', 'ctk', 'slicer', 'sam2', 'transformers', 'SimpleITK') if m in sys.modules]\n"
            + "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"MedVLSAM2SlicerLib imports {out.stdout.strip()} at import time"


def ui_widget_names() -> list[str]:
    root = ET.parse(UI_FILE).getroot()
    return [w.get("name") for w in root.iter("widget")]


def test_ui_widget_names_are_unique():
    names = ui_widget_names()
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def cmake_lists() -> tuple[set[str], list[str]]:
    """(explicitly listed files, glob patterns relative to the module folder)."""
    text = re.sub(r"#.*", "", MODULE_CMAKE.read_text(encoding="utf-8")).replace("${MODULE_NAME}", "MedVLSAM2Slicer")
    listed = set()
    for block in re.findall(r"set\(MODULE_PYTHON_(?:SCRIPTS|RESOURCES)\s+(.*?)\)", text, re.S):
        listed |= set(block.split())
    globs = re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)", text)
    return listed, globs


def test_every_module_file_is_listed_in_the_module_cmakelists():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    listed, globs = cmake_lists()
    for path in listed:
        assert (MODULE_DIR / path).is_file(), f"CMakeLists lists {path}, which does not exist"
    own = [MODULE_FILE, *LIB_DIR.glob("*.py"), *(p for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file())]
    for path in own:
        rel = path.relative_to(MODULE_DIR).as_posix()
        assert rel in listed, f"{rel} is not listed in {MODULE_CMAKE.relative_to(ROOT)}"
    engine = [p for p in (MODULE_DIR / "medvlsam2").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert engine
    for path in engine:
        rel = path.relative_to(MODULE_DIR).as_posix()
        # CMake's GLOB_RECURSE "medvlsam2/*.py" matches at any depth, like fnmatch's "*" across "/"
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is matched by no glob in the module CMakeLists"


def test_icon_is_a_128_pixel_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "MedVLSAM2Slicer.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (128, 128)


def test_extension_metadata_is_in_the_top_level_cmakelists():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                  "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        match = re.search(rf'set\({field}\s+"([^"]*)"\)', text)
        assert match and match.group(1).strip(), f"{field} is missing or empty"
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"[^"]*PyTorch', text)
    assert "add_subdirectory(MedVLSAM2Slicer)" in text


def test_shared_resources_are_installed_where_resource_path_looks():
    """Every file in Resources/DemoWeights and the manifest is copied into the module's Resources/."""
    text = re.sub(r"#.*", "", MODULE_CMAKE.read_text(encoding="utf-8"))
    block = re.search(r"set\(SHARED_RESOURCES\s+(.*?)\)", text, re.S)
    assert block, "the module CMakeLists does not list SHARED_RESOURCES"
    listed = set(block.group(1).split())
    shared = ROOT / "Resources"
    wanted = {"weights_manifest.json"} | {p.relative_to(shared).as_posix()
                                           for p in (shared / "DemoWeights").rglob("*") if p.is_file()}
    assert wanted - listed == set(), f"not installed with the extension: {sorted(wanted - listed)}"
    assert all((shared / name).is_file() for name in listed), "SHARED_RESOURCES lists a file that does not exist"
    assert "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Resources" in text  # where resource_path() looks
    from medvlsam2 import resources

    installed_dir = resources.SEARCH_DIRS[1]
    assert installed_dir.parent == (MODULE_DIR / "medvlsam2").resolve().parent  # next to the medvlsam2 package


def test_the_dependency_list_covers_every_package_the_local_server_imports():
    """Import what ``medvlsam2 serve`` imports (the tiny model included) and read each loaded engine file's imports."""
    code = f"""
import ast, sys
sys.path.insert(0, {str(MODULE_DIR)!r})
import medvlsam2.cli.serve, medvlsam2.server.app
from medvlsam2.factory import load_model
load_model("tiny")
found = set()
for name, mod in list(sys.modules.items()):
    if name.startswith("medvlsam2") and getattr(mod, "__file__", None):
        for node in ast.walk(ast.parse(open(mod.__file__).read())):
            if isinstance(node, ast.Import):
                found |= {{a.name.split(".")[0] for a in node.names}}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
print(",".join(sorted(n for n in found if n not in sys.stdlib_module_names and n != "medvlsam2")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    imported = set(out.stdout.strip().split(","))
    assert {"torch", "sam2", "monai", "fastapi"} <= imported  # the scan saw the server and the model
    from MedVLSAM2SlicerLib import dependencies

    listed = set(dependencies.CLIENT_REQUIREMENTS) | set(dependencies.SERVER_REQUIREMENTS)
    assert imported - listed == set(), f"the server imports {sorted(imported - listed)}, which the panel never checks"
    # sam2 is installed --no-deps: its own runtime requirements must be listed (torchvision deliberately not)
    from importlib.metadata import requires

    sam2_needs = {re.split(r"[<>=!; ]", r)[0].lower() for r in requires("sam2") if "extra ==" not in r}
    pip_names = {re.split(r"[<>=!; ]", r)[0].lower() for r in listed_requirements(dependencies)}
    assert sam2_needs - pip_names == {"torchvision"}


def listed_requirements(dependencies) -> list[str]:
    return list(dependencies.CLIENT_REQUIREMENTS.values()) + list(dependencies.SERVER_REQUIREMENTS.values())


# what Slicer's parameterNodeWrapper can bind (slicer/parameterNodeWrapper/guiConnectors.py): field type -> widget classes
CONNECTABLE = {"vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"}, "vtkMRMLSegmentationNode": {"qMRMLNodeComboBox"},
               "bool": {"QCheckBox", "QPushButton"}, "int": {"QSpinBox", "QSlider"},
               "str": {"QLineEdit", "QTextEdit"}, "Annotated[str, Choice": {"QComboBox"},
               "Annotated[int, Minimum": {"QSpinBox", "QSlider"}}


def ui_bindings() -> dict[str, tuple[str, str]]:
    """SlicerParameterName -> (widget class, widget name) from the .ui file."""
    out = {}
    for w in ET.parse(UI_FILE).getroot().iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[p.find("string").text] = (w.get("class"), w.get("name"))
    return out


def test_every_parameter_node_field_is_bound_to_a_widget_that_can_show_it():
    node = next(n for n in module_tree().body if isinstance(n, ast.ClassDef) and n.name == "MedVLSAM2SlicerParameterNode")
    fields = {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    assert {"inputVolume", "segmentation", "textPrompts", "direction", "firstSlice", "lastSlice"} <= set(fields)
    bound = ui_bindings()
    assert set(fields) == set(bound), f"fields without a widget: {set(fields) - set(bound)}; " \
                                      f"bindings without a field: {set(bound) - set(fields)}"
    for name, annotation in fields.items():
        kind = next(k for k in sorted(CONNECTABLE, key=len, reverse=True) if annotation.startswith(k))
        assert bound[name][0] in CONNECTABLE[kind], f"{name}: {annotation} cannot be shown by a {bound[name][0]}"
    widget = ast.unparse(module_tree(LIB_DIR / "widget.py"))
    assert "connectGui(self.ui)" in widget and "disconnectGui(" in widget


def test_no_shortcut_is_installed_on_the_main_window():
    tree = module_tree(LIB_DIR / "widget.py")
    shortcuts = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("QShortcut")]
    assert shortcuts, "the panel installs no shortcut at all"
    for call in shortcuts:
        assert "mainWindow" not in ast.unparse(call), f"line {call.lineno}: shortcut on the main window"
    text = ast.unparse(tree)
    assert "mainWindow" not in text
    assert "setContext(qt.Qt.WidgetWithChildrenShortcut)" in text  # only while focus is in the panel or a slice view


def test_the_slicer_smoke_script_exists_is_listed_in_the_cmake_tests_and_run_by_ci():
    smoke = ROOT / "Testing" / "Slicer" / "smoke.py"
    assert smoke.is_file()
    source = smoke.read_text(encoding="utf-8")
    compile(source, str(smoke), "exec")
    assert "MedVLSAM2SlicerTest" in source and "exit" in source
    text = re.sub(r"#.*", "", MODULE_CMAKE.read_text(encoding="utf-8"))
    test_block = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S).group(1)
    assert "Testing/Slicer/smoke.py" in test_block and "--no-main-window" in test_block and "add_test(" in test_block
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci and "command -v Slicer" in ci and "Testing/Slicer/smoke.py" in ci and "skipped" in ci


# the fields slicer-extension-catalog-entry-schema-v1.0.1 allows (additionalProperties: false) and requires
CATALOG_FIELDS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                  "build_subdirectory", "enabled", "tier"}


def test_the_catalog_entry_is_in_the_current_json_format_and_agrees_with_the_cmakelists():
    import json

    assert not list(ROOT.glob("*.s4ext")), "the superseded .s4ext format: the index takes the JSON entry"
    entry = json.loads((ROOT / "MedVLSAM2Slicer.json").read_text(encoding="utf-8"))
    assert set(entry) <= CATALOG_FIELDS and {"$schema", "category", "scm_url"} <= set(entry)
    assert "slicer-extension-catalog-entry-schema-v1.0" in entry["$schema"] and 1 <= entry["tier"] <= 5
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in text
    depends = re.search(r'set\(EXTENSION_DEPENDS\s+"([^"]*)"\)', text).group(1).split()
    assert entry["build_dependencies"] == depends  # the index builds PyTorch first
    description = re.search(r'set\(EXTENSION_DESCRIPTION\s+"([^"]*)"\)', text).group(1)
    assert "Slicer 5.10" in description and "5.8" in description  # what serving.py offers on each
