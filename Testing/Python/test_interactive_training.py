"""The interactive clip builder of stage 2 (SAM2's recipe): box/click starts, edge- and middle-slice starts, k
corrective clicks at error regions decoded from the previous mask logits, object-score weights on an organ's thin
ends, and a few steps lower the loss of a fixed box/click batch."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from medvlsam2.config import tiny  # noqa: E402
from medvlsam2.data.case import CTCase  # noqa: E402
from medvlsam2.io.volume import Volume  # noqa: E402
from medvlsam2.training import losses, stage2  # noqa: E402
from medvlsam2.training.batches import ClickSchedule, plan_step, prepare_case  # noqa: E402
from medvlsam2.training.config import TrainConfig  # noqa: E402

STRUCTURES = {"liver": [1], "kidney": [2]}
SLICES = 20


def spindle_case(seed: int) -> CTCase:
    """20x48x48: a 'liver' ellipsoid on slices 3-15 (thin at both ends) and a 'kidney' on slices 8-13."""
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[:SLICES, :48, :48]
    lab = np.zeros(k.shape, np.uint8)
    lab[((k - 9) / 6.5) ** 2 + ((j - 20) / 12) ** 2 + ((i - 18) / 12) ** 2 < 1] = 1
    lab[((k - 10.5) / 3) ** 2 + ((j - 34) / 5) ** 2 + ((i - 38) / 5) ** 2 < 1] = 2
    hu = np.where(lab == 1, 60, np.where(lab == 2, 160, -100)) + rng.normal(0, 5, lab.shape)
    return CTCase(f"s{seed}", Volume(hu.astype(np.int16), (2.0, 2.0, 5.0)), lab, {1: "liver", 2: "kidney"})


@pytest.fixture(scope="module")
def pool():
    return [prepare_case(spindle_case(s), tiny(), STRUCTURES) for s in range(2)]


def test_schedule_draws_long_clips_edge_and_middle_starts_and_k_corrections(pool):
    clicks = ClickSchedule(clip_len=(8, 10), max_corrections=7, corrected_slices=2, middle_start_rate=0.3,
                           edge_start_rate=0.4)
    plans = [plan_step(0, s, pool, 2, 0, 0, 3, 4, 0, clicks=clicks) for s in range(40)]
    modes, kinds, first_clicks = set(), set(), set()
    for plan in plans:
        lengths = {len(c.slices) for c in plan.interactive}
        assert len(lengths) == 1 and 8 <= lengths.pop() <= 10  # one length per step: the clips batch together
        kinds.add(plan.interactive_kind)
        for clip in plan.interactive:
            held = pool[clip.case].slices_with(clip.target)
            steps = np.diff(clip.slices)
            assert set(steps.tolist()) in ({1}, {-1})  # consecutive slices, one direction
            modes.add(clip.start)
            if clip.start == "edge":  # the organ's first (or last) slice, tracked into the organ
                assert (clip.slices[0], steps[0]) in ((held[0], 1), (held[-1], -1))
            elif clip.start == "middle":
                assert clip.slices[0] == min(held, key=lambda s: abs(s - round((held[0] + held[-1]) / 2)))
            else:
                assert clip.slices[0] in held
        length = len(plan.interactive[0].slices)
        tracked = [t for t in plan.corrections if t > 0]
        assert len(tracked) <= 2 and all(0 < t < length for t in tracked)
        assert all(1 <= n <= 7 for n in plan.corrections.values())
        first_clicks.add(plan.corrections.get(0, 0))
    assert modes == {"inside", "edge", "middle"} and kinds == {"box", "points"}
    assert 0 in first_clicks and max(first_clicks) >= 4  # the box alone and long correction runs both occur
    # the schedule is the config's
    cfg = TrainConfig.from_dict(dict(interactive_clip_len=[8, 10], max_corrections=7, corrected_slices=2,
                                     middle_start_rate=0.3, edge_start_rate=0.4,
                                     datasets=[{"reader": "synthetic", "seeds": [0, 4]}]))
    assert cfg.click_schedule() == clicks
    assert TrainConfig(clip_len=5).click_schedule().clip_len == (5, 5)


def test_first_prompts_are_noised_boxes_or_clicks_inside_the_object():
    masks = torch.zeros(3, 64, 64)
    masks[:, 10:30, 20:50] = 1
    torch.manual_seed(0)
    box = stage2.gt_prompts(masks, "box")
    assert box["point_labels"].tolist() == [[2, 3]] * 3
    corners = box["point_coords"].reshape(3, 4)  # x0, y0, x1, y1; SAM's noise: 10% of the size
    assert torch.all((corners - torch.tensor([20.0, 10.0, 49.0, 29.0])).abs() <= torch.tensor([3.0, 2.0, 3.0, 2.0]))
    click = stage2.gt_prompts(masks, "points")
    assert click["point_labels"].tolist() == [[1]] * 3
    for (x, y), m in zip(click["point_coords"][:, 0].long().tolist(), masks):
        assert m[y, x] == 1


def test_corrective_clicks_land_on_the_error_region():
    gt = torch.zeros(3, 32, 32)
    gt[:, 8:20, 8:20] = 1
    pred = torch.where(gt > 0, 5.0, -5.0)
    pred[0, 25:30, 25:30] = 5.0  # a false-positive blob: a negative click on it
    pred[1, 8:14, 8:20] = -5.0  # half the object missed: a positive click there
    xy, lab = stage2.corrective_clicks(pred, gt)  # row 2 is right: a negative click on the background
    (x0, y0), (x1, y1), (x2, y2) = xy[:, 0].long().tolist()
    assert lab[:, 0].tolist() == [0, 1, 0]
    assert 25 <= x0 < 30 and 25 <= y0 < 30
    assert 8 <= y1 < 14 and 8 <= x1 < 20
    assert gt[2, y2, x2] == 0


def test_thin_ends_weigh_more_in_the_object_score(pool):
    from medvlsam2.training.batches import Clip

    case = pool[0]
    liver = next(t for t in case.present if t.phrase == "liver")
    held = case.slices_with(liver)
    clip = Clip(0, liver, [held[0] - 1, held[0], held[len(held) // 2]])  # absent, thin end, middle
    w = stage2.object_weights(pool, [clip], 3.0)
    assert w.tolist() == [[1.0, 3.0, 1.0]]
    target = case.mask(liver, clip.slices)
    assert target[1].sum() > 0  # the thin end's target is present: its score must stay positive
    low = torch.full((3, 1), -2.0)
    plain = losses.multimask_loss(torch.zeros(3, 3, *target.shape[1:]), torch.zeros(3, 3), low, target)
    weighted = losses.multimask_loss(torch.zeros(3, 3, *target.shape[1:]), torch.zeros(3, 3), low, target,
                                     object_weights=w[0])
    assert weighted["object"] > plain["object"]


def _model():
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.training.loop import _set_modes, set_trainable

    torch.manual_seed(0)
    model = MedVLSAM2.from_config(tiny())
    set_trainable(model, ["segmenter.sam_mask_decoder", "segmenter.sam_prompt_encoder", "segmenter.memory_attention",
                          "segmenter.memory_encoder", "segmenter.obj_ptr_proj"])
    _set_modes(model)
    return model


def test_corrections_refine_from_the_previous_logits_at_error_regions(pool, monkeypatch):
    """Each planned click is one more decode of that slice, fed with the previous low-res logits, at a pixel
    where the mask being corrected is wrong; a corrected tracked slice then conditions later slices."""
    model = _model()
    plan = plan_step(0, 3, pool, 2, 0, 0, 2, 4, 0, clicks=ClickSchedule((8, 8), 3, 2))
    plan.corrections = {0: 2, 3: 3, 6: 1}
    seen, heads = [], []
    clicks_fn, heads_fn = stage2.corrective_clicks, model.segmenter._forward_sam_heads

    def record_clicks(pred, gt):
        xy, lab = clicks_fn(pred, gt)
        seen.append((pred.detach() > 0, gt > 0, xy[:, 0].long(), lab[:, 0]))
        return xy, lab

    def record_heads(**kw):
        points = kw["point_inputs"]
        heads.append((kw["mask_inputs"] is not None, 0 if points is None else points["point_labels"].shape[1]))
        return heads_fn(**kw)

    conds = []
    encode_fn = model.segmenter._encode_memory_in_output

    def record_encode(feats, sizes, points, run, masks, obj, current):
        conds.append(points is not None and current.get("point_inputs") is not None)
        return encode_fn(feats, sizes, points, run, masks, obj, current)

    monkeypatch.setattr(stage2, "corrective_clicks", record_clicks)
    monkeypatch.setattr(model.segmenter, "_forward_sam_heads", record_heads)
    monkeypatch.setattr(model.segmenter, "_encode_memory_in_output", record_encode)
    torch.manual_seed(2)
    prompts = stage2.gt_prompts(torch.stack([pool[c.case].mask(c.target, c.slices[:1])[0] for c in plan.interactive]),
                                "box")
    parts = stage2._clip_losses(model.segmenter, pool, plan.interactive, torch.device("cpu"), None, prompts,
                                plan.corrections)
    assert len(parts) == 8 + 2 + 3 + 1  # one loss per decode
    assert len(seen) == 6
    for pred, gt, xy, lab in seen:
        for row in range(len(xy)):
            x, y = xy[row].tolist()
            p, g = bool(pred[row, y, x]), bool(gt[row, y, x])
            if lab[row] == 1:
                assert g and not p  # a missed pixel
            else:
                assert not g and (p or bool((pred[row] == gt[row]).all()))  # a false alarm (or background if right)
    # corrective decodes: previous logits as mask input; on slice 0 the clicks add to the box (2, 3, 4 points),
    # on tracked slices they come alone (1, 2, 3 and 1)
    corrective = [n for has_mask, n in heads if has_mask]
    assert corrective[:2] == [3, 4] and corrective[2:] == [1, 2, 3, 1]
    assert conds == [True, False, False, True, False, False, True, False]


def test_a_few_steps_lower_the_interactive_loss_on_a_fixed_batch(pool):
    model = _model()
    plan = plan_step(0, 1, pool, 2, 0, 0, 1, 4, 0, clicks=ClickSchedule((4, 4), 2, 1, 0.0, 1.0))
    plan.corrections = {0: 1, 2: 2}  # a box (or click) + 1 correction, memory, 2 clicks on a tracked slice
    assert plan.interactive[0].start == "edge"
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def loss():
        torch.manual_seed(1)  # same box noise and clicks every time: a truly fixed batch
        return stage2.stage2_losses(model, pool, plan, torch.device("cpu"), thin_end_weight=3.0)

    first = float(loss()["loss"])
    for _ in range(3):
        logs = loss()
        opt.zero_grad()
        logs["loss"].backward()
        opt.step()
    assert float(loss()["loss"]) < first
