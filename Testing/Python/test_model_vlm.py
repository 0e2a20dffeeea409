"""MedVLSAM2 (tiny): forward pass, [SEG] path into SAM2, streaming + cancel, LoRA, bundles."""

import dataclasses
import json

import pytest
import torch

from medvlsam2.checkpoint import load_bundle, save_bundle
from medvlsam2.factory import load_model
from medvlsam2.config import LLMConfig, VisionConfig, tiny
from medvlsam2.errors import Cancelled, CheckpointError, InputError
from medvlsam2.modeling.medvlsam2 import MedVLSAM2
from medvlsam2.modeling.prompting import build_inputs, seg_answer, segment_question
from medvlsam2.modeling.vision_encoder import build_vision_encoder
from medvlsam2.utils.cancel import CancelToken


def batch(model, n=2):
    ids, labels = build_inputs(model.tokenizer, model.num_image_tokens, segment_question("liver"), seg_answer("liver"))
    torch.manual_seed(1)
    return torch.rand(n, 1, 16, 64, 64), ids.repeat(n, 1), labels.repeat(n, 1)


def test_forward_gives_logits_loss_and_seg_states(model):
    images, ids, labels = batch(model)
    out = model(images, ids, labels=labels)
    assert out.logits.shape == (2, ids.shape[1], len(model.tokenizer))
    assert torch.isfinite(out.loss)
    assert out.seg_hidden.shape == (2, model.llm.config.hidden_size) and out.seg_batch_index.tolist() == [0, 1]
    model.zero_grad()
    (out.loss + model.seg_prompt_tokens(out.seg_hidden).square().mean()).backward()
    for part in (model.projector, model.bridge, model.vision_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    model.zero_grad()


def test_encoders_give_tokens():
    cfg = tiny().vision
    tokens = build_vision_encoder(cfg)(torch.rand(1, 1, *cfg.input_size))
    assert tokens.shape == (1, 64, cfg.hidden_size)  # (16/4) x (64/16) x (64/16) patches
    with pytest.raises(InputError, match="divisible"):
        build_vision_encoder(VisionConfig(input_size=(15, 64, 64), patch_size=(4, 16, 16)))


def test_dcformer_gives_its_two_token_streams():
    """Low (stage 3) and high (stage 4) tokens; their order is checked against Med3DVLM's own code in
    Testing/Benchmarks/med3dvlm_upstream.py."""
    cfg = dataclasses.replace(tiny().vision, kind="dcformer", input_size=(32, 64, 128), channels=(4, 4, 6, 8, 16))
    encoder = build_vision_encoder(cfg).eval()
    assert encoder.output_shapes == [(1 * 2 * 4, 8), (1 * 1 * 2, 16)]
    low, high = encoder(torch.rand(1, 1, 32, 64, 128))
    assert low.shape == (1, 8, 8) and high.shape == (1, 2, 16)


def test_seg_hidden_state_drives_the_sam2_mask_decoder(model):
    """Disconnect the bridge (zero its output layer) and the decoded mask must change."""
    volume_tokens = model.encode_volume(torch.rand(1, 1, 16, 64, 64))
    (_, tokens), = model.text_to_seg_prompts(volume_tokens, "liver", force=True)
    assert tokens.shape == (1, 1, 256)
    seg = model.segmenter
    frames = torch.randn(4, 3, seg.image_size, seg.image_size)

    def decode(prompt_tokens):
        """Mask logits and the decoder's object score (random weights may gate the mask to 'no object')."""
        state = seg.init_volume_state(frames, (32, 32))
        mask = seg.add_prompt_tokens(state, 1, 1, prompt_tokens)[2]
        return mask, seg.object_score(state, 1)

    mask, score = decode(tokens)
    mask_again, score_again = decode(tokens)
    assert torch.equal(mask, mask_again) and score == score_again
    _, score_disconnected = decode(torch.zeros_like(tokens))
    assert abs(score - score_disconnected) > 1e-4


def _seg_state_similarity_after_training(answer) -> float:
    """Cosine of the [SEG] states for "left kidney" and "right kidney" after 20 language-loss steps with
    the chat answer ``answer(target)`` (the same visual tokens for both, as for the two kidneys of one CT)."""
    from medvlsam2.training.batches import text_rows

    torch.manual_seed(0)
    model = MedVLSAM2.from_config(tiny())
    rows = [(segment_question(t), answer(t)) for t in ("left kidney", "right kidney")]
    ids, labels, attn = text_rows(model.tokenizer, model.num_image_tokens, rows)
    visual = torch.randn(1, model.num_image_tokens, model.llm.config.hidden_size).expand(2, -1, -1)
    optimizer = torch.optim.Adam(model.llm.parameters(), lr=2e-3)
    for _ in range(20):
        loss = model(None, ids, attn, labels, visual_tokens=visual).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        left, right = model(None, ids, attn, visual_tokens=visual).seg_hidden
    return float(torch.nn.functional.cosine_similarity(left, right, dim=0))


def test_the_answer_after_seg_makes_its_state_name_the_target():
    """With "It is [SEG] <target>." the next-token loss at [SEG] must tell left from right; with the old
    "It is [SEG]." nothing asks the [SEG] state to differ (the demo model's two kidney states had cosine 0.99999)."""
    named = _seg_state_similarity_after_training(seg_answer)
    unnamed = _seg_state_similarity_after_training(lambda target: "It is [SEG].")
    assert named < 0.95 and unnamed > 0.99, (named, unnamed)


def test_objects_are_named_by_the_words_after_each_seg(model, monkeypatch):
    volume_tokens = model.encode_volume(torch.rand(1, 1, 16, 64, 64))
    answer = model.tokenizer.encode("It is [SEG] liver, and [SEG] spleen.", add_special_tokens=False)
    monkeypatch.setattr(model, "_greedy", lambda *args: iter(answer))
    assert [name for name, _ in model.text_to_seg_prompts(volume_tokens, "liver and spleen")] == ["liver", "spleen"]
    monkeypatch.setattr(model, "_greedy", lambda *args: iter([]))  # no [SEG]: nothing, unless forced (and named so)
    assert model.text_to_seg_prompts(volume_tokens, "left kidney") == []
    (name, tokens), = model.text_to_seg_prompts(volume_tokens, "left kidney", force=True)
    assert name == "left kidney (forced)" and tokens.shape == (1, 1, 256)


def test_streaming_is_incremental_and_cancellable(model):
    visual = model.encode_volume(torch.rand(1, 1, 16, 64, 64))
    pieces = list(model.stream_text(visual, "what is this?", max_new_tokens=6))
    assert 1 <= len(pieces) <= 6 and all(isinstance(p, str) and p for p in pieces)
    token = CancelToken()
    stream = model.stream_text(visual, "what is this?", cancel=token, max_new_tokens=20)
    next(stream)
    token.cancel()
    with pytest.raises(Cancelled):
        next(stream)
    with pytest.raises(InputError, match="empty"):
        list(model.stream_text(visual, "  "))


def test_lora_freezes_the_base_llm():
    cfg = tiny()
    cfg.llm = dataclasses.replace(cfg.llm, lora_r=4)
    lora_model = MedVLSAM2.from_config(cfg)
    trainable = {n for n, p in lora_model.llm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_missing_llm_folder_is_a_clear_error(tmp_path):
    cfg = tiny()
    cfg.llm = LLMConfig(path=str(tmp_path / "no-such-llm"))
    with pytest.raises(InputError, match="config.json"):
        MedVLSAM2.from_config(cfg)


def test_bundle_round_trip_and_wrong_architecture(model, tmp_path):
    images, ids, _ = batch(model, n=1)
    folder = save_bundle(model, tmp_path / "bundle", metadata={"trained_on": "nothing (random)"})
    again = load_model(str(folder))
    with torch.no_grad():
        assert torch.equal(model(images, ids).logits, again(images, ids).logits)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["bridge_hidden"] = 64  # weights no longer fit the declared architecture
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match"):
        load_bundle(folder)
    with pytest.raises(CheckpointError, match="not a MedVL-SAM2 bundle"):
        load_bundle(tmp_path)


def test_local_hugging_face_llm_folder_is_loaded(model, tmp_path):
    """A local HF folder (config.json + weights + tokenizer) becomes the model's LLM, weights intact."""
    folder = tmp_path / "my-llm"
    model.llm.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    cfg = tiny()
    cfg.llm = LLMConfig(path=str(folder))
    loaded = MedVLSAM2.from_config(cfg)
    assert loaded.seg_token_id == model.seg_token_id
    for name, value in model.llm.state_dict().items():
        assert torch.equal(loaded.llm.state_dict()[name], value), name
