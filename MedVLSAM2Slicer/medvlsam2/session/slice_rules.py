"""Per-slice rules: what a prompt leaves on its slice, and when a re-propagated slice counts as unchanged."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .state import Prompt

SETTLE_TOLERANCE = 0.02  # a re-propagated slice "did not change" when it differs in <= 2% of its voxels
BLOB = np.ones((3, 3), bool)  # 8-connected components on a slice


def touching(mask: np.ndarray, near: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``mask`` [H, W] that overlap ``near``."""
    from scipy import ndimage

    parts, _ = ndimage.label(mask, structure=BLOB)
    hit = np.unique(parts[near & mask])
    return np.isin(parts, hit[hit > 0])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def obeyed(mask: np.ndarray, p: Prompt) -> int:
    """How many of prompt ``p``'s clicks ``mask`` [j, i] obeys (holds the positive ones, not the negative ones)."""
    return sum(bool(mask[int(round(y)), int(round(x))]) == (label == 1) for (x, y), label in zip(p.points, p.labels))


def settle_count(count: int, old: np.ndarray, new: np.ndarray) -> int:
    """Slices in a row past the corrected ones whose mask did not change (an empty slice that stays empty is skipped)."""
    if not (old.any() or new.any()):
        return count
    return count + 1 if unchanged(old, new) else 0


def unchanged(old: np.ndarray, new: np.ndarray) -> bool:
    union = np.count_nonzero(old | new)
    return np.count_nonzero(old != new) <= SETTLE_TOLERANCE * union


EDGE_DEPTH = 1 / 3  # a negative click shallower than this share of its blob's deepest point corrects the blob's border
EDGE_KEEP = 0.5  # ... and may not take more than half of the blob with it


def _discs(shape: tuple[int, ...], clicks: list[tuple[int, int]], radii: list[float]) -> np.ndarray:
    """The union of discs of ``radii`` around ``clicks`` (j, i) on a slice of ``shape``."""
    jj, ii = np.ogrid[:shape[0], :shape[1]]
    out = np.zeros(shape, bool)
    for (j, i), r in zip(clicks, radii):
        out |= (jj - j) ** 2 + (ii - i) ** 2 <= r ** 2
    return out


def _peel(blob: np.ndarray, clicks: list[tuple[int, int]]) -> np.ndarray | None:
    """``blob`` less a disc around each click (radius: the click's depth + 1, through the border) when every click
    lies near the blob's edge; None when one lies deep inside (the user says "not this object here")."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(blob)
    if any(depth[j, i] >= EDGE_DEPTH * depth.max() for j, i in clicks):
        return None
    return blob & ~_discs(blob.shape, clicks, [depth[j, i] + 1 for j, i in clicks])


GROW_MAX = 2.0  # a positive click leaves its slice at most this many times its neighbours' (or its own) mask


def grow_cap(old: np.ndarray, neighbours: list[np.ndarray]) -> int | None:
    """The most voxels a positive click may leave on a slice whose mask is ``old``, next to slices ``neighbours``
    (an organ's cross-section changes little from slice to slice); None when the object has nothing there yet."""
    largest = max([int(np.count_nonzero(old))] + [int(np.count_nonzero(m)) for m in neighbours])
    return int(GROW_MAX * largest) if largest else None


def _near_clicks(mask: np.ndarray, clicks: list[tuple[int, int]]) -> np.ndarray:
    """Discs around ``clicks`` reaching ``mask`` (radius: the click's distance to it + 2)."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~mask) if mask.any() else np.zeros(mask.shape)
    return _discs(mask.shape, clicks, [distance[j, i] + 2 for j, i in clicks])


def refine(old: np.ndarray, pred: np.ndarray, p: Prompt, neighbours: Sequence[np.ndarray] = ()) -> np.ndarray:
    """The slice mask a prompt leaves: ``old`` current mask, ``pred`` SAM2's answer (both [H, W] bool), ``neighbours``
    the object's masks on the slices next to it.

    A box replaces the slice with SAM2's answer inside the box, a mask prompt with SAM2's answer. Negative clicks change only the blobs
    (8-connected components of ``old``) they land in: there SAM2's answer is taken, and a blob that
    is not the slice's largest is removed outright if SAM2 keeps the clicked voxel. A negative click near the largest
    blob's edge corrects its border: when SAM2's answer would take more than half of the blob (the demo decoder
    answers a click on a 17-voxel border error of a 1063-voxel liver slice with an empty slice), the click removes
    only a disc around itself; a click deep inside the blob takes SAM2's answer, emptying the slice. Positive clicks
    then add the components of SAM2's answer that hold them (all of it if none does); when that would leave more
    than ``grow_cap(old, neighbours)`` voxels (SAM2's part ran into a neighbouring organ, e.g. a spleen click taking 240
    voxels of kidney), only the part within a disc around each click is added. Nothing else changes.
    """
    from scipy import ndimage

    if p.mask is not None:
        return pred  # a mask prompt replaces its slice, as a box does
    if p.box is not None:
        i0, j0, i1, j1 = (int(round(v)) for v in p.box)
        inside = np.zeros_like(pred)
        inside[j0:j1 + 1, i0:i1 + 1] = True
        return pred & inside
    clicks = [(int(round(y)), int(round(x)), label) for (x, y), label in zip(p.points, p.labels)]
    new = old.copy()
    negative = [(j, i) for j, i, label in clicks if label == 0]
    if negative:
        blobs, _ = ndimage.label(old, structure=BLOB)
        sizes = np.bincount(blobs.ravel())
        largest = int(np.argmax(sizes[1:])) + 1 if len(sizes) > 1 else 0
        for c in sorted({int(blobs[j, i]) for j, i in negative} - {0}):
            blob = blobs == c
            kept = blob & pred
            if c != largest and any(kept[j, i] for j, i in negative):
                kept[:] = False
            elif c == largest and kept.sum() < EDGE_KEEP * blob.sum():
                peeled = _peel(blob, [(j, i) for j, i in negative if blobs[j, i] == c])
                kept = kept if peeled is None else peeled
            new[blob] = kept[blob]
    positive = [(j, i) for j, i, label in clicks if label == 1]
    if positive:
        parts, _ = ndimage.label(pred, structure=BLOB)
        hit = sorted({int(parts[j, i]) for j, i in positive} - {0})
        # SAM2 answered off the click (weak weights): take its whole answer rather than ignore the click
        add = (np.isin(parts, hit) & (parts > 0)) if hit else pred
        most = grow_cap(old, neighbours)
        if most is not None and np.count_nonzero(new | add) > most:
            add &= _near_clicks(new, positive)
        new |= add
    return new
