"""MONAI preprocessing for dataset cases: orientation, spacing, foreground crop, caching.

Cases from different datasets arrive in different orientations and voxel sizes; training wants one
orientation and one spacing. ``standardize`` keeps HU (the model's own input builders window them
through ``io.windowing``); ``intensity_transform`` is the same windowing as a MONAI transform for
pipelines that feed MONAI networks directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..io.volume import LPS_TO_RAS, Volume
from .case import CTCase


def standardize_transform(spacing: tuple[float, float, float] = (1.5, 1.5, 3.0), axcodes: str = "RAS",
                          body_hu: float = -500.0, margin: int = 2):
    """MONAI dict transform on {"image", "label"} MetaTensors: reorient, resample, crop to the body."""
    from monai.transforms import Compose, CropForegroundd, Orientationd, Spacingd

    keys = ["image", "label"]
    return Compose([
        Orientationd(keys=keys, axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")),
                    allow_missing_keys=True),
        Spacingd(keys=keys, pixdim=spacing, mode=("bilinear", "nearest"), allow_missing_keys=True),
        CropForegroundd(keys=keys, source_key="image", select_fn=lambda x: x > body_hu, margin=margin, allow_smaller=True,
                        allow_missing_keys=True),
    ])


def intensity_transform(window="abdomen", keys=("image",)):
    """MONAI ``ScaleIntensityRanged``: HU clipped to ``window`` (a preset, "L,W" or (L, W)) and scaled to [0, 1]."""
    from monai.transforms import ScaleIntensityRanged

    from ..io.windowing import get_window

    w = get_window(window)
    return ScaleIntensityRanged(keys=list(keys), a_min=w.low, a_max=w.high, b_min=0.0, b_max=1.0, clip=True)


def _to_meta(array: np.ndarray, volume: Volume):
    from monai.data import MetaTensor

    # MONAI is channel-first with spatial axes in (i, j, k) order and a RAS affine.
    return MetaTensor(np.ascontiguousarray(array.transpose(2, 1, 0))[None].astype(np.float32), affine=volume.ijk_to_ras())


def _from_meta(tensor) -> tuple[np.ndarray, Volume]:
    array = tensor.numpy()[0].transpose(2, 1, 0)
    lps = LPS_TO_RAS @ np.asarray(tensor.affine, dtype=np.float64)  # the flip is its own inverse
    return array, Volume.from_ijk_to_ras(array, LPS_TO_RAS @ lps)


def standardize(case: CTCase, transform=None) -> CTCase:
    """The case resampled by ``transform`` (default ``standardize_transform()``), HU rounded to int16."""
    transform = transform or standardize_transform()
    data = {"image": _to_meta(case.volume.array, case.volume)}
    if case.labels is not None:
        data["label"] = _to_meta(case.labels, case.volume)
    out = transform(data)
    image, volume = _from_meta(out["image"])
    volume = volume.with_array(np.round(image).astype(np.int16))
    labels = np.round(_from_meta(out["label"])[0]).astype(np.uint8) if "label" in out else None
    names = {v: n for v, n in case.label_names.items() if labels is not None and (labels == v).any()}
    return replace(case, volume=volume, labels=labels, label_names=names)


def cached_cases(cases: Sequence[CTCase], transform=None, num_workers: int = 0):
    """A MONAI ``CacheDataset`` of standardised cases: each case is preprocessed once, then served from memory."""
    from monai.data import CacheDataset

    return CacheDataset(data=list(range(len(cases))), transform=lambda i: standardize(cases[i], transform),
                        num_workers=num_workers, progress=False)
