"""Never confidently wrong, the parts that need no model: the priors table, the mask checks, prompt agreement,
presence calibration, overlapping segments on disk and the report's marks."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from medvlsam2.data.synthetic import STRUCTURE_LABELS, generate_case
from medvlsam2.evaluation.language import held_out_findings
from medvlsam2.io import terminology
from medvlsam2.io.volume import Volume, layer_path, write_segments
from medvlsam2.plausibility import body_mask, box_warning, click_warnings, doubt, prior_for, priors
from medvlsam2.plausibility.presence import (calibration, presence_doubt, presence_kind, rates, roc_auc,
                                             threshold_at_fpr)
from medvlsam2.plausibility.priors import PRIORS_FILE


@pytest.fixture(scope="module")
def case():
    return generate_case(100001, findings=held_out_findings(100001))  # cyst in the left kidney, one liver lesion


def test_every_prior_row_is_a_terminology_code_and_every_value_has_a_source():
    codes = {t.type[1] for t in terminology.TERMS}
    rows = priors()
    assert set(rows) == codes  # one row per structure class the product names
    for row in rows.values():
        assert {"volume_ml", "hu_median"} <= set(row.sources), row.structure
        assert all(len(text) > 30 for text in row.sources.values()), row.structure
        assert row.volume_ml[0] < row.volume_ml[1] and row.hu_median[0] < row.hu_median[1]
        if row.finding:
            assert "within" in row.sources
    raw = json.loads(PRIORS_FILE.read_text())
    assert raw["any_structure"]["sources"].keys() == {"outside_body_max", "hu_median"}


def test_names_find_their_rows_by_code():
    cyst, organ = prior_for("the cyst in the left kidney")
    assert (cyst.structure, organ.structure) == ("Cyst", "Kidney")
    assert prior_for("liver")[0].code == "10200004" and prior_for("liver")[1] is None
    assert prior_for("brain") == (None, None)


def test_true_phantom_structures_pass_every_check(case):
    body = body_mask(case.volume)
    organs = {"liver": np.isin(case.labels, [1, 8]), "left kidney": np.isin(case.labels, [4, 9])}
    for name, values in STRUCTURE_LABELS.items():
        mask = np.isin(case.labels, values)
        if mask.any():
            assert doubt(name, mask, case.volume, organs, body) is None, name
    assert doubt("cyst in the left kidney", case.labels == 9, case.volume, organs, body) is None


def test_a_mask_of_most_of_the_volume_is_withheld_with_its_share(case):
    air_and_all = np.ones(case.volume.shape, bool)
    air_and_all[:, :8] = False
    reason = doubt("right kidney cyst", air_and_all, case.volume)
    assert reason.startswith("'right kidney cyst': 94 % of the volume") and "expected <" in reason


def test_air_wrong_density_wrong_side_and_outside_its_organ_are_each_named(case):
    v = case.volume
    air = np.zeros(v.shape, bool)
    air[10:14, :6, :6] = True  # a corner of air outside the body
    assert "outside the body" in doubt("liver lesion", air, v)
    assert "HU, expected -20..70 HU for fluid density" in doubt("cyst in the left kidney", case.labels == 4, v)
    assert "patient's left side" in doubt("cyst in the right kidney", case.labels == 9, v)
    lesion_in_spleen = case.labels == 2
    reason = doubt("liver lesion", lesion_in_spleen, v, {"liver": np.isin(case.labels, [1, 8])})
    assert "lies in the segmented 'liver'" in reason
    kidneys = {"right kidney": case.labels == 3, "left kidney": np.isin(case.labels, [4, 9])}
    assert doubt("kidney cyst", case.labels == 9, v, kidneys) is None  # no side named: either kidney will do
    assert "segmented 'right kidney', expected" in doubt("kidney cyst", case.labels == 9, v,
                                                          {"right kidney": case.labels == 3})
    in_the_liver = doubt("kidney cyst", case.labels == 8, v, kidneys)  # the liver lesion named a kidney cyst
    assert "segmented 'right kidney' or 'left kidney', expected" in in_the_liver


def test_a_click_the_result_disagrees_with_is_a_warning():
    mask = np.zeros((4, 10, 10), np.uint8)
    mask[1, 2:5, 2:5] = 1
    assert click_warnings(mask, [(3, 3, 1, 1), (8, 8, 1, 0)]) == []
    out = click_warnings(mask, [(8, 8, 1, 1), (3, 3, 1, 0)])
    assert "positive click at (8, 8, 1) is not in the result" in out[0] and "negative click" in out[1]


def test_a_mask_filling_its_box_says_the_box_may_be_too_small():
    mask = np.zeros((6, 20, 20), np.uint8)
    mask[2:4, 4:12, 4:12] = 1
    mask[[1, 4], 7:9, 7:9] = 1  # the object tapers off at the box's first and last slices
    assert box_warning(mask, (2, 2, 14, 14), (1, 4)) is None  # room on every side
    assert "too small" in box_warning(mask, (5, 5, 8, 8), (1, 4))  # the object spills over the box
    mask[1:5, 4:12, 4:12] = 1  # still as large on the end slices: cut by the box's slices
    assert "too short" in box_warning(mask, (2, 2, 14, 14), (1, 4))


def test_presence_threshold_is_chosen_at_the_false_positive_rate():
    absent = list(np.linspace(0, 2, 20))  # 20 absent targets
    present = [1.5, 3, 4, 5, 6]
    scores, labels = absent + present, [False] * 20 + [True] * 5
    t = threshold_at_fpr(scores, labels, 0.05)
    tpr, fpr = rates(scores, labels, t)
    assert fpr <= 0.05 and tpr == 0.8 and 1.89 < t <= 2.0
    assert roc_auc([1, 2, 3], [False, True, True]) == 1.0 and roc_auc([1, 1], [False, True]) == 0.5
    entry = calibration(scores, labels, ["structure"] * 25, 0.05, {"seeds": "20400-20449"})
    organs = entry["kinds"]["structure"]
    assert organs["n_absent"] == 20 and entry["seeds"] == "20400-20449" and organs["fpr"] <= 0.05
    assert "finding" not in entry["kinds"]  # no finding among the calibration targets: none calibrated


def test_findings_get_their_own_presence_threshold():
    """A finding's object scores lie below an organ's: one threshold over both would withhold every true finding."""
    organs, absent_organs = [8.0, 9.0, 7.5, 8.5], [6.0, 5.0]  # "gallbladder" scores high, yet below true organs
    findings, absent_findings = [2.0, 3.0, 2.5], [0.5, -1.0, 1.0]
    scores = organs + absent_organs + findings + absent_findings
    present = [True] * 4 + [False] * 2 + [True] * 3 + [False] * 3
    kinds = [presence_kind(n) for n in ["liver", "spleen", "left kidney", "right kidney", "gallbladder",
                                         "gallbladder", "liver lesion", "hypodense mass in the liver",
                                         "simple left renal cyst", "liver lesion", "kidney cyst", "focal lesion"]]
    assert kinds == ["structure"] * 6 + ["finding"] * 6
    one = threshold_at_fpr(scores, present, 0.05)
    assert rates(findings, [True] * 3, one)[0] == 0.0  # one threshold for all targets withholds every finding
    entry = calibration(scores, present, kinds, 0.05, {})
    assert entry["kinds"]["finding"]["tpr"] == 1.0 and entry["kinds"]["structure"]["tpr"] == 1.0
    model = SimpleNamespace(presence=entry)
    assert presence_doubt(model, "hypodense mass in the liver", {3: 2.0}) is None  # its kind's threshold
    assert "below the calibrated presence threshold" in presence_doubt(model, "gallbladder", {3: 6.0})
    assert "below" in presence_doubt(model, "liver lesion", {3: 1.0})
    legacy = SimpleNamespace(presence={"threshold": 5.0, "fpr": 0.05})  # a bundle calibrated with one threshold
    assert presence_doubt(legacy, "liver lesion", {3: 2.0}) is not None and presence_doubt(legacy, "liver", {0: 6}) is None

    blind = calibration(scores, present[:6] + [True, False, True, False, True, False], kinds, 0.05, {})
    assert blind["kinds"]["finding"]["threshold"] is None  # the score cannot tell these findings apart
    assert "AUROC" in blind["kinds"]["finding"]["not_applied"]
    assert presence_doubt(SimpleNamespace(presence=blind), "liver lesion", {3: -5.0}) is None  # no threshold applies
    assert presence_doubt(SimpleNamespace(presence=blind), "gallbladder", {3: 6.0}) is not None


def test_overlapping_targets_are_all_kept_in_nifti_layers(tmp_path, case):
    import SimpleITK as sitk

    liver, lesion = np.isin(case.labels, [1, 8]), case.labels == 8
    paths = write_segments([liver, lesion], ["liver", "liver lesion"], case.volume, tmp_path / "m.nii.gz")
    assert paths == [tmp_path / "m.nii.gz", layer_path(tmp_path / "m.nii.gz", 1)]
    first, second = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in paths)
    assert ((first == 1) == liver).all() and ((second == 2) == lesion).all()  # every lesion voxel kept
    one = write_segments([liver, case.labels == 2], ["liver", "spleen"], case.volume, tmp_path / "n.nii.gz")
    assert len(one) == 1  # no overlap: one label map, as before


def test_overlapping_segments_round_trip_through_slicers_segmentation_reader(tmp_path, case):
    slicer = pytest.importorskip("slicer")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from slicer_scene import scene_with_logics

    liver, lesion = np.isin(case.labels, [1, 8]), case.labels == 8
    (path,) = write_segments([liver, lesion], ["liver", "liver lesion"], case.volume, tmp_path / "m.seg.nrrd")
    scene = scene_with_logics()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    seg = node.GetSegmentation()
    assert seg.GetNumberOfSegments() == 2 and seg.GetNumberOfLayers() == 2
    counts = {}
    for i in range(2):  # each layer's array holds its segments' label values
        layer = slicer.util.arrayFromSegmentInternalBinaryLabelmap(node, seg.GetNthSegmentID(i))
        counts[seg.GetNthSegment(i).GetName()] = int((layer == seg.GetNthSegment(i).GetLabelValue()).sum())
    assert counts == {"liver": int(liver.sum()), "liver lesion": int(lesion.sum())}
    scene.Clear(1)


def test_the_report_names_its_model_its_warnings_and_marks_an_implausible_row(case):
    from types import SimpleNamespace

    from medvlsam2.report.writer import draft_report

    model = SimpleNamespace(description="MedVL-SAM2 demo weights", provenance="phantom-trained")
    air_lesion = case.volume.array < -500  # like the demo weights' "liver lesion": 7522 mL at -716 HU
    text = draft_report("The liver is normal.", case.volume, {"liver lesion": air_lesion, "liver": case.labels == 1},
                        model=model, warnings=["not measured: 'spleen': no slice scored above the gate"])
    head = text.split("## Findings")[0]
    assert "Made by: MedVL-SAM2 demo weights (phantom-trained; trained on synthetic phantoms only" in head
    assert "'spleen': no slice scored above the gate" in head
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| ⚠ liver lesion |") for r in rows) and any(r.startswith("| liver |") for r in rows)
    assert "⚠ implausible, do not use: 'liver lesion'" in text


def test_the_report_file_carries_the_out_of_domain_warning():
    from types import SimpleNamespace

    from medvlsam2.report.writer import draft_report

    head = Volume(np.full((40, 160, 160), -1000, np.int16), (0.957, 0.957, 1.5))
    head.array[:, 30:130, 30:130] = 1200  # dense bone: unlike any phantom
    text = draft_report("Both kidneys are normal.", head, model=SimpleNamespace(description="demo",
                                                                               provenance="phantom-trained"))
    assert "trained only on synthetic abdominal phantoms" in text.split("## Findings")[0]


def test_a_finding_named_hypodense_must_be_darker_than_the_tissue_around_it(case):
    body = body_mask(case.volume)
    lesion, cyst = case.labels == 8, case.labels == 9
    assert doubt("liver hypodensity", lesion, case.volume, None, body) is None  # 20 HU in a 60 HU liver
    assert doubt("left kidney hypodensity", cyst, case.volume, None, body) is None
    whole = doubt("left kidney hypodensity", case.labels == 4, case.volume, None, body)  # the kidney itself
    assert "not darker than the tissue around it" in whole
    assert "not darker" in doubt("liver hypodensity", np.isin(case.labels, [1, 8]), case.volume, None, body)
    assert doubt("liver mass", np.isin(case.labels, [1, 8]), case.volume, None, body) is None  # not named dark


def test_a_finding_must_differ_from_the_tissue_around_it(case):
    """A "lesion" drawn on plain liver marks nothing the CT shows; the true lesion (about 30 HU darker) passes."""
    from scipy import ndimage

    body = body_mask(case.volume)
    lesion, liver = case.labels == 8, case.labels == 1
    assert doubt("liver lesion", lesion, case.volume, None, body) is None
    deep = ndimage.binary_erosion(liver, np.ones((1, 9, 9), bool)) & ~ndimage.binary_dilation(lesion, iterations=6)
    k, j, i = np.argwhere(deep)[len(np.argwhere(deep)) // 2]
    blob = np.zeros_like(lesion)
    blob[k, j - 2:j + 3, i - 2:i + 3] = True  # a 5x5-voxel patch of parenchyma
    reason = doubt("liver lesion", blob, case.volume, None, body)
    assert "of the tissue around it" in reason and "a focal finding differs" in reason
    assert "within 10 HU" in doubt("focal lesion of the liver", blob, case.volume, None, body)
    raw = json.loads(PRIORS_FILE.read_text())
    assert "not a published cut-off" in raw["focal_finding"]["sources"]["min_contrast_hu"]  # says what it is


def test_the_demo_bundle_says_how_it_decides_presence_and_on_which_data():
    """Either a calibrated presence threshold, or why there is none and the per-slice gate chosen instead; the
    calibration phantoms are neither trained on nor test phantoms."""
    from medvlsam2.cli.evaluate import parse_seeds
    from medvlsam2.data import HELD_OUT_FIRST_SEED
    from medvlsam2.resources import resource_path

    folder = resource_path("DemoWeights", must_exist=True)
    meta = json.loads((folder / "metadata.json").read_text())
    trained = max(stage["train_seeds"][1] for stage in meta["training"] if "train_seeds" in stage)
    if "presence" in meta:
        entry = meta["presence"]
        assert entry["kinds"]
        for kind in entry["kinds"].values():  # each kind calibrated, or why its threshold is not applied
            assert kind["n_present"] > 0 and kind["n_absent"] > 0
            assert kind["fpr"] <= entry["target_fpr"] if kind["threshold"] is not None else "AUROC" in kind["not_applied"]
        seeds = parse_seeds(entry["seeds"])
    else:
        assert "withhold every finding" in meta["presence_not_stored"]
        gate = json.loads((folder / "config.json").read_text())["segmenter"]["stop_score"]
        chosen = [s["calibrated"] for s in meta["training"] if "calibrated" in s and "stop_score" in s["calibrated"]]
        assert chosen and f"stop_score {gate:g}" in chosen[-1]
        seeds = parse_seeds(re.search(r"phantoms (\d+-\d+)", chosen[-1]).group(1))
    assert min(seeds) >= trained and max(seeds) < HELD_OUT_FIRST_SEED  # neither trained on nor a test seed


def test_a_sided_finding_with_pieces_on_both_sides_is_on_the_wrong_side(case):
    """Held-out cysts asked on the wrong side were delivered as masks holding the true cyst and part of the other
    kidney: their centre lay near the midline, so a centre-only check passed them."""
    from medvlsam2.plausibility.checks import body_mask, centroid_x_mm

    v = case.volume
    cyst = case.labels == 9  # this phantom's cyst lies in the left kidney
    right = np.argwhere(case.labels == 3)
    both = cyst.copy()
    for k, j, i in right[np.linspace(0, len(right) - 1, int(cyst.sum())).astype(int)]:
        both[k, j, i] = True  # as much again in the right kidney
    assert abs(centroid_x_mm(v, both) - centroid_x_mm(v, body_mask(v))) < 10  # the centre: on the midline
    assert "50 % of it lies on the patient's right side" in doubt("left kidney cyst", both, v)
    assert "of it lies on the patient's left side" in doubt("right kidney cyst", both, v)
    assert doubt("left kidney cyst", cyst, v) is None


def test_a_finding_of_two_voxels_is_a_speck_and_withheld(case):
    """A held-out phantom without a cyst had "cystic lesion of the right kidney" delivered as 2 voxels; the report
    already counted no such speck as a finding."""
    v = case.volume
    two = np.zeros(v.shape, bool)
    for k, j, i in np.argwhere(case.labels == 9)[:2]:
        two[k, j, i] = True
    assert doubt("left kidney cyst", two, v) == "'left kidney cyst': 2 voxels, a speck, not a finding"
    assert doubt("left kidney", two, v) != "'left kidney': 2 voxels, a speck, not a finding"  # organs: their own size rule
