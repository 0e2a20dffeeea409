"""Dataset readers on tiny files the tests write, and their errors on malformed input."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medvlsam2.cli import main
from medvlsam2.data.datasets import (load_image, read_caption_pairs, read_ct_rate, read_refseg, read_segmentation,
                                     read_vqa)
from medvlsam2.data.synthetic import ORGANS, generate_case
from medvlsam2.data.writers import write_dataset
from medvlsam2.errors import InputError

SMALL = dict(shape=(8, 32, 32), spacing=(11.2, 11.2, 20.0))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cases = [generate_case(s, findings={"liver_lesions": [30.0], "renal_cyst": "right", "cyst_mm": 24}, **SMALL)
             for s in (1, 2)]
    return cases, write_dataset(cases, tmp_path_factory.mktemp("synth"), ORGANS)


def test_segmentation_layout_round_trips(written):
    cases, root = written
    read = read_segmentation(root)
    assert len(read) == 2
    case = read[1]
    assert np.array_equal(case.volume.array, cases[1].volume.array)
    assert np.array_equal(case.labels, cases[1].labels)
    assert case.label_names == cases[1].label_names
    assert np.allclose(case.volume.spacing, SMALL["spacing"])


def test_caption_vqa_and_refseg_layouts(written):
    cases, root = written
    caps = read_caption_pairs(root / "m3d_cap.json")
    assert [c.report for c in caps] == [c.report for c in cases]
    vqa = read_vqa(root / "m3d_vqa.csv")[0]
    assert vqa.vqa_closed == cases[0].vqa_closed and vqa.vqa_open == cases[0].vqa_open
    ref = read_refseg(root / "m3d_refseg.csv")[0]
    assert [r.expression for r in ref.referring] == [r.expression for r in cases[0].referring]
    cyst = next(r for r in ref.referring if "cyst" in r.expression)
    assert ref.mask(cyst.expression).sum() == (cases[0].labels == 9).sum() > 0


def test_ct_rate_layout(tmp_path):
    nested = tmp_path / "vols" / "train_1" / "train_1_a"
    nested.mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16)), str(nested / "train_1_a_1.nii.gz"))
    (tmp_path / "reports.csv").write_text('VolumeName,Findings_EN,Impressions_EN\ntrain_1_a_1.nii.gz,"Liver normal.",No acute.\n')
    case = read_ct_rate(tmp_path / "vols", tmp_path / "reports.csv")[0]
    assert case.report == "Liver normal. No acute." and case.volume.shape == (4, 8, 8)
    (tmp_path / "bad.csv").write_text("VolumeName,Findings_EN\nmissing.nii.gz,x\n")
    with pytest.raises(InputError, match="not under"):
        read_ct_rate(tmp_path / "vols", tmp_path / "bad.csv")


def test_m3d_npy_image_without_pickle(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((1, 4, 8, 8), np.float32))
    assert load_image(tmp_path / "a.npy").shape == (4, 8, 8)
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError):
        load_image(tmp_path / "obj.npy")


def test_malformed_files_say_what_is_wrong(written, tmp_path):
    _, root = written
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_segmentation(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}, "training": "x"}))
    with pytest.raises(InputError, match="no 'training' list"):
        read_segmentation(tmp_path)
    (tmp_path / "vqa.csv").write_text("Image Path,Question\na.nii.gz,q\n")
    with pytest.raises(InputError, match="lacks column"):
        read_vqa(tmp_path / "vqa.csv")
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["label"] = meta["training"][1]["image"].replace("imagesTr", "missing")
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError):
        read_segmentation(tmp_path)[0]


def test_synth_command_writes_every_layout(tmp_path):
    assert main(["synth", str(tmp_path / "out"), "--cases", "2", "--seed", "100000", "--shape", "8,32,32"]) == 0
    for name in ("dataset.json", "m3d_cap.json", "m3d_vqa.csv", "m3d_refseg.csv"):
        assert (tmp_path / "out" / name).is_file()
    assert len(read_segmentation(tmp_path / "out")) == 2
