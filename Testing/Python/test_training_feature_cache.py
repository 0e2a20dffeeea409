"""Training from cached frozen-encoder features (``training.feature_cache``): the same losses and parameter updates
as training from images, the cache rebuilt when the encoder weights change, and clear errors for bad settings."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from medvlsam2.errors import InputError  # noqa: E402
from medvlsam2.factory import load_model  # noqa: E402
from medvlsam2.training.config import TrainConfig  # noqa: E402
from medvlsam2.training.feature_cache import ENCODED_PARTS, MANIFEST, TrainFeatureCache  # noqa: E402
from medvlsam2.training.loop import _prepare, train  # noqa: E402

SYNTHETIC = {"reader": "synthetic", "seeds": [0, 2], "shape": [8, 64, 64]}
TRAINED = ["llm", "projector", "bridge", "segmenter.memory_attention", "segmenter.memory_encoder",
           "segmenter.obj_ptr_proj"]
# SAM2's mask decoder without conv_s0 / conv_s1 (the cache holds their outputs, so cached training freezes them)
DECODER = [f"segmenter.sam_mask_decoder.{m}" for m in ("transformer", "iou_token", "mask_tokens", "obj_score_token",
                                                        "output_upscaling", "output_hypernetworks_mlps",
                                                        "iou_prediction_head", "pred_obj_score_head")]
STEPS = 2


def config(tmp_path, name: str, **kw) -> TrainConfig:
    base = dict(stage=2, model="tiny", output_dir=str(tmp_path / name), max_steps=STEPS, lr=1e-3, warmup_steps=1,
                datasets=[SYNTHETIC], cases_per_step=2, cache_dir=str(tmp_path / "cases"), text_cases=1, seg_clips=1,
                interactive_clips=1, clip_len=2, probes=2, log_every=1, checkpoint_every=100, cpu=True, seed=3,
                trainable=TRAINED + DECODER)
    base.update(kw)
    return TrainConfig.from_dict(base)


def losses(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The initial model, and the model after STEPS steps from images and from an fp32 cache (the cached run lists
    the whole mask decoder: its conv_s0 / conv_s1 must stay frozen)."""
    tmp = tmp_path_factory.mktemp("cache_runs")
    initial = _prepare(config(tmp, "initial"), None)[2].state_dict()
    out = {"initial": initial}
    for name, kw in [("images", {}),
                     ("fp32", dict(feature_cache=str(tmp / "feat32"), feature_cache_dtype="float32",
                                   trainable=TRAINED + ["segmenter.sam_mask_decoder"]))]:
        summary = train(config(tmp, name, **kw), progress=False)
        out[name] = (load_model(summary["final"]).state_dict(), losses(tmp / name), summary)
    out["tmp"] = tmp
    return out


