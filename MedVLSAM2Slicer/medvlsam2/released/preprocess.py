"""The two families' input preparation, as each was trained, and the way back to the input's IJK grid.

Shared (both from SegVol's data code): foreground normalisation (threshold = the volume mean; clip the voxels
above it to their 0.05/99.95 percentiles; z-score with their mean and std), min-max to [0, 1], crop to the
voxels > 0 (MONAI ``CropForeground``).
- M3D-LaMed (M3D-Seg): no reorientation; the array in (Z, Y, X) = our (K, J, I); crop; trilinear resize to
  32x256x256 (MONAI ``Resize`` "bilinear" on a 3D volume). Upstream maps nothing back: we record the crop box,
  resize the logits trilinearly to the box and paste the thresholded mask into the input's grid.
- SegVol: normalisation, (Z, Y, X), min-max, pad to at least 32x256x256, crop, nearest-exact resize to
  32x256x256 (its zoom-out pass). Its logits come back by nearest resizing to the crop (as upstream), are
  refined by sliding windows over the region found (its zoom-in pass, segvol.py), then uncropped and unpadded. Its demo names Orientationd("RAS"), but the array reaching it has lost its affine (monai
  0.9's LoadImage returned (image, meta) and np.array() keeps the voxels only), so it changes nothing, and
  its training data code has the reorientation commented out: both families see the file's voxel order.
  Both were trained with random flips, so left/right words in prompts are unreliable.
Everything here works on numpy/torch arrays and is deterministic (goldens in Testing/Python/fixtures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

MODEL_SIZE = (32, 256, 256)
MAX_VOXELS = 1024 * 1024 * 1024  # bounded input: a 1024^3 CT is the largest accepted


def foreground_normalise(x: np.ndarray) -> np.ndarray:
    """SegVol's ForegroundNormalization (float32 like MONAI's loader)."""
    x = np.asarray(x, dtype=np.float32)
    flat = x.reshape(-1)
    above = flat[flat > np.mean(flat)]
    if above.size == 0:
        raise InputError("the volume has a single intensity everywhere; load the CT itself, not a blank image")
    lo, hi = np.percentile(above, 0.05), np.percentile(above, 99.95)
    return ((np.clip(x, lo, hi) - np.mean(above)) / max(float(np.std(above)), 1e-8)).astype(np.float32)


def min_max(x: np.ndarray) -> np.ndarray:
    x = x - x.min()
    return x / np.clip(x.max(), 1e-8, None)


def foreground_box(x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, stop) of the voxels > 0 (MONAI's bounding box, margin 0); the whole array when there are none."""
    from monai.transforms.utils import generate_spatial_bounding_box

    if not (x > 0).any():
        return (0, 0, 0), tuple(x.shape)
    start, stop = generate_spatial_bounding_box(x[None], select_fn=lambda v: v > 0)
    return tuple(int(s) for s in start), tuple(int(s) for s in stop)


def _crop(x: np.ndarray, box) -> np.ndarray:
    (a, b, c), (d, e, f) = box
    return x[a:d, b:e, c:f]


def _resize(x: np.ndarray | torch.Tensor, size, mode: str) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x, dtype=torch.float32)
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(t[None, None], size=tuple(size), mode=mode, **kwargs)[0, 0]


def _check(array: np.ndarray) -> None:
    if array.ndim != 3 or array.size > MAX_VOXELS:
        raise InputError(f"the CT must be 3D with at most {MAX_VOXELS} voxels; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("the CT holds NaN or infinite values; fix or re-export the file")


# ----- M3D-LaMed -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropBox:
    """Where the model's input came from in the input array (K, J, I), stop exclusive."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    shape: tuple[int, int, int]  # the input array's shape

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))


def m3d_input(array_kji: np.ndarray, size=MODEL_SIZE) -> tuple[torch.Tensor, CropBox]:
    """The input array (K, J, I) -> the [D, H, W] float32 tensor M3D-LaMed was trained on, and its crop box."""
    _check(array_kji)
    x = min_max(foreground_normalise(array_kji))
    start, stop = foreground_box(x)
    return _resize(_crop(x, (start, stop)), size, "trilinear"), CropBox(start, stop, tuple(array_kji.shape))


def m3d_paste(logits: torch.Tensor, box: CropBox) -> np.ndarray:
    """[D, H, W] logits -> uint8 mask in the input grid (trilinear to the crop box, > 0, zeros outside)."""
    inside = _resize(logits.float().cpu(), box.size, "trilinear") > 0
    mask = np.zeros(box.shape, dtype=np.uint8)
    (a, b, c), (d, e, f) = box.start, box.stop
    mask[a:d, b:e, c:f] = inside.numpy()
    return mask


# ----- SegVol --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegVolGeometry:
    shape: tuple[int, int, int]  # the input array's (K, J, I)
    padded: tuple[int, int, int]
    pad_before: tuple[int, int, int]
    box: tuple[tuple[int, int, int], tuple[int, int, int]]  # foreground crop in the padded array


def segvol_input(array_kji: np.ndarray, size=MODEL_SIZE) -> tuple[torch.Tensor, torch.Tensor, SegVolGeometry]:
    """The input array (K, J, I) -> SegVol's zoom-out input [D, H, W], the native-resolution crop it came from
    (for the zoom-in windows) and the way back."""
    _check(array_kji)
    x = min_max(foreground_normalise(array_kji))
    shape = tuple(x.shape)
    target = tuple(max(s, t) for s, t in zip(shape, size))
    before = tuple((t - s) // 2 for s, t in zip(shape, target))  # MONAI SpatialPad, symmetric, zeros
    padded = np.zeros(target, dtype=np.float32)
    padded[tuple(slice(b, b + s) for b, s in zip(before, shape))] = x
    box = foreground_box(padded)
    crop = torch.from_numpy(np.ascontiguousarray(_crop(padded, box)))
    return _resize(crop, size, "nearest-exact"), crop, SegVolGeometry(shape, target, before, box)


def zoom_out_to_crop(logits: torch.Tensor, crop_shape) -> torch.Tensor:
    """Zoom-out logits [D, H, W] -> the crop's grid, nearest (as upstream)."""
    return _resize(logits.float(), tuple(crop_shape), "nearest")


def zoom_in_roi(logits: torch.Tensor, window) -> tuple[slice, slice, slice] | None:
    """SegVol's ``logits2roi_coor``: the box of voxels with logit > 0, widened towards one window where the
    volume allows (half the shortfall on each side; its end index stays inclusive as upstream's)."""
    idx = torch.nonzero(logits > 0)
    if idx.shape[0] == 0:
        return None
    out = []
    for axis, (w, n) in enumerate(zip(window, logits.shape)):
        lo, hi = int(idx[:, axis].min()), int(idx[:, axis].max())
        pad = max(0, w - (hi - lo + 1)) // 2
        out.append(slice(max(0, lo - pad), min(n, hi + pad) + 1))
    return tuple(out)


def segvol_paste(logits_crop: torch.Tensor, geo: SegVolGeometry) -> np.ndarray:
    """Logits on the crop's grid -> uint8 mask (K, J, I) in the input grid (uncrop, unpad)."""
    start, stop = geo.box
    padded = np.zeros(geo.padded, dtype=np.uint8)
    padded[tuple(slice(a, b) for a, b in zip(start, stop))] = (logits_crop > 0).cpu().numpy()
    return np.ascontiguousarray(padded[tuple(slice(b, b + s) for b, s in zip(geo.pad_before, geo.shape))])
