"""A random-weight VoxTell folder in the published layout at CPU sizes (tests' helper, not a test).

``plans.json`` has nnU-Net's structure (``configurations.3d_fullres.{patch_size, architecture}`` with the
ResidualEncoderUNet ``arch_kwargs`` and ``_kw_requires_import``) at a small size: six stages, stride 1,
1x1x1 kernels in the deep stages, a 6^3 patch. VoxTellModel fixes the widths of the stages it reads (32 and 64
for the two fused stages, 320 for memory layer 5, whose map is 6^3); the others are narrow here. The weights
come from upstream's ``VoxTellModel``, saved as nnU-Net's ``checkpoint_final.pth`` (the published layout) and
converted by ``weights convert``; ``metadata.json`` marks the folder "random"; ``Qwen3-Embedding-4B/`` is a tiny
Qwen3 with an offline tokenizer; ``text_embeddings.npz`` is a bank in the published format (``labels``, float16
``embeddings``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TEXT_DIM = 8
HYPER = dict(decoder_layer=5, text_embedding_dim=TEXT_DIM, num_maskformer_stages=2, num_heads=2, query_dim=16,
             project_to_decoder_hidden_dim=16)
ARCHITECTURE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
    "arch_kwargs": {"n_stages": 6, "features_per_stage": [32, 64, 16, 16, 16, 320],
                    "conv_op": "torch.nn.modules.conv.Conv3d",
                    "kernel_sizes": [[3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]],
                    "strides": [[1, 1, 1]] * 6, "n_blocks_per_stage": [1, 1, 1, 1, 1, 1],
                    "n_conv_per_stage_decoder": [1, 1, 1, 1, 1], "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
BANK_PROMPTS = ("liver", "spleen", "left kidney")


def plans() -> dict:
    return {"dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetResEncUNetLPlans",
            "configurations": {"3d_fullres": {"data_identifier": "tiny", "patch_size": [6, 6, 6],
                                              "spacing": [1.0, 1.0, 1.0], "architecture": ARCHITECTURE}}}


def network(seed: int = 0):
    """Upstream's VoxTellModel at the tiny size, random weights."""
    from voxtell.model.voxtell_model import VoxTellModel

    torch.manual_seed(seed)
    kwargs = dict(ARCHITECTURE["arch_kwargs"])
    kwargs.update(conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)
    return VoxTellModel(input_channels=1, **kwargs, deep_supervision=False, **HYPER).eval()


def write_voxtell_folder(folder: Path, seed: int = 0, keep_pth: bool = False, converted: bool = True, bank: bool = True,
                         text_encoder: bool = True) -> Path:
    from medvlsam2.convert import convert

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fold_0").mkdir(exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans(), indent=2))
    state = network(seed).state_dict()  # nnU-Net's names, aliases included (all_modules.N, decoder.encoder.*)
    pth = folder / "fold_0" / "checkpoint_final.pth"
    torch.save({"network_weights": state, "optimizer_state": {"state": {}, "param_groups": []},
                "grad_scaler_state": None, "logging": {"mean_fg_dice": [np.float64(0.5)]},
                "_best_ema": np.float64(0.5), "current_epoch": 1000,
                "init_args": {"configuration": "3d_fullres", "fold": 0, "device": torch.device("cpu")},
                "trainer_name": "VoxTellTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)}, pth)
    if converted:
        convert(pth)
    if not keep_pth:
        pth.unlink()
    (folder / "metadata.json").write_text(json.dumps({"provenance": "random"}))
    if text_encoder:
        write_text_encoder(folder / "Qwen3-Embedding-4B")
    if bank:
        g = np.random.default_rng(seed)
        np.savez(folder / "text_embeddings.npz", labels=np.array(BANK_PROMPTS),
                 embeddings=g.standard_normal((len(BANK_PROMPTS), TEXT_DIM)).astype(np.float16))
    return folder


def write_text_encoder(folder: Path) -> Path:
    """A Qwen3 embedding model (what ``AutoModel`` loads from Qwen3-Embedding-4B) at width ``TEXT_DIM``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["Instruct: Given an anatomical term query, retrieve the precise anatomical entity and location it "
              "represents\nQuery: the liver spleen kidney lesion in the left lobe"] * 10
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|endoftext|>")
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(1)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=256)
    Qwen3Model(config).eval().save_pretrained(str(folder))
    return folder
