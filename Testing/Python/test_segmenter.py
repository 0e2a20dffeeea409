"""SAM2 volume predictor: in-memory slices, feature cache, [SEG] token path, cancel, strict checkpoints."""

import numpy as np
import pytest
import torch

from medvlsam2.config import tiny
from medvlsam2.errors import Cancelled, CheckpointError, InputError
from medvlsam2.io.slices import volume_to_frames
from medvlsam2.io.volume import Volume
from medvlsam2.modeling.key_slices import choose_key_slices, probe_slices
from medvlsam2.modeling.segmenter import build_segmenter, load_sam2_checkpoint
from medvlsam2.utils.cancel import CancelToken

K, H, W = 12, 48, 56


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return build_segmenter(tiny().segmenter)


@pytest.fixture(scope="module")
def volume():
    k, j, i = np.mgrid[:K, :H, :W]
    inside = ((k - 6) / 5) ** 2 + ((j - 24) / 12) ** 2 + ((i - 28) / 14) ** 2 < 1
    return Volume(np.where(inside, 200, -100).astype(np.int16), (0.8, 0.8, 2.0))


def new_state(predictor, volume):
    frames, hw = volume_to_frames(volume, predictor.image_size)
    return predictor.init_volume_state(frames, hw)


def test_frames_are_windowed_resized_normalised(volume):
    frames, hw = volume_to_frames(volume, 128)
    assert frames.shape == (K, 3, 128, 128) and hw == (H, W)
    # -100 HU in the abdomen window (40/400) is 0.15; ImageNet-normalised red channel:
    np.testing.assert_allclose(frames[0, 0, 0, 0].item(), (0.15 - 0.485) / 0.229, atol=1e-5)


def test_click_then_propagate_both_ways_with_feature_reuse(predictor, volume):
    state = new_state(predictor, volume)
    _, _, logits = predictor.add_new_points_or_box(state, 6, 1, points=[[28, 24]], labels=[1])
    assert logits.shape == (1, 1, H, W)  # original slice size: masks land on the voxel grid
    seen = [k for k, mask in predictor.propagate(state, 6, direction="both")]
    assert min(seen) == 0 and max(seen) == K - 1 and 6 in seen
    calls = state["feature_cache"].encoder_calls
    predictor.add_new_points_or_box(state, 3, 1, points=[[5, 5]], labels=[0])  # refinement click elsewhere
    list(predictor.propagate(state, 3))
    assert state["feature_cache"].encoder_calls == calls  # every slice was seen: no new image-encoder call


def test_memory_of_stored_slices_alone_runs_in_fp32(predictor, volume, monkeypatch):
    """SAM2 stores each slice's memory in bf16 and relies on CUDA autocast; in fp32 on a CPU a slice whose memory
    holds no object pointer (here: none used at all) must still propagate (it raised a dtype error)."""
    monkeypatch.setattr(predictor, "use_obj_ptrs_in_encoder", False)
    state = new_state(predictor, volume)
    predictor.add_new_points_or_box(state, 6, 1, points=[[28, 24]], labels=[1])
    seen = [k for k, _ in predictor.propagate(state, 6, direction="forward")]
    assert seen[0] == 6 and seen[-1] == K - 1
    assert state["output_dict_per_obj"][0]["non_cond_frame_outputs"][7]["maskmem_features"].dtype == torch.bfloat16


def test_cancel_stops_within_one_slice(predictor, volume):
    state = new_state(predictor, volume)
    predictor.add_new_points_or_box(state, 6, 1, points=[[28, 24]], labels=[1])
    token = CancelToken()
    seen = []
    with pytest.raises(Cancelled):
        for k, _ in predictor.propagate(state, 6, direction="forward", cancel=token):
            seen.append(k)
            token.cancel()
    assert seen == [6]


def test_seg_tokens_reach_the_mask_decoder(predictor, volume):
    torch.manual_seed(1)
    a, b = torch.randn(1, 1, 256), torch.randn(1, 1, 256)
    _, _, mask_a = predictor.add_prompt_tokens(new_state(predictor, volume), 5, 1, a)
    _, _, mask_a2 = predictor.add_prompt_tokens(new_state(predictor, volume), 5, 1, a)
    _, _, mask_b = predictor.add_prompt_tokens(new_state(predictor, volume), 5, 1, b)
    assert torch.equal(mask_a, mask_a2)  # deterministic ...
    assert not torch.allclose(mask_a, mask_b)  # ... and the [SEG] embedding changes the mask
    with pytest.raises(InputError, match="prompt tokens"):
        with predictor.extra_prompt_tokens(torch.randn(1, 128)):
            pass


def test_key_slice_rule():
    assert probe_slices(160) == list(range(4, 160, 10))
    scores = {k: -abs(k - 40) for k in range(160)}
    chosen, probed = choose_key_slices(scores.get, 160, count=2)
    assert chosen[0] == 44 and abs(chosen[1] - chosen[0]) >= 10 and set(probed) == set(probe_slices(160))


def test_official_checkpoint_loads_strictly(predictor, tmp_path):
    sd = {k: v.clone() for k, v in predictor.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "sam2.1_tiny.pt")
    torch.manual_seed(123)
    fresh = build_segmenter(tiny().segmenter)
    load_sam2_checkpoint(fresh, tmp_path / "sam2.1_tiny.pt")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())

    first = sorted(sd)[0]
    torch.save({"model": {k: v for k, v in sd.items() if k != first}}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing key") as err:
        load_sam2_checkpoint(fresh, tmp_path / "missing.pt")
    assert first in str(err.value)
    torch.save({"model": {**sd, "extra.weight": torch.zeros(1)}}, tmp_path / "unexpected.pt")
    with pytest.raises(CheckpointError, match="extra.weight"):
        load_sam2_checkpoint(fresh, tmp_path / "unexpected.pt")


class NotATensor:
    pass


def test_unsafe_or_broken_checkpoints_are_refused(predictor, tmp_path):
    torch.save({"model": {"x": NotATensor()}}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_sam2_checkpoint(predictor, tmp_path / "pickled.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="missing or empty"):
        load_sam2_checkpoint(predictor, tmp_path / "empty.pt")
    torch.save({"model": {"image_encoder.trunk.pos_embed": torch.zeros(3)}}, tmp_path / "other_arch.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_sam2_checkpoint(predictor, tmp_path / "other_arch.pt")
