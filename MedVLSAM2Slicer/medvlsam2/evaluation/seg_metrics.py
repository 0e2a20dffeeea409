"""Dice and normalised surface Dice (NSD) of binary 3D masks, in millimetres, with MONAI.

Arrays are ``[k, j, i]`` as everywhere in the engine; ``spacing`` is given in the Volume's (i, j, k)
order and reversed here for MONAI, which wants it in array-axis order.

Empty-mask conventions (the same for Dice and NSD, as in the CVPR 2025 interactive CT challenge and
the Medical Segmentation Decathlon):
- reference and prediction both empty: 1.0 (nothing to find, nothing found);
- exactly one of them empty: 0.0.
MONAI itself returns NaN for "both empty"; that NaN is replaced here so that means stay defined.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ..errors import InputError

NSD_TOLERANCE_MM = 2.0


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}; "
                         "resample the prediction onto the reference grid first")
    if pred.ndim != 3:
        raise InputError(f"masks must be 3D [k, j, i] arrays, got {pred.ndim}D")
    return pred > 0, ref > 0


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|) of two binary masks (1.0 when both are empty)."""
    p, r = _check_pair(pred, ref)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def nsd(pred: np.ndarray, ref: np.ndarray, spacing_ijk: Sequence[float],
        tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice at ``tolerance_mm``: the fraction of both masks' boundary voxels that lie
    within ``tolerance_mm`` (physical distance) of the other mask's boundary.

    ``spacing_ijk`` is the voxel size in mm in (i, j, k) order (``Volume.spacing``). Computed by MONAI's
    ``compute_surface_dice`` (boundary = mask minus its 6-connected erosion, Euclidean distance between
    boundary voxel centres, voxel-count weighting).
    """
    p, r = _check_pair(pred, ref)
    if len(spacing_ijk) != 3 or not all(float(s) > 0 for s in spacing_ijk):
        raise InputError(f"spacing must be three positive numbers in mm, got {spacing_ijk}")
    if tolerance_mm < 0:
        raise InputError(f"the NSD tolerance must be >= 0 mm, got {tolerance_mm}")
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return 1.0
    if has_p != has_r:
        return 0.0
    return nsd_monai(p, r, spacing_ijk, tolerance_mm)


def nsd_monai(pred: np.ndarray, ref: np.ndarray, spacing_ijk: Sequence[float], tolerance_mm: float) -> float:
    """NSD by MONAI ``compute_surface_dice``; both masks non-empty."""
    import torch
    from monai.metrics import compute_surface_dice

    def one_hot(mask: np.ndarray) -> "torch.Tensor":
        t = torch.from_numpy(np.asarray(mask, dtype=bool))
        return torch.stack([~t, t])[None].float()  # [B=1, C=2 (background, object), k, j, i]

    spacing_kji = [float(s) for s in reversed(tuple(spacing_ijk))]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument its own code passes internally
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_surface_dice(one_hot(pred), one_hot(ref), class_thresholds=[float(tolerance_mm)],
                                     include_background=False, spacing=spacing_kji)
    return float(value.reshape(-1)[0])


def seg_scores(pred: np.ndarray, ref: np.ndarray, spacing_ijk: Sequence[float],
               tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[str, float]:
    """``{"dice": ..., "nsd": ...}`` for one structure."""
    return {"dice": dice(pred, ref), "nsd": nsd(pred, ref, spacing_ijk, tolerance_mm)}
