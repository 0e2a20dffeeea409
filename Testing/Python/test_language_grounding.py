"""Issue 14: measurements, findings, contradictions, multi-target and absent text prompts, region input."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medvlsam2.cli import main
from medvlsam2.config import tiny
from medvlsam2.data.synthetic import CYST_TEMPLATES, LESION_TEMPLATES, Findings, _report
from medvlsam2.errors import CapabilityError, InputError
from medvlsam2.evaluation.language import HELD_OUT_TEMPLATES, held_out_findings
from medvlsam2.io.volume import Volume
from medvlsam2.modeling.medvlsam2 import MedVLSAM2
from medvlsam2.modeling.segmenter import SAM2VolumePredictor
from medvlsam2.modeling.prompting import (REGION_TOKEN, build_inputs, no_object_answer, region_question, seg_answer,
                                          split_targets)
from medvlsam2.report.findings import contradictions, extract_findings, positive_findings
from medvlsam2.report.measurements import measure
from medvlsam2.report.writer import draft_report
from medvlsam2.session import Session

from phantoms import ellipsoid_volume


@pytest.fixture(scope="module")
def model():
    import dataclasses

    torch.manual_seed(0)
    return MedVLSAM2.from_config(dataclasses.replace(tiny(), region_input=True)).eval()


def _box_volume():
    """A 3 x 4 x 7 voxel box (k, j, i) at anisotropic spacing (i, j, k) = (0.5, 2, 3) mm, HU 0..83."""
    hu = np.full((6, 20, 30), -100, np.int16)
    mask = np.zeros(hu.shape, np.uint8)
    mask[1:4, 2:6, 3:10] = 1
    hu[mask > 0] = np.arange(int(mask.sum()))
    return Volume(hu, spacing=(0.5, 2.0, 3.0)), mask


def test_measurements_match_hand_computed_values_with_anisotropic_spacing():
    volume, mask = _box_volume()
    (m,) = measure({"box": mask, "empty": np.zeros_like(mask)}, volume)  # an empty segment is skipped
    values = np.arange(84, dtype=float)
    assert m.voxels == 84 and m.volume_ml == pytest.approx(84 * 0.5 * 2.0 * 3.0 / 1000)
    assert m.mean_hu == pytest.approx(values.mean()) and m.sd_hu == pytest.approx(values.std(ddof=1))
    # between voxel centres: 6 x 0.5, 3 x 2 and 2 x 3 mm apart at the extremes
    assert m.max_diameter_mm == pytest.approx(np.sqrt(3.0 ** 2 + 6.0 ** 2 + 6.0 ** 2))
    a, b = 3.0, 6.0  # axial rectangle between voxel centres: diagonal, and width perpendicular to it
    assert m.long_axis_mm == pytest.approx(np.hypot(a, b))
    assert m.short_axis_mm == pytest.approx(2 * a * b / np.hypot(a, b))
    assert m.axial_slice == 1


def test_measurements_reject_a_mask_of_another_shape():
    volume, mask = _box_volume()
    with pytest.raises(InputError, match="shape"):
        measure({"box": mask[:3]}, volume)


@pytest.mark.parametrize("findings", [
    Findings([20.0, 9.0], "left", 24.0, False), Findings([], "right", 13.0, True), Findings([], None, 10.0, False),
    Findings([16.0], None, 10.0, True)])
def test_findings_extractor_reads_every_generator_report(findings):
    rng = np.random.default_rng(3)
    for _ in range(12):  # every template variant
        text = _report(findings, ["right"], 14, rng)
        found = positive_findings(text)
        expected = set()
        if findings.liver_lesions:
            expected.add(("liver lesion", None))
            assert found[("liver lesion", None)].size_mm == round(findings.liver_lesions[0])
        if findings.renal_cyst:
            expected.add(("renal cyst", findings.renal_cyst))
            assert found[("renal cyst", findings.renal_cyst)].size_mm == round(findings.cyst_mm)
        if findings.splenomegaly:
            expected.add(("splenomegaly", None))
        assert set(found) == expected, text


def test_findings_extractor_handles_negation_and_units():
    found = extract_findings("No focal liver lesion is seen. A 1.5 cm cyst in the right kidney. No splenomegaly.")
    assert [(f.kind, f.present) for f in found] == [("liver lesion", False), ("renal cyst", True), ("splenomegaly", False)]
    assert found[1].side == "right" and found[1].size_mm == 15.0


def test_a_statement_contradicting_the_segments_is_flagged_in_the_draft():
    volume, mask = _box_volume()
    text = "No focal liver lesion is seen. The kidneys are unremarkable."
    draft = draft_report(text, volume, {"liver lesion": mask})
    assert "## Measurements" in draft and "| liver lesion | 0.3 |" in draft
    assert "**Contradiction:**" in draft and "No focal liver lesion is seen" in draft
    # a stated size far from the measured long axis (6.7 mm) is flagged; a consistent one is not
    assert contradictions("A 30 mm hypodense liver lesion.", {"liver lesion": 6.7})
    assert not contradictions("A 8 mm hypodense liver lesion.", {"liver lesion": 6.7})
    assert "No generated statement contradicts" in draft_report("A 7 mm liver lesion.", volume, {"liver lesion": mask})


def test_multi_target_prompts_split_into_targets():
    assert split_targets("liver and spleen") == ["liver", "spleen"]
    assert split_targets("the liver\nthe left kidney; spleen, liver.") == ["liver", "left kidney", "spleen"]
    assert split_targets("  ") == []


def test_held_out_phrasings_are_not_training_templates_and_the_mix_is_as_documented():
    assert not set(HELD_OUT_TEMPLATES["lesion"]) & set(LESION_TEMPLATES)
    assert not set(HELD_OUT_TEMPLATES["cyst"]) & set(CYST_TEMPLATES)
    mix = [held_out_findings(s) for s in range(100000, 100020)]
    assert sum(bool(m["liver_lesions"]) for m in mix) == 15 and all(max(m["liver_lesions"], default=15) >= 15 for m in mix)
    assert sum(m["renal_cyst"] is not None for m in mix) == 13 and sum(m["splenomegaly"] for m in mix) == 4


def _scripted(monkeypatch, model, absent: set[str]):
    """The LLM's answer to "Segment the X." is scripted, and the segmenter's presence gate passes (random SAM2
    weights score at random); everything else - bridge, SAM2 masks, writers - is real."""
    def greedy(self, visual, question, cancel, max_new_tokens, region=None):
        target = question[len("Segment the "):-1]
        text = no_object_answer(target) if target in absent else seg_answer(target)
        return iter(self.tokenizer.encode(text, add_special_tokens=False))
    monkeypatch.setattr(MedVLSAM2, "_greedy", greedy)
    monkeypatch.setattr(SAM2VolumePredictor, "object_score_without_memory", lambda self, state, k: 1.0)
    # random SAM2 masks are not anatomy: the priors would withhold them (test_plausibility covers that check)
    monkeypatch.setattr("medvlsam2.plausibility.vet.doubt", lambda *args, **kwargs: None)


def _volume():
    return ellipsoid_volume((8, 32, 32), (4, 16, 16), (3.5, 9, 9), (1.0, 1.0, 2.0))


def test_an_absent_target_gives_no_object_and_says_so(model, monkeypatch):
    _scripted(monkeypatch, model, {"gallbladder"})
    session = Session(model, _volume())
    text = session.segment_text("gallbladder and liver")
    assert [r.name for r in text.found] == ["liver"] and [n.target for n in text.not_found] == ["gallbladder"]
    assert "the model answered that there is no gallbladder" in text.not_found[0].reason
    assert list(session.objects().values()) == ["liver"]


def test_a_target_the_segmenter_sees_on_no_slice_gives_no_object(model, monkeypatch):
    """The LLM answers "[SEG]" for both targets; SAM2 scores "spleen" below its gate on every probe slice."""
    _scripted(monkeypatch, model, set())
    seen = {}
    def score(self, state, k):
        seen[k] = True
        return 2.0 if state is scored["liver"] else -0.5
    scored = {}
    monkeypatch.setattr(SAM2VolumePredictor, "object_score_without_memory", score)
    session = Session(model, _volume())
    add = session.add_object
    def add_object(name=None):
        obj = add(name)
        scored[name] = session._objects[obj].state
        return obj
    session.add_object = add_object
    text = session.segment_text("liver and spleen")
    assert [r.name for r in text.found] == ["liver"] and [n.target for n in text.not_found] == ["spleen"]
    assert "presence gate" in text.not_found[0].reason
    assert list(session.objects().values()) == ["liver"] and len(seen) > 1
    forced = session.segment_text("spleen", force=True)  # force draws it anyway, flagged in its name
    assert [r.name for r in forced.found] == ["spleen (forced)"] and not forced.not_found


def test_segment_cli_writes_every_target_with_names_colours_and_terminology(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    _scripted(monkeypatch, model, {"gallbladder"})
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_volume().to_sitk(), str(ct))
    out = tmp_path / "masks.seg.nrrd"
    argv = ["segment", str(ct), "--prompt", "liver and spleen", "--prompt", "left kidney\ngallbladder", "-o", str(out),
            "--model", "tiny"]
    assert main(argv) in (0, 3)  # 3: random SAM2 weights may leave the masks empty; the files are written either way
    assert "Not found: gallbladder (the model answered that there is no gallbladder)" in capsys.readouterr().err
    names = json.loads((tmp_path / "masks.labels.json").read_text(encoding="utf-8"))
    assert names == {"1": "liver", "2": "spleen", "3": "left kidney"}
    image = sitk.ReadImage(str(out))
    assert [image.GetMetaData(f"Segment{i}_Name") for i in range(3)] == ["liver", "spleen", "left kidney"]
    assert "SCT^10200004^Liver" in image.GetMetaData("Segment0_Tags")
    assert "SCT^7771000^Left" in image.GetMetaData("Segment2_Tags")
    assert len(image.GetMetaData("Segment1_Color").split()) == 3
    _scripted(monkeypatch, model, {"gallbladder"})
    assert main(["segment", str(ct), "--prompt", "gallbladder", "-o", str(tmp_path / "none.nii.gz"), "--model", "tiny"]) == 3
    assert "Not found: gallbladder (the model answered that there is no gallbladder)" in capsys.readouterr().err
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "none.nii.gz"))).any()


def test_the_region_is_model_input_not_words(model):
    """Two regions, one question: identical token ids, different region embeddings, different next-token logits."""
    volume = _volume()
    images = torch.rand(1, 1, *model.config.vision.input_size)
    a = np.zeros(volume.shape, np.uint8)
    a[2:6, 5:15, 5:15] = 1
    b = np.zeros(volume.shape, np.uint8)
    b[1:3, 20:30, 18:28] = 1
    ra, rb = model.encode_region(images, a, volume.spacing), model.encode_region(images, b, volume.spacing)
    assert ra.shape == (1, model.llm.get_input_embeddings().embedding_dim) and not torch.allclose(ra, rb)
    visual = model.encode_volume(images)
    ids, _ = build_inputs(model.tokenizer, visual.shape[1], region_question("What is this?"))
    assert int((ids == model.region_token_id).sum()) == 1
    with torch.no_grad():
        la = model(None, ids[None], visual_tokens=visual, regions=ra).logits[0, -1]
        lb = model(None, ids[None], visual_tokens=visual, regions=rb).logits[0, -1]
    assert not torch.allclose(la, lb)
    with pytest.raises(InputError, match="region"):
        model(None, ids[None], visual_tokens=visual)  # a region placeholder needs its region
    assert REGION_TOKEN in model.tokenizer.convert_ids_to_tokens(ids.tolist())


def test_two_regions_of_one_volume_are_told_apart():
    """Patch tokens of one volume share most of their vector; read as they were, any two regions embedded alike
    (cosine 0.99 for spleen and liver) and the trained model gave every region one answer."""
    from medvlsam2.modeling.region import GEOMETRY, RegionEncoder

    torch.manual_seed(0)
    vision = tiny().vision
    encoder = RegionEncoder(vision, 64)
    patches = 10 * torch.randn(1, 1, vision.hidden_size) + 0.5 * torch.randn(1, 16, vision.hidden_size)
    a, b = torch.zeros(1, 16), torch.zeros(1, 16)
    a[0, :4], b[0, 8:12] = 0.25, 0.25
    # a spleen's and a right kidney's geometry (phantom 20409): alike in scale, both dominated by the volume
    spleen = torch.tensor([[5.13, 0.53, 0.78, 0.90, 0.51, 0.18, 0.41, 0.51, 0.05]])
    kidney = torch.tensor([[4.61, 0.45, 0.56, 0.75, -0.32, 0.27, -0.30, 0.74, 0.07]])
    assert spleen.shape[1] == len(GEOMETRY)
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(encoder(patches, a, spleen), encoder(patches, b, kidney)).item()
    assert cosine < 0.9


def test_asking_about_a_segment_needs_a_model_with_region_input(model):
    import dataclasses

    volume = _volume()
    plain = MedVLSAM2.from_config(tiny()).eval()  # the tiny config has no region encoder
    session = Session(plain, volume)
    with pytest.raises(InputError, match="cannot take a region"):
        session.ask("What is this?", context={"box": (2, 2, 1, 20, 20, 4)})
    pieces = list(Session(model, volume).ask("What is this?", context={"box": (2, 2, 1, 20, 20, 4)}))
    assert all(isinstance(p, str) for p in pieces)


def test_a_region_encoder_never_trained_refuses_instead_of_guessing(model, tmp_path):
    """The shipped bundle's region encoder never saw a region question and answered every region "is of the spleen."."""
    from pathlib import Path

    from medvlsam2.checkpoint import load_bundle, save_bundle

    plain = MedVLSAM2.from_config(tiny()).eval()
    plain.enable_region_input(["lesion"])  # a region encoder added to a trained bundle is untrained
    assert plain.supports_region_input and not plain.region_trained
    with pytest.raises(CapabilityError, match="never trained"):
        Session(plain, _volume()).ask("What is this?", context={"box": (2, 2, 1, 20, 20, 4)})
    save_bundle(plain, tmp_path / "b")
    assert not load_bundle(tmp_path / "b").region_trained  # the bundle says so (the shipped config.json too)
    shipped = json.loads((Path(__file__).parents[2] / "Resources/DemoWeights/config.json").read_text())
    assert shipped["region_input"] and not shipped["region_trained"]
    assert model.region_trained  # a fresh model's region encoder trains with the rest (training marks it trained)


