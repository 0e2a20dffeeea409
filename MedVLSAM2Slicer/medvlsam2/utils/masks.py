"""Small mask geometry shared by the engine and the evaluation (numpy + scipy, no torch)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def innermost(mask: np.ndarray, spacing: Sequence[float] | None = None) -> tuple[int, ...]:
    """Index (in ``mask``'s axis order, e.g. (k, j, i) or (j, i)) of the element of ``mask`` farthest from its
    outside, with the array border counting as outside. ``spacing`` is per axis in (i, j[, k]) order (mm), as
    ``Volume.spacing`` is; None = unit spacing."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    sampling = None if spacing is None else [float(s) for s in reversed(tuple(spacing)[:mask.ndim])]
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=sampling)[(slice(1, -1),) * mask.ndim]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(np.where(mask, depth, -np.inf))), mask.shape))
