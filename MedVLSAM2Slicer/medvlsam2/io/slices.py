"""Volume -> SAM2 frames: window, resize to the model's square size, 3 channels, ImageNet normalisation.

The inverse needs no code of ours: SAM2 returns mask logits resized to the original slice size
(rows j, columns i), so a mask from slice k lands directly on ``volume.array[k]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .volume import Volume
from .windowing import Window, apply_window

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def volume_to_frames(volume: Volume, image_size: int, window: str | Window = "abdomen"
                     ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Return frames [K, 3, S, S] float32 and the original slice size (rows, columns)."""
    x = torch.from_numpy(apply_window(volume.array, window)).unsqueeze(1)  # [K, 1, H, W]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.expand(-1, 3, -1, -1) - IMAGENET_MEAN) / IMAGENET_STD
    return x.contiguous(), (volume.shape[1], volume.shape[2])
