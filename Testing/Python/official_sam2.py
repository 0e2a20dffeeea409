"""Files in the exact published formats, built offline for tests (nothing is downloaded).

``write_official_checkpoint`` makes what Meta and MedSAM2 publish: ``{"model": state_dict}`` of a SAM2.1
model built from the ``sam2`` package's own config (random weights, seeded), saved with ``torch.save``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
SMALL = "configs/sam2.1/sam2.1_hiera_s.yaml"


def write_official_checkpoint(path: Path, config: str = TINY, seed: int = 0) -> Path:
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(config, ckpt_path=None, device="cpu", mode="eval")
    torch.save({"model": model.state_dict()}, path)
    return path


def write_ct(path: Path, shape=(8, 64, 64), seed: int = 0) -> Path:
    """A small HU-like CT (bright ellipsoid in soft tissue, air around) with non-trivial geometry."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[:shape[0], :shape[1], :shape[2]]
    body = ((j - shape[1] / 2) / (shape[1] * 0.45)) ** 2 + ((i - shape[2] / 2) / (shape[2] * 0.45)) ** 2 <= 1
    organ = ((k - shape[0] / 2) / (shape[0] / 3)) ** 2 + ((j - shape[1] / 2) / 10) ** 2 + ((i - shape[2] / 2) / 12) ** 2 <= 1
    arr = np.where(body, rng.normal(40, 10, shape), -1000) + 250 * organ
    image = sitk.GetImageFromArray(arr.astype(np.int16))
    image.SetSpacing((0.9, 0.9, 2.5))
    image.SetOrigin((-30.0, 12.0, 7.5))
    sitk.WriteImage(image, str(path))
    return path
