"""Calibrated presence: a text target's object score (the largest SAM2 object-score logit of its [SEG] result)
against a threshold chosen on held-out phantoms at a fixed false-positive rate and stored in the bundle's
``metadata.json`` (``"presence"``, written by ``medvlsam2 evaluate --tasks honesty --calibrate-presence``). numpy only."""

from __future__ import annotations

import math

import numpy as np

DEFAULT_FPR = 0.05


def roc_auc(scores: list[float], present: list[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); NaN without both classes."""
    s, y = np.asarray(scores, float), np.asarray(present, bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return float(greater / (len(pos) * len(neg)))


def rates(scores: list[float], present: list[bool], threshold: float) -> tuple[float, float]:
    """(true-positive rate, false-positive rate) of "present when score >= threshold"."""
    s, y = np.asarray(scores, float), np.asarray(present, bool)
    tpr = float((s[y] >= threshold).mean()) if y.any() else float("nan")
    fpr = float((s[~y] >= threshold).mean()) if (~y).any() else float("nan")
    return tpr, fpr


def threshold_at_fpr(scores: list[float], present: list[bool], fpr: float = DEFAULT_FPR) -> float:
    """The lowest threshold whose false-positive rate on the absent targets is at most ``fpr``."""
    s, y = np.asarray(scores, float), np.asarray(present, bool)
    neg = np.sort(s[~y])[::-1]
    if not len(neg):
        raise ValueError("calibration needs absent targets")
    allowed = int(np.floor(fpr * len(neg)))  # absent targets that may score at or above the threshold
    return float(np.nextafter(neg[allowed], np.inf)) if allowed < len(neg) else float(neg[-1])


def calibration(scores: list[float], present: list[bool], fpr: float, data: dict) -> dict:
    """The ``metadata.json`` ``"presence"`` entry: threshold, its rates on the calibration data, and where it came from."""
    t = math.ceil(threshold_at_fpr(scores, present, fpr) * 1e4) / 1e4  # rounded up: never admits a calibration absent
    tpr, got = rates(scores, present, t)
    return {"signal": "largest SAM2 object-score logit of a text target's result", "threshold": t,
            "target_fpr": fpr, "fpr": round(got, 4), "tpr": round(tpr, 4), "auroc": round(roc_auc(scores, present), 4),
            "n_present": int(np.sum(present)), "n_absent": int(len(present) - np.sum(present)), **data}


def presence_doubt(model, name: str, scores: dict[int, float]) -> str | None:
    """One line when the result's object score is below the model's calibrated threshold (None: no calibration)."""
    entry = getattr(model, "presence", None)
    if not entry or "threshold" not in entry or not scores:
        return None
    score, t = max(scores.values()), float(entry["threshold"])
    if score >= t:
        return None
    return (f"'{name}': object score {score:.2f} is below the calibrated presence threshold {t:.2f} "
            f"(false-positive rate {100 * float(entry.get('fpr', 0)):.0f} % on held-out phantoms)")
