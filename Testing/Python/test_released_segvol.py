"""SegVol: our modules have exactly the published tensors (475, fixture from the upstream builder), the CLIP
keys are remapped in one place, a random-weight folder in the published layout loads strictly, a wrong file
is refused naming the mismatch, and a text prompt gives a mask in the input grid or an honest not-found."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from released_folders import module_fixtures, phantom, write_segvol_folder
from safetensors.torch import load_file, save_file

from medvlsam2.errors import CheckpointError, InputError
from medvlsam2.io.volume import Volume
from medvlsam2.released import TextSegmenter
from medvlsam2.released.clip_text import PROMPT
from medvlsam2.released.folders import load_segvol, segvol_expected
from medvlsam2.released.keys import to_ours, to_published

FIXTURE = Path(__file__).parent / "fixtures" / "segvol_keys.json"
CLIP_KEY = "model.text_encoder.clip_text_model.text_model.encoder.layers.0.self_attn.q_proj.weight"
MLP_KEY = "model.mask_decoder.transformer.layers.1.mlp.lin2.bias"
PID = "model.text_encoder.clip_text_model.text_model.embeddings.position_ids"


def test_published_layout_matches_the_upstream_builder():
    doc = json.loads(FIXTURE.read_text())
    assert doc["count"] == 475
    ours = segvol_expected(doc["config"], "published config")
    expected = {k: tuple(v) for k, v in doc["shapes"].items()}
    assert sorted(set(ours) ^ set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}


def test_key_renames_are_one_to_one():
    assert to_ours(CLIP_KEY, "model.") == "text_encoder.clip_text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert to_ours(MLP_KEY, "model.") == "mask_decoder.transformer.layers.1.mlp.layers.1.bias"
    for key in json.loads(FIXTURE.read_text())["shapes"]:
        if key != PID:
            assert to_published(to_ours(key, "model."), "model.") == key


folder, model = module_fixtures(write_segvol_folder, load_segvol, "segvol")


def test_every_published_tensor_is_loaded(model, folder):
    assert isinstance(model, TextSegmenter) and model.capabilities == {"text_segmentation"} and not model.referring
    ours = model.net.state_dict()
    for key, value in load_file(str(folder / "model.safetensors")).items():
        if key != PID:
            assert torch.equal(ours[to_ours(key, "model.")], value), key


def _rewrite(folder, tmp_path, change):
    bad = Path(shutil.copytree(folder, tmp_path / "copy"))
    state = load_file(str(bad / "model.safetensors"))
    change(state)
    save_file(state, str(bad / "model.safetensors"))
    return bad


def test_wrong_or_missing_tensors_are_refused(folder, tmp_path):
    bad = _rewrite(folder, tmp_path, lambda s: s.update({CLIP_KEY: torch.zeros(4, 4)}))
    with pytest.raises(CheckpointError, match=f"SegVol's layout.*{CLIP_KEY} has shape \\(4, 4\\)"):
        load_segvol(bad)
    shutil.rmtree(bad)
    bad = _rewrite(folder, tmp_path, lambda s: s.pop(MLP_KEY))
    with pytest.raises(CheckpointError, match=f"missing {MLP_KEY}"):
        load_segvol(bad)
    shutil.rmtree(bad)
    bad = _rewrite(folder, tmp_path, lambda s: s.update({PID: torch.arange(77)[None].flip(-1).contiguous()}))
    with pytest.raises(CheckpointError, match="position_ids is not 0..76"):
        load_segvol(bad)


def test_a_bin_release_is_not_read(folder, tmp_path):
    bad = Path(shutil.copytree(folder, tmp_path / "bin"))
    (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_segvol(bad)


def test_text_tower_pools_the_end_of_text_state(model):
    """Our pooling equals transformers' own CLIP pooling when its config names the same end token."""
    tokens = model.tokenizer([PROMPT.format("liver")], return_tensors="pt")
    clip = model.net.text_encoder.clip_text_model
    assert model.tokenizer.eos_token_id != 2  # 2 would select transformers' legacy argmax pooling
    clip.eos_token_id = model.tokenizer.eos_token_id
    with torch.no_grad():
        pooled = clip(**tokens).pooler_output
        ours = model.text_embedding("liver")
    torch.testing.assert_close(ours, model.net.text_encoder.dim_align(pooled))
    assert tokens["input_ids"][0, -1] == model.tokenizer.eos_token_id



@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]),
                                       np.array([[0.955, -0.296, 0], [0.296, 0.955, 0], [0, 0, 1.0]])],
                         ids=["lps", "ras", "oblique"])
def test_text_prompt_gives_a_mask_in_the_input_grid(model, direction, monkeypatch):
    volume = phantom(direction)
    result = model.segment_target(volume, "liver")
    assert result.name == "liver"
    if result.mask is not None:
        assert result.mask.shape == volume.shape and result.mask.dtype == np.uint8
    # a decoder that marks everything marks the foreground crop, nothing of the air around the body
    monkeypatch.setattr(model.net, "decode", lambda emb, text: torch.ones(1, 1, *model.net.cfg.vit.image_size))
    full = model.segment_target(volume, "liver").mask
    assert full.shape == volume.shape and full[3:15, 8:34, 6:30].all()


def test_empty_mask_is_not_found(model, monkeypatch):
    monkeypatch.setattr(model.net, "decode", lambda emb, text: -torch.ones(1, 1, *model.net.cfg.vit.image_size))
    result = model.segment_target(phantom(np.eye(3)), "spleen")
    assert result.mask is None and result.reason == "SegVol's mask for it is empty"


def test_bad_targets_are_refused(model):
    with pytest.raises(InputError, match="target is empty"):
        model.segment_target(phantom(np.eye(3)), "")
    with pytest.raises(InputError, match="characters"):
        model.segment_target(phantom(np.eye(3)), "x" * 300)


def test_factory_describes_and_loads_the_folder(folder):
    from medvlsam2.factory import describe, load_model
    from medvlsam2.released.segvol import SegVol

    info = describe(str(folder))
    assert (info.kind, info.provenance, info.capabilities) == ("segvol", "random", {"text_segmentation"})
    assert isinstance(load_model(str(folder)), SegVol)
