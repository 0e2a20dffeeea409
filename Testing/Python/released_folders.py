"""Random-weight M3D-LaMed and SegVol folders in the published layout at tiny sizes (tests' helper, not a
test): config.json with the published model_type and fields (plus ``medvlsam2_sizes`` to shrink the
modules), tokenizers built offline with ``tokenizers`` (M3D: ``<im_patch>``, ``<bx_start>``, ``<bx_end>`` as
special tokens and ``[SEG]`` as a plain added token, as its training script adds them; SegVol: a CLIP-style
start/end-of-text template), safetensors with the published key names (M3D: two shards + index)."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medvlsam2.io.volume import Volume

from medvlsam2.released.folders import SIZES, build_m3d_meta, build_segvol
from medvlsam2.released.keys import CLIP_PUBLISHED, POSITION_IDS, to_published

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
TINY_SIZES = {"vit": dict(hidden_size=32, mlp_dim=64, num_layers=1, num_heads=2),
              "decoder": dict(decoder_depth=2, decoder_heads=2, decoder_mlp=32, iou_hidden=16, mask_in_chans=4)}
TINY_IMAGE = [16, 64, 64]  # 4x4x4 patches -> 8 visual tokens after the 2x pooling
CORPUS = ["Can you segment the liver in this image?", "It is [SEG].", "Sure, [SEG].", "Sorry, there is no liver.",
          "The target is spleen and the segmentation mask is [SEG].", "Please answer and segment.",
          "A computerized tomography of a liver.", "kidney spleen pancreas aorta lung heart"] * 20


def _bpe(specials: list[str], bos: str, eos: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    single = f"{bos} $A" + (f" {eos}" if eos else "")
    pairs = [(t, tok.token_to_id(t)) for t in (bos, eos) if t]
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=pairs)
    return tok


def _shards(state: dict, folder: Path) -> None:
    keys = sorted(state)
    halves = (keys[: len(keys) // 2], keys[len(keys) // 2:])
    for name, part in zip(SHARDS, halves):
        save_file({k: state[k].contiguous() for k in part}, str(folder / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, part in zip(SHARDS, halves) for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _random(module: torch.nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {to_published(k): (torch.randn(v.shape, generator=g) * 0.2 if v.dtype.is_floating_point else v)
            for k, v in module.state_dict().items()}


@functools.lru_cache(maxsize=1)
def m3d_template() -> Path:
    from transformers import Phi3Config, PreTrainedTokenizerFast

    folder = Path(tempfile.mkdtemp(prefix="m3d-tiny-")) / "M3D-LaMed-tiny"
    atexit.register(shutil.rmtree, folder.parent, True)
    folder.mkdir()
    fast = PreTrainedTokenizerFast(tokenizer_object=_bpe(["<unk>", "<s>", "<|endoftext|>"], "<s>", None),
                                   bos_token="<s>", eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<im_patch>", "<bx_start>", "<bx_end>"]})
    fast.add_tokens("[SEG]")
    fast.save_pretrained(str(folder))
    phi3 = Phi3Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.eos_token_id,
                      tie_word_embeddings=False, sliding_window=None)
    config = {**phi3.to_dict(), "model_type": "lamed_phi3", "architectures": ["LamedPhi3ForCausalLM"],
              "image_channel": 1, "image_size": TINY_IMAGE, "patch_size": [4, 16, 16], "vision_tower": "vit3d",
              "vision_select_layer": -1, "vision_select_feature": "patch", "mm_projector_type": "spp",
              "proj_layer_type": "mlp", "proj_layer_num": 2, "proj_pooling_type": "spatial", "proj_pooling_size": 2,
              "segmentation_module": "segvol", "mm_hidden_size": 32,
              "seg_token_id": fast.convert_tokens_to_ids("[SEG]"), SIZES: TINY_SIZES}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": fast.eos_token_id, "max_new_tokens": 24}))
    meta = build_m3d_meta(config, "tiny")  # the layout; the values are random
    state = {}
    g = torch.Generator().manual_seed(0)
    for key, value in meta.state_dict().items():
        state[to_published(key)] = torch.randn(value.shape, generator=g) * 0.2
    for key in [k for k in state if k.endswith("norm.weight") or "layernorm" in k]:
        state[key] = 1 + 0.1 * torch.randn(state[key].shape, generator=g)
    _shards(state, folder)
    return folder


@functools.lru_cache(maxsize=1)
def segvol_template() -> Path:
    from transformers import PreTrainedTokenizerFast

    folder = Path(tempfile.mkdtemp(prefix="segvol-tiny-")) / "SegVol-tiny"
    atexit.register(shutil.rmtree, folder.parent, True)
    folder.mkdir()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(["<unk>", "<|endoftext|>", "<|startoftext|>"], "<|startoftext|>", "<|endoftext|>"),
        bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(folder))
    clip = dict(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    config = {"model_type": "segvol", "architectures": ["SegVolModel"], "spatial_size": TINY_IMAGE,
              "patch_size": [4, 16, 16], "test_mode": True, SIZES: {**TINY_SIZES, "clip": clip}}
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(1)
    net = build_segvol(config, "tiny")
    state = {"model." + k: v for k, v in _random(net, 1).items()}
    state["model." + CLIP_PUBLISHED + POSITION_IDS] = torch.arange(77)[None]
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _trained_state(steps: int = 40) -> dict:
    """The random tiny M3D-LaMed taught two answers by teacher forcing on phantoms: "liver" -> "It is [SEG]." with
    the body as its mask, "spleen" -> "Sorry, there is no spleen." (weights only; a plumbing model, not a CT model)."""
    from medvlsam2.released.folders import load_m3d_lamed
    from medvlsam2.released.m3d_lamed import SEGMENT_PROMPT

    model = load_m3d_lamed(m3d_template(), provenance="random")
    lm, tok = model.lm, model.tokenizer
    torch.manual_seed(0)
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    eos = min(model.eos_ids)
    for step in range(steps):
        image, _ = model.image_tensor(phantom(seed=step % 4).array)
        loss = torch.zeros(())
        for target, answer in (("liver", "It is [SEG]."), ("spleen", "Sorry, there is no spleen.")):
            ids = model.prompt_ids(SEGMENT_PROMPT.format(target))
            ans = torch.tensor(tok(answer, add_special_tokens=False)["input_ids"] + [eos])
            states = lm.model(inputs_embeds=model.embed(torch.cat([ids, ans]), image)).last_hidden_state[0]
            loss = loss + torch.nn.functional.cross_entropy(lm.lm_head(states[len(ids) - 1:-1]), ans)
            if model.seg_token_id in ans:
                seg = states[len(ids) - 1 + ans.tolist().index(model.seg_token_id)][None]
                logits = lm.model.seg_module(image, lm.model.seg_projector[0:3](seg))
                loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(logits, (image > 0.5).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {to_published(k): v.detach().clone() for k, v in lm.state_dict().items()}


@functools.lru_cache(maxsize=1)
def m3d_trained_template() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="m3d-taught-")) / "M3D-LaMed-tiny-taught"
    atexit.register(shutil.rmtree, folder.parent, True)
    shutil.copytree(m3d_template(), folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared CPU (20x slower here)
    try:
        with torch.enable_grad():
            _shards(_trained_state(), folder)
    finally:
        torch.set_num_threads(threads)
    return folder


def write_m3d_folder(folder: Path, taught: bool = False) -> Path:
    """The random tiny folder, or (``taught``) the one that answers "liver" with [SEG] and a body mask and
    "spleen" with "Sorry, there is no spleen."."""
    shutil.copytree(m3d_trained_template() if taught else m3d_template(), folder, dirs_exist_ok=True)
    return Path(folder)


def write_segvol_folder(folder: Path) -> Path:
    shutil.copytree(segvol_template(), folder, dirs_exist_ok=True)
    return Path(folder)


def module_fixtures(write, load, name: str):
    """``folder`` and ``model`` fixtures (module scope) for a family: its tiny folder and the loaded model."""

    @pytest.fixture(scope="module")
    def folder(tmp_path_factory):
        return write(tmp_path_factory.mktemp(name) / f"{name}-tiny")

    @pytest.fixture(scope="module")
    def model(folder):
        return load(folder, provenance="random")

    return folder, model


def phantom(direction=np.eye(3), seed: int = 0) -> Volume:
    """Air around a soft-tissue box at [3:15, 8:34, 6:30] (K, J, I), with ``direction``."""
    rng = np.random.default_rng(seed)
    a = rng.normal(-800, 30, (18, 40, 36)).astype(np.float32)
    a[3:15, 8:34, 6:30] = rng.normal(40, 20, (12, 26, 24))
    return Volume(a, (0.8, 0.8, 2.5), (10.0, -5.0, 3.0), direction)
