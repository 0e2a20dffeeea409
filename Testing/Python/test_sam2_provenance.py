"""The installed sam2 equals the SAM2 authors' code at the recorded commit, and the check refuses a modified,
missing or extra file and another version (Resources/sam2-upstream-sha256.json, sam2_provenance.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

from MedVLSAM2SlicerLib import sam2_provenance  # noqa: E402


def test_the_installed_sam2_equals_the_recorded_upstream_files():
    table = sam2_provenance.load_table()
    assert table["upstream"] == "https://github.com/facebookresearch/sam2" and len(table["commit"]) == 40
    assert len(table["files"]) >= 60 and "sam2/modeling/sam2_base.py" in table["files"]
    assert sam2_provenance.problems() == []
    assert sam2_provenance.verify() == len(table["files"])
    run = subprocess.run([sys.executable, str(ROOT / "MedVLSAM2Slicer" / "MedVLSAM2SlicerLib" / "sam2_provenance.py")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "60 files equal" in run.stdout, run.stderr


@pytest.fixture
def copy(tmp_path) -> Path:
    """The installed distribution's packages copied into a site-packages stand-in."""
    root = Path(distribution("sam2").locate_file(""))
    for package in sam2_provenance.PACKAGES:
        shutil.copytree(root / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert sam2_provenance.problems(tmp_path, "1.1.0") == []
    return tmp_path


def test_a_modified_file_is_refused_and_named(copy):
    target = copy / "sam2" / "modeling" / "sam2_base.py"
    target.write_bytes(target.read_bytes().replace(b"import torch", b"import torch  ", 1))
    assert sam2_provenance.problems(copy, "1.1.0") == [
        "sam2/modeling/sam2_base.py: modified (sha256 differs from https://github.com/facebookresearch/sam2 at 2b90b9f)"]
    with pytest.raises(sam2_provenance.Sam2ProvenanceError, match="sam2_base.py: modified.*force-reinstall"):
        sam2_provenance.verify(copy, "1.1.0")


def test_an_added_or_missing_file_and_another_version_are_refused(copy):
    (copy / "sam2" / "sitecustomize_hook.py").write_text("print('hi')\n")
    (copy / "training" / "train.py").unlink()
    found = sam2_provenance.problems(copy, "1.1.1")
    assert found[0].startswith("sam2 1.1.1 is installed; the checked release is 1.1.0")
    assert "sam2/sitecustomize_hook.py: not in the SAM2 authors' release" in found
    assert "training/train.py: missing" in found and len(found) == 3
