"""M3D-LaMed-Phi-3-4B: our modules have exactly the published tensors (fixture generated from the upstream
builders), a random-weight folder in the published layout loads strictly, wrong files are refused naming the
mismatch, and the language rules ([SEG] pick, averaging, "Sorry, there is no X") hold."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from released_folders import SHARDS, module_fixtures, phantom, write_m3d_folder
from safetensors.torch import load_file, save_file

from medvlsam2.errors import Cancelled, CheckpointError, InputError
from medvlsam2.io.volume import Volume
from medvlsam2.released import TargetMask, TextSegmenter
from medvlsam2.released.folders import build_m3d_meta, load_m3d_lamed
from medvlsam2.released.keys import published_shapes, to_ours
from medvlsam2.released.m3d_lamed import SEGMENT_PROMPT
from medvlsam2.released.preprocess import m3d_input, m3d_paste
from medvlsam2.utils.cancel import CancelToken

FIXTURE = Path(__file__).parent / "fixtures" / "m3d_lamed_phi3_4b_keys.json"


def test_published_layout_matches_the_upstream_builder():
    doc = json.loads(FIXTURE.read_text())
    assert doc["count"] == 617
    ours = published_shapes(build_m3d_meta(doc["config"], "published config"))
    expected = {k: tuple(v) for k, v in doc["shapes"].items()}
    assert sorted(set(ours) ^ set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert sum(int(np.prod(s)) for s in ours.values()) == 4_049_101_904


folder, model = module_fixtures(write_m3d_folder, load_m3d_lamed, "m3d")



def test_every_published_tensor_is_loaded(model, folder):
    assert isinstance(model, TextSegmenter)
    assert model.capabilities == {"text_segmentation", "language"} and model.referring
    ours = model.lm.state_dict()
    for shard in SHARDS:
        for key, value in load_file(str(folder / shard)).items():
            assert torch.equal(ours[to_ours(key)], value), key


def _copy(folder, tmp_path):
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_wrong_shape_is_refused_naming_the_key(folder, tmp_path):
    bad = _copy(folder, tmp_path)
    shard = bad / SHARDS[1]
    state = load_file(str(shard))
    key = next(k for k in state if "seg_module.mask_decoder" in k and k.endswith("weight"))
    state[key] = torch.zeros(3, 3)
    save_file(state, str(shard))
    with pytest.raises(CheckpointError, match=f"{key} has shape \\(3, 3\\)"):
        load_m3d_lamed(bad)


def test_missing_and_unexpected_keys_are_named(folder, tmp_path):
    bad = _copy(folder, tmp_path)
    shard = bad / SHARDS[0]
    state = load_file(str(shard))
    gone = sorted(state)[0]
    state["model.norm_cross_attn.weight"] = state.pop(gone)
    save_file(state, str(shard))
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm_cross_attn.weight"] = index["weight_map"].pop(gone)
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"missing {gone}.*unexpected model.norm_cross_attn.weight"):
        load_m3d_lamed(bad)


def test_truncated_shard_is_refused(folder, tmp_path):
    bad = _copy(folder, tmp_path)
    data = (bad / SHARDS[1]).read_bytes()
    (bad / SHARDS[1]).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_m3d_lamed(bad)


def test_other_lamed_designs_are_refused(folder, tmp_path):
    bad = _copy(folder, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    config["mm_projector_type"] = "linear"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="mm_projector_type is 'linear'"):
        load_m3d_lamed(bad)


def test_prompt_is_first_token_then_image_tokens_then_question(model):
    question = SEGMENT_PROMPT.format("liver")
    ids = model.prompt_ids(question).tolist()
    n = model.num_image_tokens
    assert ids[0] == model.tokenizer.bos_token_id and ids[1:1 + n] == [model.image_token_id] * n
    assert model.tokenizer.decode(ids[1 + n:]).strip() == question
    image, _ = model.image_tensor(phantom().array)
    embeds = model.embed(model.prompt_ids(question), image)
    assert embeds.shape[1] == len(ids)
    words = model.lm.model.embed_tokens(torch.tensor(ids))
    assert torch.equal(embeds[0, 0], words[0]) and torch.equal(embeds[0, 1 + n:], words[1 + n:])
    assert not torch.allclose(embeds[0, 1:1 + n], words[1:1 + n])


class Scripted(torch.nn.Module):
    """An lm_head that answers ``ids`` then the end token, whatever the states (the states stay real)."""

    def __init__(self, head, ids, eos):
        super().__init__()
        self.weight, self.ids, self.eos, self.i = head.weight, list(ids) + [eos], eos, 0

    def forward(self, h):
        token = self.ids[min(self.i, len(self.ids) - 1)]
        self.i += 1
        return torch.nn.functional.one_hot(torch.tensor([token]), self.weight.shape[0]).float() * 10


@pytest.fixture
def script(model):
    head = model.lm.lm_head

    def answer(text):
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        model.lm.lm_head = Scripted(head, ids, min(model.eos_ids))
        return ids
    yield answer
    model.lm.lm_head = head


def test_sorry_answer_gives_no_mask_and_the_reason(model, script):
    script("Sorry, there is no liver.")
    result = model.segment_target(phantom(), "liver")
    assert isinstance(result, TargetMask) and result.mask is None and not result.found
    assert result.reason == "the model answered: Sorry, there is no liver."


def _teacher_forced_states(model, image, question, answer_ids):
    ids = torch.cat([model.prompt_ids(question), torch.tensor(answer_ids)])
    with torch.no_grad():
        return model.lm.model(inputs_embeds=model.embed(ids, image)).last_hidden_state[0], len(ids) - len(answer_ids)


def test_seg_state_is_the_state_that_predicts_seg(model, script):
    answer = script("It is [SEG].")
    question = SEGMENT_PROMPT.format("liver")
    image, box = model.image_tensor(phantom().array)
    ids, state = model.answer(image, question)
    assert ids == answer and model.seg_token_id in ids
    full, start = _teacher_forced_states(model, image, question, answer)
    before = start + answer.index(model.seg_token_id) - 1  # the token before [SEG] predicts it
    torch.testing.assert_close(state[0], full[before], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(state[0], full[before + 1], atol=1e-3)


def test_several_seg_are_averaged_and_a_first_token_seg_counts(model, script):
    answer = script("[SEG] and [SEG].")
    question = SEGMENT_PROMPT.format("spleen")
    image, _ = model.image_tensor(phantom().array)
    _, state = model.answer(image, question)
    full, start = _teacher_forced_states(model, image, question, answer)
    positions = [start + i - 1 for i, t in enumerate(answer) if t == model.seg_token_id]
    assert positions[0] == start - 1  # the prompt's last state predicts a first-token [SEG]
    torch.testing.assert_close(state[0], full[positions].mean(dim=0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]),
                                       np.array([[0.955, -0.296, 0], [0.296, 0.955, 0], [0, 0, 1.0]])],
                         ids=["lps", "ras", "oblique"])
def test_seg_answer_gives_a_mask_in_the_input_grid(model, script, direction):
    script("Sure, [SEG].")
    volume = phantom(direction)
    result = model.segment_target(volume, "liver")
    assert result.answer == "Sure, [SEG]."
    _, box = model.image_tensor(volume.array)
    # a random decoder may or may not mark voxels: either a mask in the input grid, zero outside the crop
    # box (the model never saw outside it), or the empty-mask not-found
    if result.mask is not None:
        assert result.mask.shape == volume.shape and result.mask.dtype == np.uint8 and result.mask.any()
        outside = np.ones(volume.shape, bool)
        outside[tuple(slice(a, b) for a, b in zip(box.start, box.stop))] = False
        assert not result.mask[outside].any()
    else:
        assert result.reason == "the model's mask is empty"


def test_paste_puts_logits_back_in_the_crop_box():
    volume = phantom()
    image, box = m3d_input(volume.array, (16, 64, 64))
    assert box.shape == volume.shape and box.start == (3, 8, 6) and box.stop == (15, 34, 30)
    mask = m3d_paste(torch.ones(16, 64, 64), box)
    assert mask.sum() == int(np.prod(box.size)) and mask[3:15, 8:34, 6:30].all()
    assert not m3d_paste(-torch.ones(16, 64, 64), box).any()


def test_ask_streams_the_answer(model, script):
    script("The liver is normal.")
    assert "".join(model.ask(phantom(), "How is the liver?")) == "The liver is normal."


def test_cancel_and_bad_input(model):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        model.segment_target(phantom(), "liver", cancel=token)
    with pytest.raises(InputError, match="target is empty"):
        model.segment_target(phantom(), "  ")
    with pytest.raises(InputError, match="characters"):
        model.segment_target(phantom(), "x" * 600)
    with pytest.raises(InputError, match="single intensity"):
        model.segment_target(Volume(np.zeros((4, 8, 8), np.float32)), "liver")


def test_factory_describes_and_loads_the_folder(folder):
    from medvlsam2.factory import describe, load_model
    from medvlsam2.released.m3d_lamed import M3DLaMed

    info = describe(str(folder))
    assert (info.kind, info.provenance) == ("m3d-lamed", "random")
    assert info.capabilities == {"text_segmentation", "language"}
    model = load_model(str(folder))
    assert isinstance(model, M3DLaMed) and model.provenance == "random"


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    return load_m3d_lamed(write_m3d_folder(tmp_path_factory.mktemp("m3d-taught") / "taught", taught=True))


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0])], ids=["lps", "ras"])
def test_a_taught_tiny_model_segments_or_says_sorry_unscripted(taught, direction):
    volume = phantom(direction, seed=7)
    liver = taught.segment_target(volume, "liver")
    assert liver.answer == "It is [SEG]." and liver.found and liver.mask.shape == volume.shape
    body = np.zeros(volume.shape, bool)
    body[3:15, 8:34, 6:30] = True
    assert (liver.mask.astype(bool) & body).sum() > 0.8 * liver.mask.sum()
    spleen = taught.segment_target(volume, "spleen")
    assert spleen.mask is None and spleen.reason == "the model answered: Sorry, there is no spleen."
