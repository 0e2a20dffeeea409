"""Region input: a mask or box becomes one embedding the LLM reads at ``REGION_TOKEN``.

The region is described by (a) the 3D encoder's patch tokens averaged with weights = the fraction of
each patch the region covers, less the volume's mean patch token, as a unit vector, and (b) ``GEOMETRY``
numbers measured from the mask (volume, extents and centre in millimetres, mean and SD of the windowed
intensity), standardised. ``RegionEncoder`` maps both to the LLM's width. Training (``training.batches``)
and ``Session.ask`` compute these inputs with the same function, ``region_inputs``, from a mask on the
volume grid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from ..errors import InputError

GEOMETRY = ("log_volume_ml", "extent_i_dm", "extent_j_dm", "extent_k_dm", "centre_i", "centre_j", "centre_k",
            "mean_intensity", "sd_intensity")
# (centre, scale) of each GEOMETRY number: about the mean and SD over the organ, lesion and cyst regions of training
# phantoms 20000-20011
GEOMETRY_STANDARD = ((4.4, 0.7, 0.6, 0.8, 0.0, 0.1, 0.1, 0.6, 0.07), (1.6, 0.4, 0.4, 0.4, 0.3, 0.2, 0.3, 0.15, 0.04))


def patch_grid(vision: VisionConfig) -> tuple[int, int, int]:
    """(d, h, w) of the ViT's patch tokens, in their flattening order."""
    return tuple(s // p for s, p in zip(vision.input_size, vision.patch_size))


def region_inputs(mask: np.ndarray, spacing: tuple[float, float, float], encoder_image: torch.Tensor,
                  vision: VisionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Region mask [k, j, i] (volume grid, ``spacing`` (i, j, k) mm) and the encoder input [1, D, H, W]
    -> (patch weights [N] summing to 1, geometry [len(GEOMETRY)])."""
    m = torch.from_numpy(np.ascontiguousarray(mask > 0)).float()
    if m.dim() != 3 or not m.any():
        raise InputError("the region is empty: draw or segment something before asking about it")
    image = encoder_image.reshape(encoder_image.shape[-3:]).float().cpu()
    on_grid = F.adaptive_avg_pool3d(m[None, None], tuple(image.shape))[0, 0]  # coverage per encoder voxel
    weights = F.adaptive_avg_pool3d(m[None, None], patch_grid(vision)).flatten()
    weights = weights / weights.sum()
    total = on_grid.sum().clamp_min(1e-6)
    mean = (on_grid * image).sum() / total
    sd = ((on_grid * (image - mean) ** 2).sum() / total).sqrt()
    idx = np.argwhere(mask > 0)
    sp = np.array(spacing[::-1], dtype=np.float64)  # (k, j, i) mm
    extent = (idx.max(0) - idx.min(0) + 1) * sp / 100.0  # decimetres
    centre = idx.mean(0) / np.maximum(np.array(mask.shape) - 1, 1) * 2 - 1  # -1..1 across the field of view
    volume_ml = len(idx) * float(np.prod(sp)) / 1000.0
    geometry = [np.log(volume_ml + 1e-3), extent[2], extent[1], extent[0], centre[2], centre[1], centre[0]]
    return weights, torch.tensor([*geometry, float(mean), float(sd)], dtype=torch.float32)


class RegionEncoder(nn.Module):
    """(patch tokens [B, N, Cv], weights [B, N], geometry [B, G]) -> region embeddings [B, width]."""

    def __init__(self, vision: VisionConfig, width: int) -> None:
        super().__init__()
        if vision.kind != "vit":  # the DCFormer's two token streams have no single patch grid to pool on
            raise InputError(f"region input needs the 'vit' vision encoder, not {vision.kind!r}; set region_input false")
        self.mlp = nn.Sequential(nn.Linear(vision.hidden_size + len(GEOMETRY), width), nn.GELU(), nn.Linear(width, width))

    def forward(self, patches: torch.Tensor, weights: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        pooled = torch.einsum("bn,bnc->bc", weights.to(patches.dtype), patches)
        # Pooled tokens of two regions of one volume share most of their vector (cosine 0.99 for spleen and liver)
        # and the raw geometry is dominated by the log volume, so every region embedded alike and the language model
        # learnt to ignore the region. Read the region against its volume's mean token, as a unit vector, and the
        # geometry standardised.
        contrast = F.normalize(pooled - patches.mean(1), dim=-1)
        centre, scale = (torch.tensor(v, dtype=patches.dtype, device=patches.device) for v in GEOMETRY_STANDARD)
        return self.mlp(torch.cat([contrast, (geometry.to(patches.dtype) - centre) / scale], -1))
