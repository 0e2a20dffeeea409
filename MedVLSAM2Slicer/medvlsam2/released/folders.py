"""Recognise and load M3D-LaMed and SegVol folders in their published layout, strictly; nothing is fetched.

M3D-LaMed: ``config.json`` (``model_type`` "lamed_phi3": Phi-3 fields + the LaMed fields its training wrote),
``model.safetensors`` or shards + ``model.safetensors.index.json``, tokenizer files. SegVol: ``config.json``
(``model_type`` "segvol"), ``model.safetensors`` (``weights convert`` makes it from the released
``pytorch_model.bin``), CLIP tokenizer files. Every tensor is checked (name and shape, from the safetensors
headers) before any weight is read. ``medvlsam2_sizes`` in config.json is ours: it shrinks the modules of a
test folder in the same layout; published folders never have it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from .base import SIZES_FIELD
from .keys import POSITION_IDS, CLIP_PUBLISHED, check_folder_layout, check_position_ids, published_shapes, to_ours
from .seg_decoder import SegConfig
from .vit3d import ViTConfig

M3D_MODEL_TYPE = "lamed_phi3"
SEGVOL_MODEL_TYPE = "segvol"
SIZES = SIZES_FIELD
SEGVOL_PREFIX = "model."
M3D_PARTS = ("vision_tower", "mm_projector", "seg_projector", "seg_module")
# LaMed fields whose published value is the only combination upstream trained and we implement.
M3D_FIXED = {"vision_select_layer": -1, "vision_select_feature": "patch", "mm_projector_type": "spp",
             "proj_layer_type": "mlp", "proj_layer_num": 2, "proj_pooling_type": "spatial", "image_channel": 1,
             "segmentation_module": "segvol"}
M3D_OWN_FIELDS = set(M3D_FIXED) | {"image_size", "patch_size", "proj_pooling_size", "mm_hidden_size", "seg_token_id",
                                   "vision_tower", SIZES, "model_type", "architectures", "img_token_id"}


def read_config(root: Path) -> dict:
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        raise InputError(f"{root} has no readable config.json")
    return config


def model_type(root: str | Path) -> str | None:
    try:
        return read_config(Path(root)).get("model_type")
    except InputError:
        return None


def _triple(value, name: str, where: str) -> tuple[int, int, int]:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or min(out) < 1:
        raise CheckpointError(f"{where}: {name} must be three positive integers, got {value!r}")
    return out


def seg_config(config: dict, image_key: str, where: str) -> SegConfig:
    sizes = config.get(SIZES) or {}
    vit = ViTConfig(image_size=_triple(config.get(image_key, (32, 256, 256)), image_key, where),
                    patch_size=_triple(config.get("patch_size", (4, 16, 16)), "patch_size", where),
                    **sizes.get("vit", {}))
    try:
        return SegConfig(vit=vit, **sizes.get("decoder", {}))
    except TypeError as exc:
        raise CheckpointError(f"{where}: {SIZES} is not understood ({exc})") from None


# ----- M3D-LaMed -----------------------------------------------------------------------------------
def _phi3_config(config: dict):
    from transformers import Phi3Config

    return Phi3Config(**{k: v for k, v in config.items() if k not in M3D_OWN_FIELDS})


def _m3d_parts(config: dict, where: str) -> tuple[SegConfig, int]:
    for key, value in M3D_FIXED.items():
        if key in config and config[key] != value:
            raise CheckpointError(f"{where}: {key} is {config[key]!r}; only the published M3D-LaMed design "
                                  f"({key} = {value!r}) is supported")
    seg = seg_config(config, "image_size", where)
    if int(config.get("mm_hidden_size", seg.dim)) != seg.dim:
        raise CheckpointError(f"{where}: mm_hidden_size {config['mm_hidden_size']} differs from the ViT width {seg.dim}")
    return seg, int(config.get("proj_pooling_size", 2))


def build_m3d_meta(config: dict, where: str):
    """The whole model on the meta device (no memory): for the layout check."""
    from transformers import Phi3ForCausalLM

    from .m3d_lamed import attach_parts

    seg, pool = _m3d_parts(config, where)
    with torch.device("meta"):
        return attach_parts(Phi3ForCausalLM(_phi3_config(config)), seg.vit, seg, pool)


def check_m3d_folder(root: Path) -> dict[str, Path]:
    config = read_config(root)
    expected = published_shapes(build_m3d_meta(config, str(root / "config.json")))
    return check_folder_layout(expected, root, "M3D-LaMed")


def load_m3d_lamed(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None, provenance: str = "released"):
    from transformers import AutoTokenizer, Phi3ForCausalLM

    from ..modeling.med3dvlm import _generation_settings, _quiet_transformers, _read_tensors
    from .m3d_lamed import M3DLaMed, attach_parts

    root = Path(path)
    config = read_config(root)
    if config.get("model_type") != M3D_MODEL_TYPE:
        raise InputError(f"{root} is not an M3D-LaMed folder: its config.json must have model_type {M3D_MODEL_TYPE!r}")
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    files = check_m3d_folder(root)  # every key and shape before any weight is read
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
            lm = Phi3ForCausalLM.from_pretrained(str(root), config=_phi3_config(config), dtype=dtype,
                                                 local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{root}: the tokenizer or language model could not be loaded: {str(exc)[:300]}") from None
    seg, pool = _m3d_parts(config, str(root / "config.json"))
    attach_parts(lm, seg.vit, seg, pool)
    for part in M3D_PARTS:
        prefix = f"model.{part}."
        state = {to_ours(k): v for k, v in _read_tensors(files, prefix).items()}
        getattr(lm.model, part).load_state_dict(state, strict=True)
    eos_ids, max_new_tokens = _generation_settings(root, config, tokenizer)
    model = M3DLaMed(lm.to(device, dtype), tokenizer, _description(root, "M3D-LaMed", provenance), provenance,
                     eos_ids, max_new_tokens).eval()
    if "seg_token_id" in config and int(config["seg_token_id"]) != model.seg_token_id:
        raise CheckpointError(f"{root}: config.json's seg_token_id {config['seg_token_id']} is not the tokenizer's "
                              f"[SEG] id {model.seg_token_id}")
    return model


# ----- SegVol --------------------------------------------------------------------------------------
def _clip_config(config: dict):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**((config.get(SIZES) or {}).get("clip", {})))  # SegVol built CLIPTextConfig()


def build_segvol(config: dict, where: str):
    from .segvol import SegVolNet

    return SegVolNet(seg_config(config, "spatial_size", where), _clip_config(config))


def segvol_expected(config: dict, where: str) -> dict[str, tuple]:
    with torch.device("meta"):
        net = build_segvol(config, where)
    pid = SEGVOL_PREFIX + CLIP_PUBLISHED + POSITION_IDS
    return published_shapes(net, SEGVOL_PREFIX, {pid: (1, net.text_encoder.clip_text_model.config.max_position_embeddings)})


def check_segvol_folder(root: Path) -> dict[str, Path]:
    return check_folder_layout(segvol_expected(read_config(root), str(root / "config.json")), root, "SegVol")


def load_segvol(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None, provenance: str = "released"):
    from transformers import AutoTokenizer

    from ..modeling.med3dvlm import _quiet_transformers
    from .keys import read_state
    from .segvol import SegVol

    root = Path(path)
    config = read_config(root)
    if config.get("model_type") != SEGVOL_MODEL_TYPE:
        raise InputError(f"{root} is not a SegVol folder: its config.json must have model_type {SEGVOL_MODEL_TYPE!r}")
    files = check_segvol_folder(root)
    pid = SEGVOL_PREFIX + CLIP_PUBLISHED + POSITION_IDS
    check_position_ids(files, pid)
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{root} has no usable CLIP tokenizer files: {str(exc)[:300]}") from None
    if tokenizer.eos_token_id is None:
        raise CheckpointError(f"{root}: the tokenizer has no end-of-text token; it is not SegVol's CLIP tokenizer")
    net = build_segvol(config, str(root / "config.json"))
    net.load_state_dict(read_state(files, SEGVOL_PREFIX, drop=(pid,)), strict=True)
    dtype = dtype or torch.float32  # 180 M parameters: fp32 everywhere, as upstream runs it
    return SegVol(net.to(device, dtype).eval(), tokenizer, _description(root, "SegVol", provenance), provenance).eval()


def _description(root: Path, family: str, provenance: str) -> str:
    return f"{root.name}: {family} ({provenance})"
