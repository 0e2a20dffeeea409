"""Med3DVLM, the released 3D CT VLM: a random-weight folder in its published layout (config.json with
model_type "vlm_qwen", safetensors shards with its key names, tokenizer files) at tiny sizes loads strictly
and answers; our paper-size DCFormer + mixer have exactly the released 7B checkpoint's keys and shapes."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from med3dvlm_folder import SHARDS, TINY_FIELDS, write_med3dvlm_folder
from safetensors.torch import load_file, save_file

from medvlsam2.config import paper
from medvlsam2.cli import main
from medvlsam2.report.writer import NOTICE
from medvlsam2.errors import CapabilityError, Cancelled, CheckpointError, InputError
from medvlsam2.modeling.med3dvlm import (CAPTION_PROMPT, PUBLISHED_PREFIXES, SIZE_OVERRIDE, check_folder,
                                         is_dcformer_encoder_folder, is_med3dvlm_folder, load_dcformer_encoder,
                                         load_med3dvlm)
from medvlsam2.factory import load_model
from medvlsam2.modeling.projector import build_projector
from medvlsam2.modeling.prompting import REPORT_QUESTION
from medvlsam2.modeling.vision_encoder import build_vision_encoder
from medvlsam2.session import Session
from medvlsam2.utils.cancel import CancelToken

FIXTURE = Path(__file__).parent / "fixtures" / "med3dvlm_7b_vision_projector.json"

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_med3dvlm_folder(tmp_path_factory.mktemp("m3d") / "Med3DVLM-tiny")


@pytest.fixture(scope="module")
def model(folder):
    return load_med3dvlm(folder)


def _edit_shard(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    for name in SHARDS:
        state = load_file(str(dst / name))
        if edit(state):
            save_file(state, str(dst / name), metadata={"format": "pt"})
    return dst


def test_loads_strictly_with_the_published_keys(folder, model):
    assert is_med3dvlm_folder(folder) and not is_dcformer_encoder_folder(folder) and not is_med3dvlm_folder(folder.parent)
    assert model.capabilities == frozenset({"language"}) and model.provenance == "released"
    assert "Med3DVLM" in model.description and "cannot segment" in model.description
    assert model.vision_input_size == (32, 64, 64) and model.num_image_tokens == 4
    assert model.max_new_tokens == 10 and model.tokenizer.eos_token_id in model.eos_ids  # generation_config.json
    stored = {}
    for name in SHARDS:
        stored.update(load_file(str(folder / name)))
    for part in ("vision_encoder", "projector"):
        ours = getattr(model, part).state_dict()
        prefix = PUBLISHED_PREFIXES[part]
        assert {prefix + k for k in ours} == {k for k in stored if k.startswith(prefix)}
        assert all(torch.equal(v, stored[prefix + k]) for k, v in ours.items())
    assert torch.equal(model.llm.model.layers[1].mlp.down_proj.weight, stored["model.layers.1.mlp.down_proj.weight"])


@pytest.mark.parametrize("key", ["model.vision_tower.vision_tower.encoder.s4.0.dwconv.c2.1.running_var",
                                 "model.mm_projector.high_mixer.1.mlp2.mm_projector.1.1.weight"])
def test_a_missing_vision_or_projector_key_is_refused_by_name(folder, tmp_path, key):
    broken = _edit_shard(folder, tmp_path / "broken", lambda sd: sd.pop(key, None) is not None)
    index = json.loads((broken / "model.safetensors.index.json").read_text(encoding="utf-8"))
    del index["weight_map"][key]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"missing {key.replace('.', '[.]')}"):
        load_med3dvlm(broken)


def test_the_header_check_refuses_a_stray_tensor(folder, tmp_path):
    check_folder(folder)  # the released layout passes
    key = "model.mm_projector.low_mixer.2.ln1.weight"  # a third mixer layer the config does not have
    extra = tmp_path / "extra"
    shutil.copytree(folder, extra)
    save_file({key: torch.ones(4)}, str(extra / "model-extra.safetensors"))
    index = json.loads((extra / "model.safetensors.index.json").read_text(encoding="utf-8"))
    index["weight_map"][key] = "model-extra.safetensors"
    (extra / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"1 unexpected.*unexpected model\.mm_projector\.low_mixer\.2\.ln1\.weight"):
        check_folder(extra)


def test_a_wrong_shape_is_refused_by_name(folder, tmp_path):
    key = "model.vision_tower.vision_tower.encoder.s3.1.mlp.mlp.0.weight"

    def widen(sd):
        if key in sd:
            sd[key] = torch.zeros(sd[key].shape[0] + 1, sd[key].shape[1])
            return True
        return False

    with pytest.raises(CheckpointError, match=r"s3\.1\.mlp\.mlp\.0\.weight has shape \(33, 8\), expected \(32, 8\)"):
        load_med3dvlm(_edit_shard(folder, tmp_path / "wide", widen))


def test_a_missing_llm_key_is_refused_by_name(folder, tmp_path):
    key = "model.layers.0.self_attn.q_proj.weight"
    broken = _edit_shard(folder, tmp_path / "nollm", lambda sd: sd.pop(key, None) is not None)
    index = json.loads((broken / "model.safetensors.index.json").read_text(encoding="utf-8"))
    del index["weight_map"][key]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing model.layers.0.self_attn.q_proj.weight"):
        load_med3dvlm(broken)


def test_prompt_is_med3dvlms_own_format(model):
    ids = model.prompt_ids("Is the liver normal?")
    t = model.num_image_tokens
    assert ids[:t].tolist() == [model.image_token_id] * t
    assert model.tokenizer.decode(ids[t:]) == " Is the liver normal?"  # its VQA format: image tokens + " " + question
    report = model.prompt_ids(REPORT_QUESTION)
    assert model.tokenizer.decode(report[t:]) == CAPTION_PROMPT  # a report asks its own caption prompt
    visual = torch.randn(1, t, 32)
    embeds = model._embed(ids, visual)
    table = model.llm.get_input_embeddings()
    assert embeds.shape[1] == len(ids)  # Med3DVLM's splice keeps the length
    assert torch.equal(embeds[0, 0], table(ids[:1])[0]) and torch.equal(embeds[0, 1:t + 1], visual[0])
    assert torch.equal(embeds[0, t + 1:], table(ids[t + 1:]))


def test_streams_the_greedy_answer_piece_by_piece(model):
    torch.manual_seed(3)
    visual = model.encode_volume(torch.rand(1, 1, 32, 64, 64))
    assert visual.shape == (1, 4, 32)
    question = "Is there a renal cyst?"
    pieces = list(model.stream_text(visual, question, max_new_tokens=12))
    ids = model.prompt_ids(question)
    reference = model.llm.generate(inputs_embeds=model._embed(ids, visual), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=12, do_sample=False, eos_token_id=sorted(model.eos_ids),
                                   pad_token_id=model.tokenizer.pad_token_id)
    assert "".join(pieces) == model.tokenizer.decode(reference[0], skip_special_tokens=True)
    assert len(pieces) > 1


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    import numpy as np
    import SimpleITK as sitk

    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    rng = np.random.default_rng(0)
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(-1000, 400, (12, 48, 48)).astype(np.int16)), str(path))
    return str(path)


def test_ask_and_report_through_the_cli(folder, ct, tmp_path, capsys):
    """``--model FOLDER`` goes through the factory; the CLI prints what streamed, which is the model's answer."""
    from medvlsam2.io.volume import read_volume

    assert main(["ask", ct, "Is there a renal cyst?", "--model", str(folder), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "Med3DVLM" in captured.err and "released" in captured.err and "random" not in captured.err
    model = load_model(str(folder))
    session = Session(model, read_volume(ct))
    expected = "".join(session.ask("Is there a renal cyst?"))
    assert expected.strip() and captured.out.strip() == expected.strip()
    out = tmp_path / "report.md"
    assert main(["report", ct, "-o", str(out), "--model", str(folder), "--device", "cpu"]) == 0
    text = out.read_text(encoding="utf-8")
    assert NOTICE in text and "".join(session.report()).strip() in text
    assert main(["ask", ct, "x", "--about", "liver", "--model", str(folder), "--device", "cpu"]) == 1
    assert "text_segmentation" in capsys.readouterr().err  # Med3DVLM cannot segment: the error names it


def test_the_volume_is_cropped_to_its_foreground_as_in_training(model):
    """Black margins (air after windowing) are cut away before the encoder, as Med3DVLM's preprocessing did."""
    from monai.transforms import Resize

    torch.manual_seed(4)
    content = torch.rand(1, 16, 32, 32) + 0.1  # no black voxel inside
    framed = torch.zeros(1, 1, 32, 64, 64)
    framed[0, :, 8:24, 16:48, 20:52] = content
    resized = Resize(spatial_size=(32, 64, 64), mode="trilinear", align_corners=False)(content)
    assert torch.equal(model.encode_volume(framed), model.encode_volume(torch.as_tensor(resized)[None]))
    black = torch.zeros(1, 1, 32, 64, 64)
    assert torch.isfinite(model.encode_volume(black)).all()  # nothing to crop: left as it is


def test_cancel_and_bounds(model):
    visual = model.encode_volume(torch.rand(1, 1, 32, 64, 64))
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        list(model.stream_text(visual, "What is seen?", cancel=cancel))
    with pytest.raises(InputError, match="max_new_tokens"):
        model.stream_text(visual, "What is seen?", max_new_tokens=0)
    with pytest.raises(InputError, match="empty"):
        model.stream_text(visual, "  ")
    with pytest.raises(InputError, match=r"\[B, 1, 32, 64, 64\]"):
        model.encode_volume(torch.rand(1, 1, 16, 64, 64))


def test_paper_config_has_the_released_7b_keys_and_shapes():
    """The fixture lists the released checkpoint's vision-tower and projector tensors (names and shapes at
    Med3DVLM-Qwen-2.5-7B's sizes, from its public code: see Testing/Benchmarks/med3dvlm_upstream.py)."""
    published = json.loads(FIXTURE.read_text(encoding="utf-8"))
    cfg = paper()
    with torch.device("meta"):
        encoder = build_vision_encoder(cfg.vision)
        projector = build_projector(cfg.projector, encoder.output_shapes, published["llm_hidden_size"])
    ours = {PUBLISHED_PREFIXES[part] + k: list(v.shape)
            for part, module in (("vision_encoder", encoder), ("projector", projector)) for k, v in module.state_dict().items()}
    assert len(published["tensors"]) == 474
    assert ours == published["tensors"]


def test_dcformer_siglip_folder_loads_into_our_encoder(folder, tmp_path):
    """DCFormer_SigLIP is a CLIP model: vision_encoder.* beside its text encoder and projections."""
    vision = load_file(str(folder / SHARDS[0])) | load_file(str(folder / SHARDS[1]))
    prefix = PUBLISHED_PREFIXES["vision_encoder"]
    encoder_state = {k[len(prefix):]: v for k, v in vision.items() if k.startswith(prefix)}
    clip = tmp_path / "DCFormer_SigLIP"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "dec_clip", "vision_encoder": "dcformer",
                                                  "input_size": [64, 64, 32], SIZE_OVERRIDE: TINY_FIELDS[SIZE_OVERRIDE]}))
    save_file({**{"vision_encoder." + k: v for k, v in encoder_state.items()}, "t_prime": torch.tensor(2.3),
               "mm_vision_proj.weight": torch.zeros(8, 16), "language_encoder.embeddings.word_embeddings.weight": torch.zeros(5, 8)},
              str(clip / "model.safetensors"))
    assert is_dcformer_encoder_folder(clip)
    encoder = load_dcformer_encoder(clip)
    assert encoder.input_size == (32, 64, 64)
    assert all(torch.equal(v, encoder_state[k]) for k, v in encoder.state_dict().items())
    low, high = encoder(torch.rand(1, 1, 32, 64, 64))
    assert low.shape == (1, 4, 8) and high.shape == (1, 1, 16)
    with pytest.raises(InputError, match="encoder alone"):
        load_med3dvlm(clip)
    with pytest.raises(InputError, match="encoder alone"):
        load_model(str(clip))
    state_file = tmp_path / "pretrained_ViT.bin"  # Med3DVLM's CLIP training script also saves the encoder so
    torch.save(encoder_state, state_file)
    from_bin = load_dcformer_encoder(state_file, vision=encoder_config(encoder))
    assert all(torch.equal(v, encoder_state[k]) for k, v in from_bin.state_dict().items())
    with pytest.raises(CheckpointError, match=r"\d+ missing, 0 unexpected, \d+ of the wrong shape\): missing vision_encoder\.encoder\.s2\.1\."):
        load_dcformer_encoder(clip, vision=paper().vision)  # decomp_small weights expected, tiny ones given


