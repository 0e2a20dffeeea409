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
    warnings: list[str] = field(default_factory=list)  # one line each: what the product doubts about this result

    def apply_to(self, mask: np.ndarray) -> None:
        """Write the changed region into a full-volume mask in place."""
        if self.bbox is not None:
            k0, k1, j0, j1, i0, i1 = self.bbox
            mask[k0:k1, j0:j1, i0:i1] = self.patch


@dataclass(frozen=True)
class NotFound:
    """A text target that gave no object, and why in one line (the model's answer, the gate, a failed check)."""
    target: str
    reason: str


@dataclass
class TextResult:
    """What a text prompt returns: one result per object made, and every named target that gave none."""
    found: list[SegmentationResult] = field(default_factory=list)
    not_found: list[NotFound] = field(default_factory=list)


def changed_region(before: np.ndarray, after: np.ndarray, offset: tuple[int, int, int] = (0, 0, 0)) -> BBox | None:
    """Smallest half-open box holding every voxel that differs, shifted by ``offset`` (k, j, i) of the block.

    Callers pass the blocks they wrote (e.g. one slice as [1, H, W]), never a whole volume to search.
    """
    diff = before != after
    if not diff.any():
        return None
    box = []
    for axis, start in enumerate(offset):
        hit = np.flatnonzero(diff.any(axis=tuple(a for a in range(3) if a != axis)))
        box += [int(hit[0]) + start, int(hit[-1]) + 1 + start]
    return tuple(box)


def union_box(a: BBox | None, b: BBox | None) -> BBox | None:
    """Smallest box holding both (None is empty)."""
    if a is None or b is None:
        return a if b is None else b
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]), min(a[4], b[4]), max(a[5], b[5]))


def label_map(masks: list[np.ndarray]) -> np.ndarray:
    """One uint8 label map from binary masks: mask n gets value n + 1; where masks overlap the earlier one wins.
    Writers that must keep overlaps (a lesion inside its liver) use ``label_layers``."""
    if not masks:
        raise ValueError("label_map needs at least one mask")
    if len(masks) > 255:
        raise ValueError(f"a uint8 label map holds at most 255 labels, got {len(masks)}")
    labels = np.zeros(masks[0].shape, np.uint8)
    for value, mask in enumerate(masks, start=1):
        labels[(mask > 0) & (labels == 0)] = value
    return labels


def label_layers(masks: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Overlapping masks kept, as Slicer stores segments: uint8 layers [L, k, j, i] and each mask's layer.

    Mask n keeps value n + 1 (unique across layers, so one name table serves every layer); it goes into the first
    layer it does not overlap, a new layer when it overlaps every one (a lesion goes beside its liver)."""
    if not masks:
        raise ValueError("label_layers needs at least one mask")
    if len(masks) > 255:
        raise ValueError(f"uint8 labels hold at most 255 masks, got {len(masks)}")
    layers: list[np.ndarray] = []
    placed = []
    for value, mask in enumerate(masks, start=1):
        m = np.asarray(mask) > 0
        free = next((n for n, layer in enumerate(layers) if not (layer[m] > 0).any()), None)
        if free is None:
            layers.append(np.zeros(m.shape, np.uint8))
            free = len(layers) - 1
        layers[free][m] = value
        placed.append(free)
    return np.stack(layers), placed
