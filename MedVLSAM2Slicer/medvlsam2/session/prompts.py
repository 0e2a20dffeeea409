"""Turning a call's clicks, boxes and masks into per-slice prompts, with the checks that make bad input a clear error."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .state import Prompt

Bound = tuple[int, int] | None  # (k0, k1) of a 3D box, or None


def widened(bound: Bound, ks: list[int]) -> Bound:
    """A positive prompt outside a 3D box's slices says the object is there too: widen the bound."""
    if bound is None or not ks:
        return bound
    return min(bound[0], *ks), max(bound[1], *ks)


def point_prompts(shape: tuple[int, int, int], points_ijk, labels) -> list[Prompt]:
    """Clicks at voxel (i, j, k) with labels +1 / -1, one prompt per slice."""
    pts = np.asarray(points_ijk, dtype=np.float64).reshape(-1, 3) if np.size(points_ijk) else np.zeros((0, 3))
    lab = np.asarray(labels).reshape(-1)
    if len(pts) == 0 or len(pts) != len(lab):
        raise InputError(f"give one label per point and at least one point (got {len(pts)} points, {len(lab)} labels)")
    if not np.all(np.isfinite(pts)):
        raise InputError("point coordinates must be finite numbers")
    size = np.array(shape[::-1])  # (i, j, k) extents
    outside = np.any((pts < 0) | (pts > size - 1), axis=1)
    if outside.any():
        raise InputError(f"point {pts[outside][0].tolist()} is outside the volume; i, j, k must lie in "
                         f"[0, {size[0] - 1}] x [0, {size[1] - 1}] x [0, {size[2] - 1}]")
    if not set(lab.tolist()) <= {1, -1}:
        raise InputError("point labels must be +1 (include) or -1 (exclude)")
    return [Prompt(int(k), pts[pts[:, 2].round() == k][:, :2].tolist(),
                   [1 if v > 0 else 0 for v in lab[pts[:, 2].round() == k]]) for k in np.unique(pts[:, 2].round())]


def box_prompts(shape: tuple[int, int, int], box, k, ends: bool, bound: Bound) -> tuple[list[Prompt], Bound]:
    """A 2D box (i0, j0, i1, j1) on slice ``k`` or a 3D box (i0, j0, k0, i1, j1, k1) as prompts, and the object's
    bound after it (a 3D box sets it to k0..k1; a 2D box widens it)."""
    b = [float(v) for v in box]
    if len(b) == 6:
        i0, j0, k0, i1, j1, k1 = b
        if not np.all(np.isfinite(b)) or k1 < k0:
            raise InputError("a 3D box needs finite numbers and k1 >= k0")
        if not (0 <= k0 and k1 < shape[0]):
            raise InputError(f"the box's slices {k0:g}..{k1:g} lie outside the volume (0 <= k < {shape[0]})")
        bound = (int(round(k0)), int(round(k1)))
        k = int(round((k0 + k1) / 2))
        slices = sorted({bound[0], k, bound[1]}) if ends else [k]
        b = [i0, j0, i1, j1]
    elif len(b) == 4 and k is not None:
        if not (isinstance(k, (int, np.integer)) or float(k).is_integer()):
            raise InputError(f"the slice k of a 2D box must be an integer, got {k}")
        slices = [int(k)]
    else:
        raise InputError("a box is (i0, j0, i1, j1) with its slice k, or (i0, j0, k0, i1, j1, k1)")
    i0, j0, i1, j1 = b
    if not np.all(np.isfinite(b)) or i1 <= i0 or j1 <= j0:
        raise InputError(f"the box {b} is empty: it needs i1 > i0 and j1 > j0 (nonzero width and height)")
    kk, jj, ii = shape
    if not all(0 <= s < kk for s in slices) or i0 < 0 or j0 < 0 or i1 > ii - 1 or j1 > jj - 1:
        raise InputError(f"the box lies outside the volume (i < {ii}, j < {jj}, k < {kk})")
    if len(box) == 4:
        bound = widened(bound, slices)
    return [Prompt(s, box=b) for s in slices], bound


def mask_prompt(shape: tuple[int, int, int], k, mask2d) -> Prompt:
    """A mask [j, i] on slice ``k`` (e.g. a lasso)."""
    m = np.asarray(mask2d)
    kk, jj, ii = shape
    if m.shape != (jj, ii):
        raise InputError(f"a mask prompt is one slice of shape (j, i) = ({jj}, {ii}), got {m.shape}")
    if isinstance(k, bool) or int(k) != k or not 0 <= int(k) < kk:
        raise InputError(f"the mask prompt's slice k must be an integer in [0, {kk - 1}], got {k!r}")
    return Prompt(int(k), mask=m > 0)


def slice_range(n: int, k_range) -> tuple[int, int]:
    """(k0, k1) checked against a volume of ``n`` slices."""
    try:
        k0, k1 = (float(v) for v in k_range)
    except (TypeError, ValueError):
        raise InputError(f"a slice range is two slice indices (k0, k1), got {k_range!r}") from None
    if not (np.isfinite(k0) and np.isfinite(k1) and k0.is_integer() and k1.is_integer() and 0 <= k0 <= k1 < n):
        raise InputError(f"slice range must be integers with 0 <= k0 <= k1 < {n}, got {k_range}")
    return int(k0), int(k1)