def test_training_rows_teach_absence_regions_and_reshuffled_choices(model):
    from medvlsam2.data.synthetic import STRUCTURE_LABELS, generate_case
    from medvlsam2.training.batches import prepare_case

    case = generate_case(7, shape=(16, 64, 64), spacing=(5.6, 5.6, 10.0),
                         findings={"liver_lesions": [], "renal_cyst": "left", "cyst_mm": 30.0})
    rows = prepare_case(case, model.config, STRUCTURE_LABELS).texts
    answers = {a for r in rows for a in r[1:2]}
    assert "There is no liver lesion." in answers and "It is [SEG] kidney cyst." in answers
    assert not any(a.startswith("It is [SEG]") and "right kidney" in q and "cyst" in q for q, a, *_ in rows)
    regions = [r for r in rows if len(r) == 3]
    assert regions and all(REGION_TOKEN in q for q, _, _ in regions)
    weights, geometry = regions[0][2]()  # computed when a step draws the row (batches.RegionInputs)
    assert weights.sum().item() == pytest.approx(1.0) and geometry.shape == (9,)
    closed = [q for q, *_ in rows if "Choices:" in q and q.startswith("Which kidney")]
    assert len(set(closed)) > 1  # the same question with its choices in other orders
    # absence learnt by the segmenter instead: the LLM grounds every request, no "There is no X." rows
    grounded = prepare_case(case, model.config, STRUCTURE_LABELS, absent_by_segmenter=True).texts
    answers = {a for r in grounded for a in r[1:2]}
    assert "It is [SEG] liver lesion." in answers and not any(a.startswith("There is no") for a in answers)


