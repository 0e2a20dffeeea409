"""`medvlsam2 demo` writes every artefact a person checks, with the phantom's geometry."""

import numpy as np
import SimpleITK as sitk
from PIL import Image

from medvlsam2.cli import main
from medvlsam2.cli.common import RANDOM_WARNING
from medvlsam2.cli.demo import COLOURS, DEMO_SEED, overlay_png, overlay_slices
from medvlsam2.data.synthetic import generate_case
from medvlsam2.evaluation.language import held_out_findings


def test_demo_with_random_weights_writes_all_outputs_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--model", "tiny", "--organs", "liver,spleen"]) == 0
    printed = capsys.readouterr()
    assert RANDOM_WARNING in printed.err and "Dice" in printed.out
    mask = sitk.ReadImage(str(out / "masks.nii.gz"))
    case = generate_case(DEMO_SEED, findings=held_out_findings(DEMO_SEED))
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


def test_the_demo_phantom_holds_a_liver_lesion_and_a_renal_cyst_and_the_overlay_cuts_through_them():
    case = generate_case(DEMO_SEED, findings=held_out_findings(DEMO_SEED))
    assert (case.labels == 8).any() and (case.labels == 9).any()  # never a training seed: >= 100000
    masks = {name: np.isin(case.labels, values).astype(np.uint8)
             for name, values in (("liver", (1, 8)), ("liver lesion", (8,)), ("kidney cyst", (9,)))}
    slices = overlay_slices(case.volume, masks)
    assert len(slices) == 3
    for name in ("liver lesion", "kidney cyst"):  # each finding's largest cross-section is shown
        assert int((masks[name] > 0).sum(axis=(1, 2)).argmax()) in slices


def test_a_finding_inside_its_organ_keeps_its_own_colour_in_the_overlay(tmp_path):
    case = generate_case(DEMO_SEED, findings=held_out_findings(DEMO_SEED))
    cyst = (case.labels == 9).astype(np.uint8)
    kidney = np.isin(case.labels, (4, 9)).astype(np.uint8)  # the organ's mask covers its cyst, as a model's may
    png = overlay_png(case.volume, {"left kidney": kidney, "kidney cyst": cyst}, tmp_path / "o.png")
    k = int(cyst.sum(axis=(1, 2)).argmax())
    tile = list(overlay_slices(case.volume, {"left kidney": kidney, "kidney cyst": cyst})).index(k)
    j, i = np.argwhere(cyst[k])[len(np.argwhere(cyst[k])) // 2]
    rgb = np.asarray(Image.open(png))[2 * j, 256 * tile + 2 * i].astype(float)
    # within 40 of the cyst's colour on every channel: the kidney's colour does not swamp it
    assert np.abs(rgb - np.array(COLOURS[1], float)).max() < 40
