"""What a segmentation call returns: only the changed region of one object's mask. numpy only (shared with the client)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BBox = tuple[int, int, int, int, int, int]  # (k0, k1, j0, j1, i0, i1), half-open


@dataclass
class SegmentationResult:
    object_id: int
    name: str
    bbox: BBox | None  # None: nothing changed
    patch: np.ndarray  # uint8 mask inside bbox
    scores: dict[int, float] = field(default_factory=dict)  # per-slice SAM2 object-score logits

    def apply_to(self, mask: np.ndarray) -> None:
        """Write the changed region into a full-volume mask in place."""
        if self.bbox is not None:
            k0, k1, j0, j1, i0, i1 = self.bbox
            mask[k0:k1, j0:j1, i0:i1] = self.patch


def changed_region(before: np.ndarray, after: np.ndarray) -> BBox | None:
    """Smallest half-open box holding every voxel that differs."""
    diff = np.argwhere(before != after)
    if diff.size == 0:
        return None
    lo, hi = diff.min(0), diff.max(0) + 1
    return (int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))


def label_map(masks: list[np.ndarray]) -> np.ndarray:
    """One uint8 label map from binary masks: mask n gets value n + 1; where masks overlap the earlier one wins."""
    if not masks:
        raise ValueError("label_map needs at least one mask")
    if len(masks) > 255:
        raise ValueError(f"a uint8 label map holds at most 255 labels, got {len(masks)}")
    labels = np.zeros(masks[0].shape, np.uint8)
    for value, mask in enumerate(masks, start=1):
        labels[(mask > 0) & (labels == 0)] = value
    return labels
