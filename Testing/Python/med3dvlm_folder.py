"""A random-weight Med3DVLM folder in the published layout at tiny sizes (tests' helper, not a test):
config.json with model_type "vlm_qwen" and the fields Med3DVLM's code reads, a BPE tokenizer built offline
with ``tokenizers`` (``<im_patch>`` added as its training script does), two safetensors shards with the
published key names and ``model.safetensors.index.json``."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from medvlsam2.modeling.med3dvlm import IMAGE_TOKEN, PUBLISHED_PREFIXES, SIZE_OVERRIDE, build_vision_parts

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")

# Med3DVLM's config fields at tiny sizes: a 32x64x64 (D, H, W) input gives 4 low-level tokens of width 8
# (stage 3) and 1 high-level token of width 16 (stage 4); the mixer makes 2 + 2 = 4 visual tokens.
TINY_FIELDS = dict(
    vision_tower="dcformer", input_size=[64, 64, 32], dim=16, depth=2, patch_size=[16, 16, 16],
    vision_select_layer=-2, vision_select_feature="cls_patch", mm_projector_type="mixer", mm_mlp_depth=2,
    mm_hidden_size=16, proj_out_num=4, low_input_size=[4, 8], high_input_size=[1, 16], low_output_size=[3, 2],
    high_output_size=[2, 2], **{SIZE_OVERRIDE: dict(channels=[4, 4, 6, 8, 16], blocks=[1, 2, 1, 2, 1], kernels=[5, 3, 3, 3])})


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Describe the findings of the medical image you see.", "The liver is normal. No focal lesion is seen.",
              "Is there a renal cyst? Choices: A. yes B. no", "Both kidneys enhance symmetrically."] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})  # as Med3DVLM's training script does
    fast.save_pretrained(str(folder))
    settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    settings["tokenizer_class"] = "Qwen2Tokenizer"  # what Qwen2.5's tokenizer_config.json says
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return fast


def _randomised(state: dict) -> dict:
    """Every tensor random (BatchNorm statistics included, so that eval-mode BN is exercised)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for key, value in state.items():
        if value.dtype.is_floating_point:
            value = torch.rand(value.shape, generator=g) + 0.5 if key.endswith("running_var") else \
                torch.randn(value.shape, generator=g) * 0.2
        out[key] = value.contiguous()
    return out


def write_med3dvlm_folder(folder: Path) -> Path:
    """Copy the folder (built once per test session) to ``folder``."""
    shutil.copytree(_template(), folder, dirs_exist_ok=True)
    return Path(folder)


@functools.lru_cache(maxsize=1)
def _template() -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(tempfile.mkdtemp(prefix="med3dvlm-tiny-")) / "Med3DVLM-tiny"
    atexit.register(shutil.rmtree, folder.parent, True)
    folder.mkdir()
    tokenizer = _tokenizer(folder)
    qwen = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.pad_token_id)
    config = {**qwen.to_dict(), **TINY_FIELDS, "model_type": "vlm_qwen", "architectures": ["VLMQwenForCausalLM"],
              "img_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}
    (folder / "config.json").write_text(json.dumps(config))
    # answers of a random model rarely stop by themselves: keep them short
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": tokenizer.eos_token_id, "max_new_tokens": 10}))
    torch.manual_seed(0)
    state = dict(Qwen2ForCausalLM(qwen).state_dict())
    encoder, projector = build_vision_parts(config, qwen.hidden_size)
    for part, module in (("vision_encoder", encoder), ("projector", projector)):
        state.update({PUBLISHED_PREFIXES[part] + k: v for k, v in module.state_dict().items()})
    state = _randomised(state)
    keys = sorted(state)
    halves = (keys[: len(keys) // 2], keys[len(keys) // 2:])
    for name, part in zip(SHARDS, halves):
        save_file({k: state[k] for k in part}, str(folder / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, part in zip(SHARDS, halves) for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


