"""SAM2 volumetric segmenter built from the ``sam2`` package's own configs (slices are frames)."""

from __future__ import annotations

import torch

from ..config import SegmenterConfig


def build_segmenter(cfg: SegmenterConfig, device: str | torch.device = "cpu"):
    """Build a randomly initialised SAM2.1 video predictor for ``cfg`` (checkpoint loading is separate)."""
    from sam2.build_sam import build_sam2_video_predictor

    overrides = [f"++model.image_size={cfg.image_size}", *cfg.hydra_overrides]
    predictor = build_sam2_video_predictor(cfg.sam2_config, ckpt_path=None, device=str(device), mode="eval",
                                           hydra_overrides_extra=overrides)
    predictor.fill_hole_area = 0  # needs the sam2._C CUDA extension, which CPU installs lack
    return predictor