def test_cached_training_equals_training_from_images(runs):
    ref, cached = runs["images"][1], runs["fp32"][1]
    assert [r["step"] for r in cached] == [r["step"] for r in ref] == list(range(1, STEPS + 1))
    for a, b in zip(ref, cached):
        for key in ("loss", "lm", "text_mask", "text_object", "probe_object", "click_mask"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
    start, images, other = runs["initial"], runs["images"][0], runs["fp32"][0]
    gap = total = 0.0
    for key, value in images.items():
        delta = (value - start[key]).float()
        diff = (other[key] - value).float()
        gap, total = gap + float(diff.pow(2).sum()), total + float(delta.pow(2).sum())
        # a tensor moved by more than rounding noise; an attention key bias has no gradient (softmax ignores a shift
        # shared by all keys), so Adam moves it by rounding noise alone, whatever its size
        if delta.norm() > 1e-4 and not key.endswith("k_proj.bias"):
            assert diff.norm() <= 1e-2 * delta.norm(), key
    assert total > 0 and gap ** 0.5 <= 1e-3 * total ** 0.5


def test_cached_training_freezes_the_cached_parts_and_records_the_cache(runs):
    start, cached = runs["initial"], runs["fp32"][0]
    for part in ENCODED_PARTS:
        keys = [k for k in start if k.startswith(part + ".")]
        assert keys and all(torch.equal(cached[k], start[k]) for k in keys), part
    assert not torch.equal(cached["segmenter.sam_mask_decoder.iou_token.weight"],
                           start["segmenter.sam_mask_decoder.iou_token.weight"])
    stats = runs["fp32"][2]["feature_cache"]
    assert stats["cases"] == stats["encoded"] == 2 and stats["mean_case_mb"] > 0


def test_the_cache_is_reused_and_rebuilt_when_the_encoder_weights_change(runs, tmp_path):
    folder = tmp_path / "feat16"
    cfg = config(tmp_path, "again", feature_cache=str(folder))
    _, data, model = _prepare(cfg, None)
    cache = TrainFeatureCache(folder, model, "float16")
    assert cache.build(model, data)["encoded"] == 2
    key = data.case_key(0, 0)
    # fp16 storage: the fp32 cache's features (same weights, the fixture's run) within fp16 rounding
    exact = TrainFeatureCache(runs["tmp"] / "feat32", model, "float32")
    assert exact.dropped == 0 and key in exact
    half, full = cache.read(key, [1, 5]), exact.read(key, [1, 5])
    for a, b in zip(half.levels + [dict(enumerate(half.patches))], full.levels + [dict(enumerate(full.patches))]):
        for k in b:
            assert a[k].dtype == torch.float16 and torch.allclose(a[k].float(), b[k], rtol=2e-3, atol=2e-3)
    assert TrainFeatureCache(folder, model, "float16").build(model, data)["encoded"] == 0  # same weights: reused
    before = cache.read(key, [2]).levels[0][2].clone()
    with torch.no_grad():
        model.segmenter.image_encoder.trunk.patch_embed.proj.weight.mul_(1.5)
    changed = TrainFeatureCache(folder, model, "float16")
    assert changed.fingerprint != cache.fingerprint and changed.dropped == 2 and key not in changed
    assert changed.build(model, data)["encoded"] == 2
    with pytest.raises(InputError, match="other encoder weights"):  # a reader of the old weights
        cache.read(key, [2])
    after = changed.read(key, [2]).levels[0][2]
    assert not torch.allclose(after.float(), before.float(), atol=1e-3)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["fingerprint"] == changed.fingerprint and len(manifest["entries"]) == 2
    # the 3D encoder's weights count as well
    with torch.no_grad():
        next(model.vision_encoder.parameters()).add_(0.01)
    assert TrainFeatureCache(folder, model, "float16").dropped == 2


def test_bad_feature_cache_settings_fail_clearly(tmp_path):
    with pytest.raises(InputError, match="cached encoders stay frozen.*vision_encoder"):
        config(tmp_path, "x", feature_cache=str(tmp_path / "f"), trainable=["llm", "vision_encoder"])
    with pytest.raises(InputError, match="cached encoders stay frozen.*segmenter"):
        config(tmp_path, "x", feature_cache=str(tmp_path / "f"), trainable=["segmenter"])
    with pytest.raises(InputError, match="feature_cache_dtype"):
        config(tmp_path, "x", feature_cache=str(tmp_path / "f"), feature_cache_dtype="int8")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / MANIFEST).write_text("{not json")
    model = _prepare(config(tmp_path, "x"), None)[2]
    with pytest.raises(InputError, match="not valid JSON"):
        TrainFeatureCache(tmp_path / "f", model)


def test_cached_phantoms_follow_the_generator_version(tmp_path, monkeypatch):
    """The preprocessed-case cache holds a phantom's texts as well: a new generator version (new referring
    templates here) must read the phantoms again rather than train on the old texts."""
    from medvlsam2.data import synthetic

    data = _prepare(config(tmp_path, "v_now"), None)[1]
    before = [r.expression for r in data.case(0, 0).referring]
    monkeypatch.setattr(synthetic, "LESION_TEMPLATES", ["liver lesion seen now"] * 3)
    monkeypatch.setattr(synthetic, "CYST_TEMPLATES", ["{side} kidney cyst seen now"] * 3)
    assert [r.expression for r in _prepare(config(tmp_path, "same"), None)[1].case(0, 0).referring] == before
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    again = _prepare(config(tmp_path, "v_next"), None)[1]
    after = [r.expression for r in again.case(0, 0).referring]
    assert after != before and any("seen now" in e for e in after)
    assert again.case_key(0, 0) != data.case_key(0, 0)  # its cached features are encoded again too
