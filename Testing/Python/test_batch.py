"""`medvlsam2 batch`: every case, a bad case reported without stopping the rest, resumable."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from medvlsam2.cli import main
from medvlsam2.cli.batch import MARKER, list_cases
from medvlsam2.errors import InputError


def _ct(path, seed):
    rng = np.random.default_rng(seed)
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(-200, 200, (4, 32, 32)).astype(np.int16)), str(path))


def test_batch_reports_bad_cases_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    cases = tmp_path / "cases"
    cases.mkdir()
    _ct(cases / "a.nii.gz", 0)
    _ct(cases / "b.nii.gz", 1)
    (cases / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    argv = ["batch", str(cases), "--prompt", "liver", "-o", str(out), "--model", "tiny"]
    assert main(argv) == 1  # one case failed
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["a"]["status"] == rows["b"]["status"] == "ok" and rows["broken"]["status"] == "failed"
    assert rows["broken"]["error"]
    mask = sitk.ReadImage(str(out / "a" / "mask.nii.gz"))
    assert mask.GetSize() == (32, 32, 4)
    assert not (out / "broken" / MARKER).exists()

    stamp = (out / "a" / "mask.nii.gz").stat().st_mtime_ns
    (out / "b" / MARKER).unlink()  # as if the first run was interrupted inside case b
    main(argv)
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["a"]["status"] == "done earlier" and rows["b"]["status"] == "ok"
    assert (out / "a" / "mask.nii.gz").stat().st_mtime_ns == stamp


def test_case_lists_from_csv_and_their_errors(tmp_path):
    _ct(tmp_path / "x.nii.gz", 0)
    (tmp_path / "cases.csv").write_text("case_id,image\npatient_1,x.nii.gz\n")
    assert list_cases(tmp_path / "cases.csv") == [("patient_1", (tmp_path / "x.nii.gz").resolve())]
    (tmp_path / "bad.csv").write_text("path\nx.nii.gz\n")
    with pytest.raises(InputError, match="'image' column"):
        list_cases(tmp_path / "bad.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CT files"):
        list_cases(tmp_path / "empty")


def test_resume_recomputes_a_case_whose_prompts_or_image_changed_and_always_names_its_labels(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("TQDM_DISABLE", "1")
    cases = tmp_path / "cases"
    cases.mkdir()
    _ct(cases / "a.nii.gz", 0)
    _ct(cases / "b.nii.gz", 1)
    out = tmp_path / "out"
    base = ["batch", str(cases), "-o", str(out), "--model", "tiny"]
    main(base + ["--prompt", "liver"])
    assert json.loads((out / "a" / "mask.labels.json").read_text()) == {"1": "liver"}

    main(base + ["--prompt", "liver", "--prompt", "spleen"])  # a changed prompt list: never "done earlier"
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert {r["status"] for r in rows.values()} == {"redone (image, model or prompts changed)"}
    assert json.loads((out / "a" / "mask.labels.json").read_text()) == {"1": "liver", "2": "spleen"}

    main(base + ["--prompt", "liver", "--prompt", "spleen"])  # the same run again: nothing to redo
    assert {r["status"] for r in csv.DictReader(open(out / "summary.csv"))} == {"done earlier"}
    _ct(cases / "b.nii.gz", 7)  # new image content under the same name
    main(base + ["--prompt", "liver", "--prompt", "spleen"])
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["a"]["status"] == "done earlier" and rows["b"]["status"].startswith("redone")
