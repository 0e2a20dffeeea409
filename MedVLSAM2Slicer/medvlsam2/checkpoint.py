"""Our bundle format: save and load (the model factory, ``medvlsam2.factory``, is what loads any spec).

A bundle is a folder: ``config.json`` (ModelConfig), ``model.safetensors`` (the whole model, segmenter
included), the tokenizer files, and optional ``metadata.json``. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import ModelConfig
from .errors import CheckpointError, InputError

WEIGHTS = "model.safetensors"


def save_bundle(model, folder: str | os.PathLike, metadata: dict | None = None, state_dict: dict | None = None) -> Path:
    """Write ``model`` as a bundle; ``state_dict`` (full, unsharded: e.g. gathered from FSDP ranks) replaces
    the model's own weights, each tied group stored once as ``save_model`` does."""
    from safetensors.torch import save_file, save_model

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(model.config.to_json())
    if state_dict is None:
        save_model(model, str(out / WEIGHTS))  # de-duplicates tied weights
    else:
        seen, tied = set(), set()
        for name, p in model.named_parameters(remove_duplicate=False):
            (tied.add(name) if id(p) in seen else seen.add(id(p)))
        save_file({k: v.contiguous() for k, v in state_dict.items() if k not in tied}, str(out / WEIGHTS))
    model.tokenizer.save_pretrained(str(out))
    if metadata:
        (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return out


def load_bundle(folder: str | os.PathLike, device: str = "cpu", image_size: int | None = None):
    """Load a bundle strictly; an architecture mismatch raises ``CheckpointError`` naming the keys.

    ``image_size`` overrides the SAM2 input size (SAM2 weights do not depend on it). Most callers want
    ``medvlsam2.factory.load_model``, which also sets capabilities and provenance.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model
    from transformers import PreTrainedTokenizerFast

    from .modeling.medvlsam2 import MedVLSAM2

    root = Path(folder)
    if not (root / "config.json").is_file() or not (root / WEIGHTS).is_file():
        raise CheckpointError(f"{root} is not a MedVL-SAM2 bundle: it needs config.json and {WEIGHTS}")
    try:
        config = ModelConfig.from_dict(json.loads((root / "config.json").read_text()))
    except (json.JSONDecodeError, TypeError, InputError) as exc:
        raise CheckpointError(f"{root / 'config.json'} is invalid: {exc}") from None
    if image_size:
        config.segmenter.image_size = int(image_size)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(root))
    model = MedVLSAM2.from_config(config, tokenizer)
    try:
        load_model(model, str(root / WEIGHTS), strict=True)
    except (RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{root.name}/{WEIGHTS} does not match its config.json: {str(exc)[:600]}") from None
    return model.to(device).eval()
