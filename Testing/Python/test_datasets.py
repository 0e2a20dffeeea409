"""Dataset readers on tiny files the tests write, and their errors on malformed input."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medvlsam2.cli import main
from medvlsam2.data.datasets import (load_image, read_caption_pairs, read_ct_rate, read_dataset, read_m3d_seg,
                                     read_refseg, read_segmentation, read_vqa)
from medvlsam2.data.synthetic import ORGANS, generate_case
from medvlsam2.data.writers import write_dataset
from medvlsam2.errors import InputError

SMALL = dict(shape=(8, 32, 32), spacing=(11.2, 11.2, 20.0))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cases = [generate_case(s, findings={"liver_lesions": [30.0], "renal_cyst": "right", "cyst_mm": 24}, **SMALL)
             for s in (1, 2)]
    return cases, write_dataset(cases, tmp_path_factory.mktemp("synth"), ORGANS)


def test_segmentation_layout_round_trips(written, caplog):
    cases, root = written
    read = read_segmentation(root)
    assert len(read) == 2
    with caplog.at_level("WARNING"):
        case = read[1]
    assert "Hounsfield" not in caplog.text  # label maps are not checked as CT intensities
    assert np.allclose(case.volume.ijk_to_lps(), cases[1].volume.ijk_to_lps())
    assert np.array_equal(case.volume.array, cases[1].volume.array)
    assert np.array_equal(case.labels, cases[1].labels)
    assert case.label_names == cases[1].label_names
    assert np.allclose(case.volume.spacing, SMALL["spacing"])


def test_caption_vqa_and_refseg_layouts(written):
    cases, root = written
    caps = read_caption_pairs(root / "m3d_cap.json")
    assert [c.report for c in caps] == [c.report for c in cases]
    assert [c.case_id for c in caps] == [c.case_id for c in cases] == ["synthetic-1", "synthetic-2"]
    vqa = read_vqa(root / "m3d_vqa.csv")[0]
    assert vqa.vqa_closed == cases[0].vqa_closed and vqa.vqa_open == cases[0].vqa_open
    ref = read_refseg(root / "m3d_refseg.csv")[0]
    moved = root.parent / "index_elsewhere"
    moved.mkdir(exist_ok=True)
    (moved / "vqa.csv").write_bytes((root / "m3d_vqa.csv").read_bytes())
    with pytest.raises(InputError):
        read_vqa(moved / "vqa.csv")[0]
    assert read_vqa(moved / "vqa.csv", root=root)[0].vqa_closed == cases[0].vqa_closed
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
    (tmp_path / "meta.csv").write_text('VolumeName,RescaleSlope,RescaleIntercept,XYSpacing,ZSpacing\n'
                                       'train_1_a_1.nii.gz,1,-1024,"[0.75, 0.8]",1.5\n')
    raw = read_ct_rate(tmp_path / "vols", tmp_path / "reports.csv", tmp_path / "meta.csv")[0]
    assert np.all(raw.volume.array == -1024) and np.allclose(raw.volume.spacing, (0.75, 0.8, 1.5))
    (tmp_path / "meta.csv").write_text("VolumeName,RescaleSlope,RescaleIntercept,XYSpacing,ZSpacing\n"
                                       "train_1_a_1.nii.gz,1,-1024,unknown,1.5\n")
    with pytest.raises(InputError, match="spacing"):
        read_ct_rate(tmp_path / "vols", tmp_path / "reports.csv", tmp_path / "meta.csv")
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
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    meta["training"][0]["label"] = meta["training"][1]["image"].replace("imagesTr", "missing")
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError):
        read_segmentation(tmp_path)[0]


def test_synth_command_writes_every_layout(tmp_path):
    assert main(["synth", str(tmp_path / "out"), "--cases", "2", "--seed", "100000", "--shape", "8,32,32"]) == 0
    for name in ("dataset.json", "m3d_cap.json", "m3d_vqa.csv", "m3d_refseg.csv"):
        assert (tmp_path / "out" / name).is_file()
    assert len(read_segmentation(tmp_path / "out")) == 2


def test_synth_command_forces_findings_and_refuses_bad_ones(tmp_path, capsys):
    args = ["synth", str(tmp_path / "f"), "--cases", "2", "--shape", "8,32,32", "--findings", '{"renal_cyst": "left"}']
    assert main(args) == 0
    cases = read_dataset(tmp_path / "f")
    assert all(9 in c.label_names and "left kidney" in c.report for c in cases)
    assert main(["synth", str(tmp_path / "g"), "--findings", '{"tumour": 1}']) != 0
    assert main(["synth", str(tmp_path / "h"), "--findings", "[1]"]) != 0
    assert main(["synth", str(tmp_path / "i"), "--shape", "4,32,32"]) != 0
    err = capsys.readouterr().err
    assert "tumour" in err and "JSON object" in err and "at least 8" in err
    assert not (tmp_path / "g").exists()


def test_read_dataset_attaches_reports_vqa_and_referring(written):
    cases, root = written
    read = read_dataset(root)
    assert len(read) == 2
    for got, want in zip(read, cases):
        assert got.report == want.report
        assert got.vqa_closed == want.vqa_closed and got.vqa_open == want.vqa_open
        assert got.referring == want.referring
        assert np.array_equal(got.labels, want.labels) and got.case_id == want.case_id
    assert len(read_dataset(root / "m3d_vqa.csv")) == 2 and len(read_dataset(root / "m3d_refseg.csv")) == 2
    assert read_dataset(root / "m3d_cap.json")[0].report == cases[0].report


def test_msd_test_split_and_nnunet_label_names(tmp_path):
    case = generate_case(3, **SMALL)
    (tmp_path / "imagesTs").mkdir()
    (tmp_path / "labelsTr").mkdir()
    sitk.WriteImage(case.volume.to_sitk(), str(tmp_path / "imagesTs" / "a_0.nii.gz"))
    sitk.WriteImage(case.volume.to_sitk(), str(tmp_path / "labelsTr" / "img.nii.gz"))
    labels = case.volume.with_array(case.labels.astype(np.int16))  # write the label map as a volume
    sitk.WriteImage(labels.to_sitk(), str(tmp_path / "labelsTr" / "lab.nii.gz"))
    (tmp_path / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "liver": 1, "spleen": 2},  # nnU-Net v2 direction
        "training": [{"image": "./labelsTr/img.nii.gz", "label": "./labelsTr/lab.nii.gz"}],
        "test": ["./imagesTs/a_0.nii.gz"]}))
    train = read_segmentation(tmp_path)[0]
    assert train.label_names == {1: "liver", 2: "spleen"} and train.mask("spleen").sum() == (case.labels == 2).sum()
    test = read_segmentation(tmp_path, split="test")[0]
    assert test.case_id == "a_0" and test.labels is None


def _write_m3d_seg(root, code="0007", with_names=True):
    from scipy import sparse

    case = generate_case(4, **SMALL)
    k, j, i = case.labels.shape
    folder = root / code / "case_1"
    folder.mkdir(parents=True)
    np.save(folder / "image.npy", case.volume.array.transpose(2, 1, 0)[None].astype(np.float32))
    onehot = np.stack([(case.labels == v).transpose(2, 1, 0) for v in (1, 2)])  # channels: liver, spleen
    mask_name = f"mask_({onehot.shape[0]}, {i}, {j}, {k}).npz"
    sparse.save_npz(folder / mask_name, sparse.csr_matrix(onehot.reshape(onehot.shape[0], -1)))
    meta = {"train": [{"image": f"{code}/case_1/image.npy", "label": f"{code}/case_1/{mask_name}"}]}
    (root / code / f"{code}.json").write_text(json.dumps(meta))
    if with_names:
        (root / "dataset_info.json").write_text(json.dumps({code: ["liver", "spleen"]}))
    return case, root / code


def test_m3d_seg_folder_with_sparse_one_hot_masks(tmp_path):
    case, folder = _write_m3d_seg(tmp_path)
    got = read_dataset(folder)[0]
    assert got.case_id == "case_1" and got.label_names == {1: "liver", 2: "spleen"}
    assert np.array_equal(got.volume.array, case.volume.array)
    assert np.array_equal(got.mask("liver"), case.mask("liver")) and np.array_equal(got.mask("spleen"), case.mask("spleen"))


def test_m3d_seg_errors_say_what_is_wrong(tmp_path):
    _, folder = _write_m3d_seg(tmp_path, with_names=False)
    with pytest.raises(InputError, match="no category names"):
        read_m3d_seg(folder)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"0007": ["liver", "spleen"]}))
    meta = json.loads((folder / "0007.json").read_text(encoding="utf-8"))
    mask = tmp_path / meta["train"][0]["label"]
    mask.rename(mask.with_name("mask.npz"))
    meta["train"][0]["label"] = meta["train"][0]["label"].rsplit("/", 1)[0] + "/mask.npz"
    (folder / "0007.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"mask_\(C, H, W, D\)"):
        read_m3d_seg(folder)[0]


def test_read_dataset_refuses_unknown_layouts(tmp_path):
    with pytest.raises(InputError, match="neither dataset.json"):
        read_dataset(tmp_path)
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="neither an M3D-VQA"):
        read_dataset(tmp_path / "x.csv")
    (tmp_path / "r.csv").write_text("Image,Mask,Mask_ID,Question\na.nii.gz,m.nii.gz,one,the liver\n")
    with pytest.raises(InputError, match="Mask_ID"):
        read_dataset(tmp_path / "r.csv")
    with pytest.raises(InputError, match="does not exist"):
        read_dataset(tmp_path / "missing.txt")


def test_write_case_round_trips_one_case(tmp_path):
    from medvlsam2.data.synthetic import write_case

    case = generate_case(9, findings={"liver_lesions": [], "renal_cyst": "left", "cyst_mm": 24}, **SMALL)
    got = read_dataset(write_case(case, tmp_path / "one"))[0]
    assert got.report == case.report and got.vqa_closed == case.vqa_closed and got.referring == case.referring
    assert got.label_names == case.label_names and 9 in got.label_names and 8 not in got.label_names
    with pytest.raises(ValueError, match="unknown layout"):
        write_case(case, tmp_path / "two", layout="nnunet")


def test_m3d_vqa_rows_are_asked_both_ways(tmp_path):
    header = "Image Path,Text,Question Type,Question,Choice A,Choice B,Choice C,Choice D,Answer,Answer Choice\n"
    (tmp_path / "vqa.csv").write_text(header + "c1/ct.npy,,3,Which organ is abnormal?,Liver,Spleen,Kidney,Lung,Spleen,B\n")
    (tmp_path / "c1").mkdir()
    np.save(tmp_path / "c1" / "ct.npy", np.zeros((1, 4, 8, 8), np.float32))
    case = read_vqa(tmp_path / "vqa.csv")[0]
    assert case.case_id == "c1" and case.vqa_closed[0].target() == "Spleen (B.)"
    assert [(q.question, q.answer) for q in case.vqa_open] == [("Which organ is abnormal?", "Spleen")]
    (tmp_path / "bad.csv").write_text(header + "c1/ct.npy,,3,Which organ?,Liver,Spleen,,,x,C\n")
    with pytest.raises(InputError, match="empty choice"):
        read_vqa(tmp_path / "bad.csv")


def test_caption_errors_and_lazy_loading(written, tmp_path):
    _, root = written
    (tmp_path / "cap.json").write_text(json.dumps({"train": [{"image": "a.nii.gz"}]}))
    with pytest.raises(InputError, match="needs 'image' and 'text'"):
        read_caption_pairs(tmp_path / "cap.json")
    with pytest.raises(InputError, match="no 'validation' list"):
        read_caption_pairs(root / "m3d_cap.json", split="validation")
    # Listing is lazy: missing files only fail when their case is loaded, and say which file.
    (tmp_path / "cap.json").write_text(json.dumps({"train": [{"image": "gone.nii.gz", "text": "gone.txt"}]}))
    cases = read_caption_pairs(tmp_path / "cap.json")
    assert len(cases) == 1
    with pytest.raises(InputError, match="gone.txt"):
        cases[0]
