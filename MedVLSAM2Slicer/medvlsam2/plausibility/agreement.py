"""Prompts and results agree: a positive click's voxel lies in the result, a negative click's does not, and a 3D box
holds its object with room to spare. Each disagreement is one warning line on the ``SegmentationResult``."""

from __future__ import annotations

import numpy as np

BOX_TOUCH_SHARE = 0.5  # a 3D box "too small" when the mask reaches its border on more than half of its slices


def click_warnings(mask: np.ndarray, clicks: list[tuple[float, float, int, int]]) -> list[str]:
    """``clicks``: (i, j, k, label) with label 1 include, 0 exclude; ``mask`` [k, j, i]."""
    out = []
    for i, j, k, label in clicks:
        inside = bool(mask[int(k), int(round(j)), int(round(i))])
        if label == 1 and not inside:
            out.append(f"the positive click at ({i:.0f}, {j:.0f}, {k}) is not in the result: the model did not "
                       "segment what was clicked")
        elif label != 1 and inside:
            out.append(f"the negative click at ({i:.0f}, {j:.0f}, {k}) is still in the result")
    return out


def box_warning(mask: np.ndarray, box: tuple[float, float, float, float], bound: tuple[int, int]) -> str | None:
    """``box`` (i0, j0, i1, j1) of a 3D box on slices ``bound`` (k0, k1): a mask that reaches the box's in-plane
    border on most of its slices, or fills both end slices, was probably cut by the box."""
    i0, j0, i1, j1 = (int(round(v)) for v in box)
    k0, k1 = bound
    touching = filled = 0
    for k in range(k0, k1 + 1):
        s = mask[k] > 0
        if not s.any():
            continue
        filled += 1
        inner = s[j0 + 1:j1, i0 + 1:i1].sum() if i1 - i0 > 1 and j1 - j0 > 1 else 0
        touching += int(s.sum() > inner)  # some of the slice's mask lies on the box's border (or beyond)
    if filled and touching > BOX_TOUCH_SHARE * filled:
        return (f"the mask reaches the box's border on {touching} of its {filled} slices: the box may be too small "
                "for the object; draw it a little larger")
    if filled and k1 > k0 and (mask[k0] > 0).any() and (mask[k1] > 0).any() and filled == k1 - k0 + 1 and k1 - k0 >= 2:
        ends = min(int((mask[k0] > 0).sum()), int((mask[k1] > 0).sum()))
        middle = int((mask[(k0 + k1) // 2] > 0).sum())
        if ends > 0.5 * middle:
            return (f"the mask is still large on the box's first and last slices ({k0}, {k1}): the box may be too "
                    "short for the object; extend its slices")
    return None


def prompt_warnings(mask: np.ndarray, prompts, bound: tuple[int, int] | None) -> list[str]:
    """Every disagreement between an object's prompts (the Session's: ``k``, ``points`` (i, j), ``labels`` 1/0,
    ``box`` (i0, j0, i1, j1)) and its mask; a box counts as 3D when the object is ``bound`` to slices."""
    clicks = [(x, y, p.k, label) for p in prompts if p.points for (x, y), label in zip(p.points, p.labels)]
    out = click_warnings(mask, clicks)
    boxes = [p.box for p in prompts if p.box is not None]
    if bound is not None and boxes:
        warning = box_warning(mask, boxes[-1], bound)
        if warning:
            out.append(warning)
    return out