def test_an_old_bundle_is_upgraded_with_region_input_and_new_words(tmp_path):
    import dataclasses

    from medvlsam2.checkpoint import load_bundle, save_bundle
    from medvlsam2.modeling.tokenizer import build_tokenizer
    from medvlsam2.training.upgrade import upgrade_bundle

    old = MedVLSAM2.from_config(dataclasses.replace(tiny(), region_input=False), build_tokenizer())
    save_bundle(old, tmp_path / "old")
    upgrade_bundle(tmp_path / "old", tmp_path / "new")
    new = load_bundle(tmp_path / "new")
    assert new.supports_region_input and not old.supports_region_input
    ids = new.tokenizer.encode("the hypodensity in the hepatic parenchyma", add_special_tokens=False)
    assert new.tokenizer.unk_token_id not in ids
    fresh = new.state_dict()
    for key, value in old.state_dict().items():  # existing weights are kept (token embeddings grow by new rows)
        if "embed_tokens" in key or "lm_head" in key:
            assert torch.equal(value, fresh[key][:value.shape[0]])
        else:
            assert torch.equal(value, fresh[key]), key


def test_region_answers_report_how_many_distinct_answers_they_were():
    """One constant answer ("... the spleen.") scored the spleens' share of the regions (0.417) and read as progress."""
    from medvlsam2.evaluation.language import language_markdown, summarise_language

    empty = {"referring": [], "multi": [], "absent": [], "closed_shuffled": []}
    regions = [{"question": "What is this?", "answer": "this is the spleen.", "correct": True},
               {"question": "What is this?", "answer": "this is the spleen.", "correct": False},
               {"question": "Is it cystic?", "answer": "no", "correct": True}]
    s = summarise_language([{"language": {**empty, "region": regions}}])
    assert s["region"]["What is this?"] == {"accuracy": 0.5, "n": 2, "distinct_answers": 1}
    assert s["region"]["Is it cystic?"] == {"accuracy": 1.0, "n": 1, "distinct_answers": 1}
    assert '| region input: "What is this?" (1 distinct answers) | 0.500 | 2 |' in language_markdown(s)


