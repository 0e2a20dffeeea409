"""The Sample Data entry: registered with files that exist, download through Sample Data's own route
(urllib on a file:// address) with matching sha256, load under slicer-core as a CT and a segmentation with
the findings, and are exactly what scripts/make_sample_data.py writes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

from MedVLSAM2SlicerLib import sample_data  # noqa: E402


def registered(monkeypatch) -> dict:
    calls = []
    fake = types.ModuleType("SampleData")
    fake.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    sample_data.register()
    assert len(calls) == 1
    return calls[0]


def test_the_entry_names_shipped_files_that_download_with_their_checksums(monkeypatch, tmp_path):
    kw = registered(monkeypatch)
    assert kw["category"] == "MedVLSAM2" and kw["sampleName"] == "MedVLSAM2Phantom"
    assert Path(kw["thumbnailFileName"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert kw["loadFileTypes"] == ["VolumeFile", "SegmentationFile"] and len(kw["nodeNames"]) == 2
    for uri, name, checksum in zip(kw["uris"], kw["fileNames"], kw["checksums"]):
        assert uri.startswith("file://")
        path, _ = urllib.request.urlretrieve(uri, tmp_path / name)  # what Sample Data's downloadFile does
        algo, digest = checksum.split(":")
        assert algo == "SHA256" and hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest


def test_without_the_sample_data_module_nothing_happens(monkeypatch):
    monkeypatch.setitem(sys.modules, "SampleData", None)  # import fails
    sample_data.register()


def test_the_files_load_in_slicer_as_a_ct_and_a_segmentation_with_the_findings():
    slicer = pytest.importorskip("slicer")
    from slicer_scene import scene_with_logics

    scene = scene_with_logics()
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(sample_data.FOLDER / sample_data.CT_FILE))
    assert storage.ReadData(ct)
    array = slicer.util.arrayFromVolume(ct)
    assert array.shape == (32, 128, 128) and array.min() < -500 and array.max() > 100  # air and contrast organs
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg_storage = slicer.vtkMRMLSegmentationStorageNode()
    seg_storage.SetFileName(str(sample_data.FOLDER / sample_data.SEG_FILE))
    assert seg_storage.ReadData(seg)
    segmentation = seg.GetSegmentation()
    names = {segmentation.GetNthSegment(n).GetName(): segmentation.GetNthSegmentID(n)
             for n in range(segmentation.GetNumberOfSegments())}
    assert {"liver", "liver lesion", "kidney cyst"} <= set(names)
    lesion = slicer.util.arrayFromSegmentBinaryLabelmap(seg, names["liver lesion"], ct)
    assert np.count_nonzero(lesion) > 50


def test_the_shipped_files_are_what_the_script_writes(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_data.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in (sample_data.CT_FILE, sample_data.SEG_FILE, sample_data.CHECKSUMS):
        assert (tmp_path / name).read_bytes() == (sample_data.FOLDER / name).read_bytes(), name
