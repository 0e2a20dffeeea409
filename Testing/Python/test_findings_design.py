"""The design that lets the demo weights see findings (issue 25): the projector's MLP before pooling, the
auxiliary patch-label loss, settings changed on an ``init_from`` bundle, and text objects decoded slice by slice."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("TQDM_DISABLE", "1")

from medvlsam2.config import ProjectorConfig, tiny  # noqa: E402
from medvlsam2.errors import InputError  # noqa: E402
from medvlsam2.factory import load_model  # noqa: E402
from medvlsam2.modeling.projector import Projector  # noqa: E402
from medvlsam2.modeling.region import patch_grid, region_inputs  # noqa: E402
from medvlsam2.report.context import SPLENOMEGALY_CM  # noqa: E402
from medvlsam2.session import Session  # noqa: E402
from medvlsam2.training.batches import patch_presence  # noqa: E402
from medvlsam2.training.config import TrainConfig  # noqa: E402
from medvlsam2.checkpoint import save_bundle  # noqa: E402
from medvlsam2.training.loop import train  # noqa: E402

from phantoms import ellipsoid_volume  # noqa: E402

SYNTHETIC = {"reader": "synthetic", "seeds": [0, 2], "shape": [8, 64, 64]}


def test_the_mlp_first_projector_keeps_a_single_patch_feature_that_pooling_first_averages_away():
    torch.manual_seed(0)
    first = Projector(ProjectorConfig(num_tokens=2, mlp_first=True), 4, 3)
    pooled = Projector(ProjectorConfig(num_tokens=2, mlp_first=False), 4, 3)
    pooled.load_state_dict(first.state_dict())
    x = torch.randn(1, 8, 4)
    pool = lambda t: F.adaptive_avg_pool1d(t.transpose(1, 2), 2).transpose(1, 2)  # noqa: E731
    assert torch.allclose(first(x), pool(first.proj(x)), atol=1e-6)
    assert torch.allclose(pooled(x), pooled.proj(pool(x)), atol=1e-6)
    assert not torch.allclose(first(x), pooled(x), atol=1e-3)
    first.cfg.mlp_first = False  # the projector reads the model's config: an override applies without a rebuild
    assert torch.allclose(first(x), pooled(x), atol=1e-6)


def test_patch_labels_flag_exactly_the_encoder_patches_that_hold_the_label():
    config = tiny()
    d, h, w = patch_grid(config.vision)
    labels = np.zeros((16, 64, 64), np.uint8)
    labels[2:12, 10:40, 8:30] = 1
    labels[5:7, 50:54, 40:44] = 2  # a small finding inside one corner of the grid
    presence = patch_presence(labels, config, 3)
    assert presence.shape == (d * h * w, 3)
    encoder_image = torch.zeros(1, *config.vision.input_size)
    for value in (1, 2):
        weights, _ = region_inputs(labels == value, (1.0, 1.0, 1.0), encoder_image, config.vision)
        # the region encoder pools the same patches (its weights are the region's share of each patch)
        assert torch.equal(presence[:, value - 1] > 0, weights > 0)
    assert presence[:, 2].sum() == 0  # value 3 is absent
    assert 0 < presence[:, 1].sum() < presence[:, 0].sum()


def language_config(tmp_path, name: str, **kw) -> TrainConfig:
    base = dict(stage=1, model="tiny", output_dir=str(tmp_path / name), max_steps=2, lr=1e-3, warmup_steps=1,
                datasets=[SYNTHETIC], cases_per_step=2, cache_dir=str(tmp_path / "cases"), text_cases=2, log_every=1,
                checkpoint_every=100, cpu=True, seed=3, trainable=["vision_encoder", "projector", "llm"])
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_the_patch_label_loss_trains_the_encoder_and_stays_out_of_the_bundle(tmp_path):
    summary = train(language_config(tmp_path, "aux", patch_labels=9, patch_label_weight=2.0), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "aux" / "metrics.jsonl").read_text().splitlines()]
    assert all("patch" in r and r["loss"] > r["lm"] for r in rows)  # the auxiliary term is part of the loss
    plain = train(language_config(tmp_path, "plain"), progress=False)
    aux_model, plain_model = load_model(summary["final"]), load_model(plain["final"])
    assert not any("patch_head" in k for k in aux_model.state_dict())  # training-only head: not in the bundle
    # same data and seed: only the auxiliary loss differs, and it moves the encoder
    a, p = aux_model.vision_encoder.state_dict(), plain_model.vision_encoder.state_dict()
    assert any(not torch.equal(a[k], p[k]) for k in a)
    resumed = train(language_config(tmp_path, "aux", patch_labels=9, patch_label_weight=2.0, max_steps=3),
                    resume=True, progress=False)  # the head's weights and optimizer state come back with the rest
    assert resumed["started_at_step"] == 2 and resumed["steps"] == 3


@pytest.mark.parametrize("kw, words", [
    (dict(stage=2, patch_labels=9), "stage 1"),
    (dict(patch_labels=9, trainable=["llm"]), "vision_encoder"),
    (dict(patch_labels=9, patch_label_weight=0.0), "patch_label_weight"),
    (dict(init_from="x", model_overrides={"vision": {"hidden_size": 8}}), "cannot be changed"),
    (dict(model_overrides={"projector": {"mlp_first": True}}), "init_from"),
])
def test_bad_findings_settings_fail_clearly(tmp_path, kw, words):
    with pytest.raises(InputError, match=words):
        language_config(tmp_path, "bad", **kw).validate()


def test_model_overrides_change_the_init_bundle_and_the_trained_bundle_keeps_them(tmp_path, model):
    bundle = save_bundle(model, tmp_path / "start", {})
    cfg = language_config(tmp_path, "over", init_from=str(bundle), max_steps=1,
                          model_overrides={"projector": {"mlp_first": True}, "segmenter": {"text_decoding": "slices"}})
    trained = load_model(train(cfg, progress=False)["final"])
    assert trained.config.projector.mlp_first and trained.config.segmenter.text_decoding == "slices"
    assert not load_model(bundle).config.projector.mlp_first  # the start bundle itself is untouched


@pytest.fixture
def slices_session(model, monkeypatch, without_priors):
    monkeypatch.setattr(model.config.segmenter, "text_decoding", "slices")
    with Session(model, ellipsoid_volume((6, 32, 32), (3, 16, 16), (2.5, 8, 8), (1.0, 1.0, 2.0))) as session:
        yield session


def test_slices_decoding_keeps_each_slice_whose_score_passes_the_gate(slices_session, monkeypatch):
    from medvlsam2.session.language import without_strays

    session = slices_session
    predictor = session.predictor
    monkeypatch.setattr(session.model.config.segmenter, "stop_score", -1e9)  # every slice passes
    found = session.segment_text("liver", force=True).found
    assert len(found) == 1 and found[0].name == "liver (forced)"
    obj = found[0].object_id
    o = session._objects[obj]
    with predictor.extra_prompt_tokens(o.tokens):
        decoded = np.stack([(predictor.decode_tokens_without_memory(o.state, k)[0] > 0).numpy()
                            for k in range(session.volume.shape[0])])
    # each slice decoded alone, as in training, less the one-slice strays
    assert np.array_equal(session.mask(obj) > 0, without_strays(decoded.astype(np.uint8)) > 0)
    assert len(o.prompts) == 1  # the best slice is the object's prompt: clicks refine from it
    k = o.prompts[0].k
    session.add_points(obj, [(16, 16, k)], [1])
    session.propagate(obj)
    session.undo(obj)
    session.undo(obj)
    session.undo(obj)
    assert not session.mask(obj).any()


def test_slices_decoding_keeps_only_slices_over_the_gate_and_forced_keeps_the_best(slices_session, monkeypatch):
    session = slices_session
    blob = torch.full((32, 32), -5.0)
    blob[12:20, 12:20] = 5.0
    scores = {1: 0.5, 2: 3.0, 4: 1.0}  # slices 1, 2 and 4 show something, 2 most surely; the rest score -3

    def decode(state, k):
        return (blob if k in scores else torch.full((32, 32), -5.0)), scores.get(k, -3.0)

    monkeypatch.setattr(session.predictor, "decode_tokens_without_memory", decode)
    monkeypatch.setattr(type(session.model), "text_to_seg_prompts",
                        lambda self, visual, prompt, cancel=None, force=False: [(prompt, torch.ones(1, 1, 256))])
    cfg = session.model.config.segmenter
    # at gate 0 slice 4 is a one-slice part beside the two-slice one (1-2), a stray (``without_strays``); at 0.8 no
    # part spans two slices, so both stay
    for gate, kept in ((0.0, [1, 2]), (0.8, [2, 4]), (2.0, [2])):
        monkeypatch.setattr(cfg, "stop_score", gate)
        found = session.segment_text("liver").found
        mask = session.mask(found[0].object_id)
        assert np.nonzero(mask.any(axis=(1, 2)))[0].tolist() == kept
        assert session._objects[found[0].object_id].prompts[0].k == 2  # the best slice is the prompted one
        session.remove(found[0].object_id)
    monkeypatch.setattr(cfg, "stop_score", 5.0)
    out = session.segment_text("liver")
    assert not out.found and "presence gate" in out.not_found[0].reason and not session.objects()
    forced = session.segment_text("liver", force=True).found
    assert forced[0].name == "liver (forced)"
    assert np.nonzero(session.mask(forced[0].object_id).any(axis=(1, 2)))[0].tolist() == [2]


def test_slices_decoding_grows_into_overlapping_neighbours_over_the_lower_score():
    """A finding's edge slices score below the gate while their masks continue the centre's: with ``grow_score``
    they are kept while contiguous and overlapping; a slice that does not touch the object, or a gap, stops it."""
    from medvlsam2.session.language import kept_slices

    blob = np.zeros((32, 32), np.uint8)
    blob[12:20, 12:20] = 1
    shifted = np.roll(blob, 10, axis=1)  # no overlap with blob
    masks = {k: blob.copy() for k in range(10)}
    masks[6], masks[8] = shifted, np.zeros_like(blob)
    scores = {0: -1.0, 1: -1.0, 2: -1.2, 3: 1.0, 4: -1.0, 5: -1.0, 6: -1.0, 7: -1.0, 8: -1.0, 9: 2.0}
    assert kept_slices(masks, scores, 0.0, None) == {3, 9}
    # 2-1-0 below slice 3, 4-5 above it; 6 does not overlap 5; 8 is empty, so 7 has no kept neighbour
    assert kept_slices(masks, scores, 0.0, -1.5) == {0, 1, 2, 3, 4, 5, 9}
    assert kept_slices(masks, scores, 0.0, -1.0) == {3, 4, 5, 9}  # slice 2 scores -1.2: the chain below 3 stops
    small = np.zeros_like(blob)
    small[15:17, 15:17] = 1  # inside the blob: overlaps by all of the smaller mask
    masks[4] = small
    assert 4 in kept_slices(masks, scores, 0.0, -1.5)


def test_one_slice_parts_beside_a_deeper_part_are_strays():
    from medvlsam2.session.language import without_strays

    mask = np.zeros((8, 16, 16), np.uint8)
    mask[2:5, 4:8, 4:8] = 1  # the object, on three slices
    mask[3, 12:14, 12:14] = 1  # a bit beside it on one slice, not touching it
    mask[6, 4:6, 4:6] = 1  # a bit on one slice after a gap slice
    cleaned = without_strays(mask)
    assert cleaned.dtype == mask.dtype and cleaned.sum() == 3 * 16 and cleaned[2:5, 4:8, 4:8].all()
    flat = np.zeros_like(mask)
    flat[3, 4:8, 4:8] = flat[5, 12:14, 12:14] = 1  # no part spans two slices: nothing to tell a stray by
    assert np.array_equal(without_strays(flat), flat)


def test_the_findings_sentence_says_what_the_reference_report_says():
    from medvlsam2.data.synthetic import STRUCTURE_LABELS, generate_case
    from medvlsam2.plausibility import body_mask
    from medvlsam2.report.context import context_from_labels, findings_context
    from medvlsam2.report.findings import positive_findings

    for seed, findings in ((5, {"liver_lesions": [22.0, 9.0], "renal_cyst": "left", "cyst_mm": 18.0}),
                           (6, {"liver_lesions": [], "renal_cyst": "right", "cyst_mm": 14.0}),
                           (7, {"liver_lesions": [16.0], "renal_cyst": None})):
        case = generate_case(seed, findings=findings)
        sentence = context_from_labels(case.volume, case.labels)
        ref = positive_findings(case.report)
        lesion = ref.get(("liver lesion", None))
        if lesion:
            count = {1: "one", 2: "two"}[len(findings["liver_lesions"])]
            words = sentence.split()
            at = words.index("mm")
            assert words[0:3] == ["findings", ":", count] and abs(int(words[at - 1]) - lesion.size_mm) <= 2
            assert f"{'right' if 'right lobe' in case.report else 'left'} lobe" in sentence
        else:
            assert "no liver lesion" in sentence
        side = findings["renal_cyst"]
        cyst = ref.get(("renal cyst", side))
        if side:
            size = int(sentence.split("cyst ")[1].split()[0])
            assert f"mm {side} kidney" in sentence and abs(size - cyst.size_mm) <= 2
        else:
            assert "no cyst" in sentence
    for seed, enlarged in ((8, True), (9, False), (10, True), (11, False)):  # the reference masks' spleen, measured
        case = generate_case(seed, findings={"splenomegaly": enlarged})
        masks = {name: np.isin(case.labels, STRUCTURE_LABELS[name]) for name in ("liver", "spleen")}
        measured = findings_context(case.volume, masks, body_mask(case.volume)).spleen_cm
        assert (("splenomegaly", None) in positive_findings(case.report)) == enlarged
        assert (measured >= SPLENOMEGALY_CM) == enlarged, measured
        masks["spleen"][0, 0, 0] = True  # a speck far from the spleen does not stretch it
        assert findings_context(case.volume, masks, body_mask(case.volume)).spleen_cm == measured


def test_a_segmented_lesion_part_on_one_slice_is_not_counted():
    from medvlsam2.data.synthetic import STRUCTURE_LABELS, generate_case
    from medvlsam2.plausibility import body_mask
    from medvlsam2.plausibility.checks import MIN_PART_SLICES
    from medvlsam2.report.context import findings_context

    case = generate_case(7, findings={"liver_lesions": [16.0], "renal_cyst": None})
    masks = {name: np.isin(case.labels, STRUCTURE_LABELS[name]) for name in ("liver", "liver lesion")}
    k, j, i = np.argwhere(masks["liver"] & ~masks["liver lesion"])[0]
    masks["liver lesion"][k, j:j + 3, i:i + 3] = True  # a 9-voxel fragment on one slice, apart from the lesion
    body = body_mask(case.volume)
    assert findings_context(case.volume, masks, body).sentence.startswith("findings : two liver lesions")
    counted = findings_context(case.volume, masks, body, MIN_PART_SLICES)
    assert counted.sentence.startswith("findings : one liver lesion")
    alone = {"liver": masks["liver"], "liver lesion": np.zeros_like(masks["liver"])}
    alone["liver lesion"][k, j:j + 3, i:i + 3] = True
    assert "no liver lesion" in findings_context(case.volume, alone, body, MIN_PART_SLICES).sentence


def test_with_findings_context_training_rows_and_session_questions_read_the_sentence(model, monkeypatch,
                                                                                      without_priors):
    from medvlsam2.data.synthetic import STRUCTURE_LABELS, generate_case
    from medvlsam2.modeling.prompting import REPORT_QUESTION
    from medvlsam2.training.batches import prepare_case

    case = generate_case(5, shape=(16, 64, 64), spacing=(5.6, 5.6, 10.0),
                         findings={"liver_lesions": [30.0], "renal_cyst": "left", "cyst_mm": 20.0})
    monkeypatch.setattr(model.config.llm, "findings_context", True)
    rows = prepare_case(case, model.config, STRUCTURE_LABELS).texts
    report_rows = [q for q, *_ in rows if q.endswith(REPORT_QUESTION)]
    assert report_rows and all(q.startswith("findings : one liver lesion") for q in report_rows)
    assert all(not q.startswith("findings") for q, *_ in rows if q.startswith(("Segment the", "About this region")))
    assert any(q.startswith("findings") and "Choices:" in q for q, *_ in rows)

    asked = []
    monkeypatch.setattr(type(model), "stream_text", lambda self, visual, question, cancel=None, max_new_tokens=None,
                        region=None: iter(asked.append(question) or ["ok"]))
    with Session(model, case.volume) as session:
        mine = session.add_object("mine")
        session.add_points(mine, [(30, 30, 8)], [1])
        before = session.mask(mine)
        calls = []
        real = Session.segment_text
        monkeypatch.setattr(Session, "segment_text", lambda self, *a, **k: calls.append(a[0]) or real(self, *a, **k))
        list(session.ask("Is there a focal liver lesion?"))
        list(session.report())
        assert asked[0].startswith("findings : ") and asked[0].endswith("Is there a focal liver lesion?")
        assert asked[1].startswith("findings : ") and asked[1].endswith(REPORT_QUESTION)
        assert calls == ["liver", "spleen", "liver lesion", "lesion in the liver", "hypodense liver lesion",
                         "kidney cyst"]  # once per Session
        assert session.objects() == {mine: "mine"} and np.array_equal(session.mask(mine), before)


def test_ungated_probes_teach_the_mask_of_a_slice_the_object_score_still_calls_absent():
    from medvlsam2.training import losses

    target = torch.zeros(1, 8, 8)
    target[0, 2:5, 2:5] = 1
    multi = torch.zeros(1, 3, 8, 8, requires_grad=True)
    ious, absent_score = torch.ones(1, 3), torch.tensor([[-2.0]])
    gated = losses.multimask_loss(multi, ious, absent_score, target, every_candidate=True)
    ungated = losses.multimask_loss(multi, ious, absent_score, target, every_candidate=True, gated=False)
    assert gated["mask"] == 0 and ungated["mask"] > 0
    ungated["loss"].backward()
    assert multi.grad.abs().sum() > 0


def test_the_segmenter_hands_out_the_masks_before_sam2_blanks_absent_slices(model):
    seg = model.segmenter
    state = seg.init_volume_state(torch.zeros(2, 3, seg.image_size, seg.image_size), (16, 16))
    with seg.extra_prompt_tokens(torch.ones(1, 1, 256)), seg.ungated_masks() as raw:
        seg.object_score_without_memory(state, 0)
    assert len(raw) == 1 and raw[0][0].dim() == 4 and (raw[0][0] > -1000).all()  # no NO_OBJ_SCORE constants
    seg.object_score_without_memory(state, 1)
    assert len(raw) == 1  # the hook is gone after the block


def test_a_report_states_the_measured_lesion_and_cyst_sizes_whatever_the_model_wrote():
    from medvlsam2.report.context import SegmentedFindings, grounded_stream
    from medvlsam2.report.findings import positive_findings

    found = SegmentedFindings("findings : one liver lesion 20 mm right lobe , cyst 17 mm left kidney .", 20, 17)
    text = ("One hypodense liver lesion, the largest 27 mm in the right lobe. The spleen is enlarged, measuring 1.5 cm. "
            "A 12 mm simple cyst in the left kidney. No other lesion of 3 mm. Impression: liver lesion.")
    pieces = [text[i:i + 4] for i in range(0, len(text), 4)]  # streamed in pieces that cut words and sentences
    out = list(grounded_stream(iter(pieces), found))
    joined = "".join(out)
    facts = positive_findings(joined)
    assert facts[("liver lesion", None)].size_mm == 20 and facts[("renal cyst", "left")].size_mm == 17
    assert "1.5 cm" in joined and "3 mm" in joined  # other sizes and negated sentences are the model's own
    assert len(out) == 5 and joined.replace("20 mm", "27 mm").replace("17 mm", "12 mm") == text
    nothing = SegmentedFindings("findings : no liver lesion , no cyst .")
    assert "".join(grounded_stream(iter(pieces), nothing)) == text  # nothing measured: nothing replaced


@pytest.mark.parametrize("measured_cm, said", [(SPLENOMEGALY_CM - 1, "normal in size"), (SPLENOMEGALY_CM, "enlarged")])
def test_a_report_says_what_the_measured_spleen_is_in_its_findings_and_its_impression(measured_cm, said):
    from medvlsam2.report.context import SegmentedFindings, grounded_stream
    from medvlsam2.report.findings import positive_findings

    found = SegmentedFindings("findings : no liver lesion , no cyst , spleen ...", spleen_cm=measured_cm)
    enlarged = said == "enlarged"
    kidneys = " the kidneys are unremarkable."
    for made_up in ("the spleen is normal in size.", "the spleen is enlarged, measuring 31 cm.", "no splenomegaly."):
        out = "".join(grounded_stream(iter([made_up, kidneys]), found))
        assert out == f"the spleen is {said}.{kidneys}"
        spleen = positive_findings(out).get(("splenomegaly", None))
        assert (spleen is not None) == enlarged and (spleen is None or spleen.size_mm is None)  # no made-up length
    assert "".join(grounded_stream(iter(["The spleen is enlarged."]), found)) == f"The spleen is {said}."
    impressions = {" impression : liver lesion, left renal cyst.": " impression : liver lesion, splenomegaly, left renal cyst.",
                   " impression : no acute abnormality.": " impression : splenomegaly.",
                   " Impression: splenomegaly.": " Impression: no acute abnormality."}
    for made_up, with_spleen in impressions.items():
        out = "".join(grounded_stream(iter([made_up]), found))
        assert (("splenomegaly", None) in positive_findings(out)) == enlarged
        assert out == (with_spleen if enlarged != ("splenomegaly" in made_up) else made_up)


def test_a_question_about_the_spleens_size_is_answered_from_the_measured_spleen(model, monkeypatch):
    import medvlsam2.session.language as language
    from medvlsam2.report.context import SegmentedFindings, measured_answer

    asked = []
    monkeypatch.setattr(type(model), "stream_text", lambda self, visual, question, cancel=None, max_new_tokens=None,
                        region=None: iter(asked.append(question) or ["normal"]))
    closed = "What is the size of the spleen? Choices: A. normal B. absent C. enlarged"
    volume = ellipsoid_volume((6, 32, 32), (3, 16, 16), (2.5, 8, 8), (1.0, 1.0, 2.0))
    for cm, content, letter, yes in ((SPLENOMEGALY_CM, "enlarged", "C", "yes"), (SPLENOMEGALY_CM - 1, "normal", "A", "no")):
        found = SegmentedFindings("findings : no liver lesion , no cyst , spleen ...", spleen_cm=cm)
        monkeypatch.setattr(language, "segmented_findings", lambda session, cancel, found=found: found)
        with Session(model, volume) as session:
            assert "".join(session.ask(closed)) == f"{content} ({letter}.)"
            assert "".join(session.ask("Is the spleen enlarged?")) == yes
            assert "".join(session.ask("Is the spleen normal in size?")) == {"yes": "no", "no": "yes"}[yes]
            assert not asked  # the measurement answered, not the language model
            assert "".join(session.ask("Is there a focal liver lesion?")) == "normal" and len(asked) == 1
            asked.clear()
    unmeasured = SegmentedFindings("findings : no liver lesion , no cyst .")
    assert measured_answer(closed, unmeasured) is None  # no spleen segmented: the language model answers
    assert measured_answer("Which organ is enlarged? Choices: A. liver B. spleen", found) is None
    assert measured_answer("Is the spleen enlarged? Choices: A. atrophic B. absent", found) is None  # no such choice
    monkeypatch.setattr(language, "segmented_findings", lambda session, cancel: None)  # no findings sentence
    with Session(model, volume) as session:
        assert "".join(session.ask(closed)) == "normal (A.)" and len(asked) == 1


def test_an_absent_referring_target_trains_towards_nothing_not_the_background(model):
    from medvlsam2.data.synthetic import STRUCTURE_LABELS, generate_case
    from medvlsam2.training.batches import prepare_case

    case = generate_case(3, shape=(16, 64, 64), spacing=(5.6, 5.6, 10.0),
                         findings={"liver_lesions": [], "renal_cyst": "left", "cyst_mm": 20.0})
    tensors = prepare_case(case, model.config, STRUCTURE_LABELS, absent_by_segmenter=True)
    referring = [t for t in tensors.absent if t.phrase not in STRUCTURE_LABELS]
    assert referring  # "lesion in the liver" without a lesion, "cyst in the right kidney", "gallbladder", ...
    for t in referring:
        assert t.values == () and tensors.slices_with(t) == [] and tensors.mask(t, range(16)).sum() == 0
    cyst = [t for t in tensors.present if t.values == (9,)]
    assert cyst and tensors.mask(cyst[0], range(16)).sum() > 0


def test_answer_finding_kind_names_the_finding_first_whatever_the_phrasing(model):
    """With ``answer_finding_kind`` a finding's phrasing is answered by its kind first, on its own side, present or
    absent; organ synonyms and structure names keep their words; without it every answer repeats the phrase."""
    from medvlsam2.data.synthetic import NEVER_PRESENT, ORGAN_SYNONYMS, STRUCTURE_LABELS, generate_case
    from medvlsam2.modeling.prompting import seg_answer, segment_question
    from medvlsam2.training.batches import prepare_case

    case = generate_case(5, shape=(16, 64, 64), spacing=(5.6, 5.6, 10.0),
                         findings={"liver_lesions": [20.0], "renal_cyst": "left", "cyst_mm": 20.0})
    kind = prepare_case(case, model.config, STRUCTURE_LABELS, absent_by_segmenter=True, answer_finding_kind=True)
    words = prepare_case(case, model.config, STRUCTURE_LABELS, absent_by_segmenter=True)
    named = {t.phrase: t.answer for t in kind.present + kind.absent}
    organs = {n for names in ORGAN_SYNONYMS.values() for n in names} | set(NEVER_PRESENT)
    for ref in case.referring:
        phrase = ref.expression.removeprefix("the ")
        if phrase in organs:
            assert named[phrase] == "", phrase
        elif "kidney" in phrase or "renal" in phrase:
            side = "left" if "left" in phrase else "right" if "right" in phrase else None
            assert named[phrase] == (f"cyst in the {side} kidney" if side else "cyst in the kidney"), phrase
        else:
            assert named[phrase] == "lesion in the liver", phrase
    assert all(named[s] == "" for s in STRUCTURE_LABELS)
    assert any(a.startswith("cyst in the right") for a in named.values())  # the absent other side is named so too
    cyst_phrase = next(p for p, a in named.items() if a == "cyst in the left kidney")
    assert (segment_question(cyst_phrase), seg_answer("cyst in the left kidney")) in kind.texts
    assert (segment_question(cyst_phrase), seg_answer(cyst_phrase)) in words.texts
    assert all(t.answer == "" for t in words.present + words.absent)


def test_closed_answers_come_content_first_and_the_letter_names_the_choice_the_content_does(model, monkeypatch):
    from medvlsam2.data.case import ClosedQA
    from medvlsam2.evaluation.vqa import closed_correct

    qa = ClosedQA("Which kidney has a cyst?", ["both", "left", "neither", "right"], "B")
    assert qa.target() == "left (B.)" and closed_correct(qa.target(), "B")
    again = ClosedQA.from_prompt(qa.prompt())
    assert (again.question, again.choices) == (qa.question, qa.choices)
    assert ClosedQA.from_prompt("What is this?") is None and ClosedQA.from_prompt("Choices: B. x C. y") is None
    assert again.with_letter("left ( C. )") == "left (B.)"  # the content decides; the copied letter was wrong
    assert again.with_letter("C. neither") == "C. neither" and again.with_letter("maybe ( A. )") == "maybe ( A. )"

    pieces = {"closed": ["left", " (", " C.", " )"], "open": ["the", " liver"]}
    monkeypatch.setattr(type(model), "stream_text", lambda self, visual, question, cancel=None, max_new_tokens=None,
                        region=None: iter(pieces["closed" if "Choices:" in question else "open"]))
    vol = ellipsoid_volume((16, 64, 64), (8, 32, 32), (4, 12, 12))
    with Session(model, vol) as session:
        assert list(session.ask(qa.prompt())) == ["left (B.)"]
        assert list(session.ask("What is seen?")) == ["the", " liver"]  # open questions still stream piece by piece


@pytest.mark.parametrize("field,value", [("grow_score", "-2.5"), ("grow_score", float("nan")), ("stop_score", None),
                                         ("stop_score", True)])
def test_a_bundle_config_with_a_gate_that_is_not_a_finite_number_fails_clearly(field, value):
    from medvlsam2.config import ModelConfig, tiny
    from medvlsam2.errors import InputError

    data = tiny().to_dict()
    data["segmenter"][field] = value
    with pytest.raises(InputError, match=f"segmenter {field} must be a finite number"):
        ModelConfig.from_dict(data)
    data["segmenter"][field] = -2.5
    assert getattr(ModelConfig.from_dict(data).segmenter, field) == -2.5


def test_a_finding_in_the_findings_sentence_needs_two_of_its_phrasings(model, monkeypatch, without_priors):
    """One phrasing alone may draw a lesion in a liver without one: the sentence names a lesion where two agree."""
    from types import SimpleNamespace

    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.results import TextResult
    from medvlsam2.session.language import segmented_findings

    case = generate_case(5, shape=(16, 64, 64), spacing=(5.6, 5.6, 10.0),
                         findings={"liver_lesions": [30.0], "renal_cyst": None})
    monkeypatch.setattr(model.config.llm, "findings_context", True)
    lesion = case.labels == 8
    for finders, named in (({"lesion in the liver"}, False), ({"lesion in the liver", "liver lesion"}, True)):
        with Session(model, case.volume) as session:
            def segment_text(self, phrase, cancel=None, finders=finders):
                if phrase not in finders:
                    return TextResult()
                obj = self.add_object(phrase)
                self._objects[obj].mask[:] = lesion
                return TextResult([SimpleNamespace(object_id=obj, name=phrase)])

            monkeypatch.setattr(Session, "segment_text", segment_text)
            sentence = segmented_findings(session, None).sentence
            assert ("one liver lesion" in sentence) is named and ("no liver lesion" in sentence) is not named
            assert not session.objects()