@pytest.mark.parametrize("question, reference, answer, right", [
    ("What is this?", "This is a cyst in the left kidney.", "this is a cyst in the left kidney.", True),
    ("What is this?", "This is a cyst in the left kidney.", "this is a cyst in the right kidney.", False),
    ("What is this?", "This is the spleen.", "this is the liver.", False),
    ("Where is it?", "In the right lobe of the liver.", "in the right lobe of the liver.", True),
    ("Where is it?", "In the right lobe of the liver.", "in the left lobe of the liver.", False),
    ("Is it cystic?", "yes", "yes", True), ("Is it cystic?", "yes", "no", False), ("Is it cystic?", "no", "", False),
    ("How large is it?", "It measures 18 mm.", "it measures 22 mm.", True),
    ("How large is it?", "It measures 18 mm.", "it measures 24 mm.", False),
    ("How large is it?", "It measures 18 mm.", "it measures 18 cm.", False),
    ("How large is it?", "It measures 12 cm.", "it measures 13 cm.", True),
    ("How large is it?", "It measures 12 cm.", "it measures 14 cm.", False),
    ("How large is it?", "It measures 12 cm.", "it is large.", False)])
def test_a_region_answer_is_scored_by_its_kind(question, reference, answer, right):
    """Sizes within 5 mm / 1 cm in the reference's unit, yes/no as the first word, other answers by their words."""
    from medvlsam2.evaluation.language import region_correct

    assert region_correct(question, reference, answer) is right
