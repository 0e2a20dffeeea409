"""The one place where the releases' parameter names and ours differ, and the strict check of a folder.

Differences: sam2's two-way transformer names its MLP ``mlp.layers.{0,1}`` (releases: ``mlp.lin{1,2}``);
transformers 5's ``CLIPTextModel`` has no ``text_model.`` level and keeps ``position_ids`` as a non-persistent
buffer, which SegVol's file holds (it is checked against ``arange`` and dropped); SegVol's file puts everything
under ``model.``. Everything else is named as published.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

CLIP_PUBLISHED = "text_encoder.clip_text_model.text_model."
CLIP_OURS = "text_encoder.clip_text_model."
POSITION_IDS = "embeddings.position_ids"
_MLP_OURS = re.compile(r"(\.transformer\.layers\.\d+\.mlp\.)layers\.([01])\.")
_MLP_PUBLISHED = re.compile(r"(\.transformer\.layers\.\d+\.mlp\.)lin([12])\.")


def to_published(key: str, prefix: str = "") -> str:
    key = _MLP_OURS.sub(lambda m: f"{m.group(1)}lin{int(m.group(2)) + 1}.", key)
    if key.startswith(CLIP_OURS):
        key = CLIP_PUBLISHED + key[len(CLIP_OURS):]
    return prefix + key


def to_ours(key: str, prefix: str = "") -> str:
    key = key[len(prefix):] if prefix and key.startswith(prefix) else key
    key = _MLP_PUBLISHED.sub(lambda m: f"{m.group(1)}layers.{int(m.group(2)) - 1}.", key)
    if key.startswith(CLIP_PUBLISHED):
        key = CLIP_OURS + key[len(CLIP_PUBLISHED):]
    return key


def published_shapes(module: nn.Module, prefix: str = "", extra: dict[str, tuple] | None = None) -> dict[str, tuple]:
    """What a file in the published layout holds for ``module`` (built on the meta device: no memory)."""
    shapes = {to_published(k, prefix): tuple(v.shape) for k, v in module.state_dict().items()}
    shapes.update(extra or {})
    return shapes


def check_folder_layout(expected: dict[str, tuple], root: Path, family: str) -> dict[str, Path]:
    """Every published key present with its shape and nothing else, from the safetensors headers alone.
    Returns key -> file. Raises CheckpointError naming the first offenders."""
    from ..modeling.med3dvlm import _header_shapes, _weight_files, check_layout

    files = _weight_files(root)
    check_layout(expected, _header_shapes(files), str(root), family)
    return files


def read_state(files: dict[str, Path], prefix: str = "", drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """All tensors renamed to ours, except those in ``drop`` (published names the caller checks on its own)."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for key, file in files.items():
        by_file.setdefault(file, []).append(key)
    state = {}
    for file, keys in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for key in keys:
                if key not in drop:
                    state[to_ours(key, prefix)] = f.get_tensor(key)
    return state


def check_position_ids(files: dict[str, Path], key: str) -> None:
    """The published CLIP ``position_ids`` must be 0..n-1 (ours are recomputed); anything else is a wrong file."""
    from safetensors import safe_open

    with safe_open(str(files[key]), framework="pt") as f:
        ids = f.get_tensor(key)
    if not torch.equal(ids.reshape(-1).long(), torch.arange(ids.numel())):
        raise CheckpointError(f"{key} is not 0..{ids.numel() - 1}; the file is not SegVol's")
