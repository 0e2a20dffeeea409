"""MONAI preprocessing for dataset cases: orientation, spacing, foreground crop, caching.

Cases from different datasets arrive in different orientations and voxel sizes; training wants one
orientation and one spacing. ``standardize`` keeps HU (the model's own input builders window them
through ``io.windowing``); ``intensity_transform`` is the same windowing as a MONAI transform for
pipelines that feed MONAI networks directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import numpy as np
from monai.transforms import Transform

from ..io.volume import LPS_TO_RAS, Volume
from .case import CTCase


def _body(x, body_hu: float):
    return x > body_hu


def standardize_transform(spacing: tuple[float, float, float] | None = (1.5, 1.5, 3.0), axcodes: str = "RAS",
                          body_hu: float = -500.0, margin: int = 2):
    """MONAI dict transform on {"image", "label"} MetaTensors: reorient, resample (unless ``spacing`` is
    None: keep the voxels), crop to the body."""
    from monai.transforms import Compose, CropForegroundd, Orientationd, Spacingd

    keys = ["image", "label"]
    resample = [Spacingd(keys=keys, pixdim=spacing, mode=("bilinear", "nearest"), allow_missing_keys=True)
                ] if spacing is not None else []
    return Compose([
        Orientationd(keys=keys, axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")),
                    allow_missing_keys=True),
        *resample,
        CropForegroundd(keys=keys, source_key="image", select_fn=partial(_body, body_hu=body_hu), margin=margin,
                        allow_smaller=True, allow_missing_keys=True),
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


# ----- on-disk cache (training streams cases from here) -------------------------------------------
CACHE_VERSION = 3  # bump when the record layout or the preprocessing changes (3: region questions kept)


def case_record(case: CTCase) -> dict:
    """A ``CTCase`` as tensors + one JSON string: what ``torch.load(weights_only=True)`` reads back (no pickle)."""
    import torch

    v = case.volume
    meta = {"case_id": case.case_id, "spacing": list(v.spacing), "origin": list(v.origin),
            "direction": np.asarray(v.direction).tolist(), "label_names": {str(k): n for k, n in case.label_names.items()},
            "report": case.report, "vqa_closed": [[q.question, q.choices, q.answer] for q in case.vqa_closed],
            "vqa_open": [[q.question, q.answer] for q in case.vqa_open],
            "referring": [[r.expression, r.label, r.answer] for r in case.referring],
            "region_qa": [[q.question, q.answer, list(q.values), q.component] for q in case.region_qa]}
    record = {"image": torch.from_numpy(np.ascontiguousarray(v.array)), "meta": json.dumps(meta)}
    if case.labels is not None:
        record["labels"] = torch.from_numpy(np.ascontiguousarray(case.labels))
    return record


def record_case(record: dict) -> CTCase:
    """The inverse of ``case_record``."""
    from .case import ClosedQA, OpenQA, Referring, RegionQA

    m = json.loads(record["meta"])
    volume = Volume(record["image"].numpy(), tuple(m["spacing"]), tuple(m["origin"]), np.array(m["direction"]))
    labels = record["labels"].numpy() if "labels" in record else None
    return CTCase(m["case_id"], volume, labels, {int(k): n for k, n in m["label_names"].items()}, m["report"],
                  [ClosedQA(q, list(c), a) for q, c, a in m["vqa_closed"]], [OpenQA(q, a) for q, a in m["vqa_open"]],
                  [Referring(e, int(lab), answer) for e, lab, answer in m["referring"]],
                  [RegionQA(q, a, tuple(int(v) for v in values), int(c)) for q, a, values, c in m["region_qa"]])


class _ReadCase(Transform):
    """MONAI transform (deterministic, so ``PersistentDataset`` caches its output): {"index"} -> the case's record, read through ``cases`` and standardised when asked."""

    def __init__(self, cases: Sequence[CTCase], transform) -> None:
        self.cases, self.transform = cases, transform

    def __call__(self, item: dict) -> dict:
        case = self.cases[item["index"]]
        return case_record(standardize(case, self.transform) if self.transform is not None else case)


def persistent_cases(cases: Sequence[CTCase], cache_dir: str | os.PathLike, key: str, transform=None):
    """A MONAI ``PersistentDataset`` over ``cases``: each case is read and preprocessed once, written to
    ``cache_dir`` and afterwards loaded from there (``torch.load(weights_only=True)``).

    ``key`` names the source and its preprocessing (part of each cache entry's hash, so changing either
    reads the cases again). Items are ``case_record`` dicts; ``record_case`` turns one back into a case."""
    from monai.data import PersistentDataset

    data = [{"index": i, "key": f"{key}/v{CACHE_VERSION}/{case_id}"} for i, case_id in enumerate(
        getattr(cases, "ids", [str(i) for i in range(len(cases))]))]
    return PersistentDataset(data, transform=_ReadCase(cases, transform), cache_dir=cache_dir)