def encoder_config(encoder):
    from medvlsam2.config import VisionConfig

    sizes = TINY_FIELDS[SIZE_OVERRIDE]
    return VisionConfig(kind="dcformer", input_size=encoder.input_size, channels=tuple(sizes["channels"]),
                        blocks=tuple(sizes["blocks"]), kernels=tuple(sizes["kernels"]))


def test_a_recipe_of_medsam2_and_med3dvlm_serves_clicks_and_answers_from_one_server(folder, tmp_path):
    """segmenter: an official-format SAM2.1 hiera-t file; language: the Med3DVLM folder; one server."""
    from official_sam2 import write_ct, write_official_checkpoint

    from medvlsam2.client import Client
    from medvlsam2.io.volume import read_volume
    from medvlsam2.server.launcher import launch_server

    recipe = tmp_path / "recipe.yaml"
    checkpoint = write_official_checkpoint(tmp_path / "MedSAM2_random.pt")
    recipe.write_text(f"segmenter: {checkpoint}\nlanguage: {folder}\nimage_size: 128\n")
    volume = read_volume(write_ct(tmp_path / "ct.nii.gz"))
    local = Session(load_model(str(recipe)), volume)
    expected = "".join(local.ask("Is the liver normal?"))
    srv = launch_server(model=str(recipe), device="cpu")
    try:
        client = Client(srv.url, srv.token, timeout=120)
        assert set(client.version()["capabilities"]) == {"interactive", "language"}
        session = client.open_session(volume)
        obj = session.add_object()
        assert session.add_points(obj, [[32, 32, 4]], [1]).patch.sum() > 0
        assert "".join(session.ask("Is the liver normal?")) == expected  # Med3DVLM answers, as it does locally
        with pytest.raises(CapabilityError, match="text_segmentation"):
            session.segment_text("liver")
        session.close()
        client.close()
    finally:
        srv.stop()
