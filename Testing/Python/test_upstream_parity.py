"""Faithful to upstream: for one official-format checkpoint (random-weight SAM2.1 hiera-t built from the sam2
package's own config, saved as ``{"model": state_dict}``) and the same frames, our ``SAM2VolumePredictor``
gives the same masks as the sam2 package's ``SAM2VideoPredictor`` for one positive point, a box, a negative
corrective click on a propagated slice, and propagation both ways.

The engine deliberately differs in one place, ``SegmenterConfig.corrections_as_conditioning`` (upstream's
``add_all_frames_to_correct_as_cond``): both settings are compared with upstream configured the same way.
The feature cache is held in fp32 here (the engine's default bf16 cache is a memory saving, checked for
closeness separately), so equality is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from official_sam2 import TINY, write_official_checkpoint

import sam2.sam2_video_predictor as upstream_module
from sam2.build_sam import build_sam2_video_predictor

from medvlsam2.config import SegmenterConfig
from medvlsam2.io.slices import volume_to_frames
from medvlsam2.io.volume import Volume
from medvlsam2.modeling.segmenter import build_segmenter, load_sam2_checkpoint

SIZE = 64
CLICK, CORRECTION, BOX = (30.0, 34.0), (40.0, 30.0), (20.0, 22.0, 44.0, 42.0)  # (x=i, y=j) on 64x64 slices
K, K_FIX = 4, 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("parity") / "sam2.1_hiera_tiny.pt", TINY, seed=1)


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    k, j, i = np.mgrid[:8, :64, :64]
    organ = ((k - 4) / 3.2) ** 2 + ((j - 32) / 11) ** 2 + ((i - 32) / 14) ** 2 <= 1
    arr = rng.normal(40, 12, (8, 64, 64)) + 220 * organ
    return volume_to_frames(Volume(arr.astype(np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), SIZE)


@pytest.fixture(scope="module")
def predictors(checkpoint):
    """(ours, upstream) per setting, built once: each test opens fresh states on them."""
    return {as_cond: (ours(checkpoint, as_cond), theirs(checkpoint, as_cond)) for as_cond in (False, True)}


def ours(checkpoint, as_cond: bool, fp32_cache: bool = True):
    pred = build_segmenter(SegmenterConfig(sam2_config=TINY, image_size=SIZE, corrections_as_conditioning=as_cond))
    load_sam2_checkpoint(pred, checkpoint)
    if fp32_cache:
        pred.cache_dtype = torch.float32
    return pred


def theirs(checkpoint, as_cond: bool):
    pred = build_sam2_video_predictor(TINY, ckpt_path=str(checkpoint), device="cpu", mode="eval",
                                      hydra_overrides_extra=[f"++model.image_size={SIZE}",
                                                             f"++model.add_all_frames_to_correct_as_cond={as_cond}"])
    pred.fill_hole_area = 0  # as the engine (no sam2._C on CPU)
    return pred


def upstream_state(pred, frames):
    """Upstream ``init_state`` on the same in-memory frames (its JPEG loader replaced by the tensor)."""
    tensor, (h, w) = frames
    original = upstream_module.load_video_frames
    upstream_module.load_video_frames = lambda **_: (tensor, h, w)
    try:
        return pred.init_state(video_path="<frames>")
    finally:
        upstream_module.load_video_frames = original


def propagate_ours(pred, state) -> list[tuple[int, np.ndarray]]:
    return [(k, (m > 0).numpy()) for k, m in pred.propagate(state, None, "both")]


def propagate_theirs(pred, state) -> list[tuple[int, np.ndarray]]:
    out = []
    for reverse in (False, True):
        out += [(k, (m[0, 0] > 0).numpy()) for k, _, m in pred.propagate_in_video(state, reverse=reverse)]
    return out


def run(pred, state, propagate, prompt: dict) -> list[tuple[str, int, np.ndarray]]:
    """The protocol: prompt slice K, propagate both ways, a negative click on propagated slice K_FIX,
    propagate again. Returns (step, slice, mask) for every mask produced, in order."""
    with torch.inference_mode():
        out = [("prompt", K, (pred.add_new_points_or_box(state, K, 1, **prompt)[2][0, 0] > 0).numpy())]
        out += [("propagate", k, m) for k, m in propagate(pred, state)]
        fix = pred.add_new_points_or_box(state, K_FIX, 1, points=[CORRECTION], labels=[0], clear_old_points=False)
        out.append(("correct", K_FIX, (fix[2][0, 0] > 0).numpy()))
        out += [("repropagate", k, m) for k, m in propagate(pred, state)]
    return out


@pytest.mark.parametrize("as_cond", [False, True], ids=["upstream-default", "corrections-as-conditioning"])
@pytest.mark.parametrize("prompt", [dict(points=[CLICK], labels=[1]), dict(box=BOX)], ids=["point", "box"])
def test_masks_equal_upstream_sam2_video_predictor(predictors, frames, as_cond, prompt):
    a, b = predictors[as_cond]
    mine = run(a, a.init_volume_state(*frames), propagate_ours, prompt)
    state_b = upstream_state(b, frames)
    ref = run(b, state_b, propagate_theirs, prompt)
    assert [(s, k) for s, k, _ in mine] == [(s, k) for s, k, _ in ref]  # same slices, same order, both directions
    assert {k for s, k, _ in ref if s == "propagate"} == set(range(8))
    total = sum(int(m.sum()) for *_, m in ref)
    assert 0 < total < sum(m.size for *_, m in ref)  # masks are neither all empty nor all full: the test can fail
    for (step, k, x), (_, _, y) in zip(mine, ref):
        assert np.array_equal(x, y), f"{step} slice {k}: {int((x != y).sum())} pixels differ"
    corrected = next(m for s, _, m in mine if s == "correct")
    again = [m for s, k, m in mine if s == "repropagate" and k == K_FIX]
    is_cond = K_FIX in state_b["output_dict_per_obj"][0]["cond_frame_outputs"]
    assert is_cond == as_cond
    if as_cond:  # the engine's default: the corrected slice conditions, and re-propagation keeps it as corrected
        assert again and all(np.array_equal(m, corrected) for m in again)


def test_the_bf16_feature_cache_stays_close_to_upstream(checkpoint, predictors, frames):
    a, b = ours(checkpoint, False, fp32_cache=False), predictors[False][1]
    prompt = dict(points=[CLICK], labels=[1])
    mine = [m for *_, m in run(a, a.init_volume_state(*frames), propagate_ours, prompt)]
    ref = [m for *_, m in run(b, upstream_state(b, frames), propagate_theirs, prompt)]
    inter = sum(int((x & y).sum()) for x, y in zip(mine, ref))
    dice = 2 * inter / max(1, sum(int(x.sum()) + int(y.sum()) for x, y in zip(mine, ref)))
    assert dice > 0.98, dice
