"""`medvlsam2 demo` writes every artefact a person checks, with the phantom's geometry."""

import numpy as np
import SimpleITK as sitk
from PIL import Image

from medvlsam2.cli import main
from medvlsam2.cli.common import RANDOM_WARNING
from medvlsam2.data.synthetic import generate_case


def test_demo_with_random_weights_writes_all_outputs_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--model", "tiny", "--organs", "liver,spleen"]) == 0
    printed = capsys.readouterr()
    assert RANDOM_WARNING in printed.err and "Dice" in printed.out
    mask = sitk.ReadImage(str(out / "masks.nii.gz"))
    case = generate_case(100000)
    assert sitk.GetArrayFromImage(mask).shape == case.volume.shape
    assert np.allclose(mask.GetSpacing(), case.volume.spacing) and np.allclose(mask.GetOrigin(), case.volume.origin)
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1, 2}
    assert "Q: " in (out / "answer.txt").read_text(encoding="utf-8") and "A: " in (out / "answer.txt").read_text(encoding="utf-8")
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "not for diagnosis" in report and RANDOM_WARNING in report and case.report in report
    png = Image.open(out / "overlay.png")
    assert png.mode == "RGB" and png.width == 3 * 256


def test_demo_refuses_unknown_organs(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--model", "tiny", "--organs", "brain"]) == 1
    assert "unknown organ" in capsys.readouterr().err
