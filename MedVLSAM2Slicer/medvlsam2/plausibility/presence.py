"""Calibrated presence: a text target's object score (the largest SAM2 object-score logit of its [SEG] result)
against a threshold chosen on held-out phantoms at a fixed false-positive rate and stored in the bundle's
``metadata.json`` (``"presence"``, written by ``medvlsam2 evaluate --tasks honesty --calibrate-presence``).

One threshold per kind of target (``presence_kind``: a structure such as "liver", or a finding such as "liver
lesion"): a finding's object scores lie far below an organ's, so a threshold that keeps absent organs out would
withhold every true finding, and one that keeps findings would admit absent organs. A kind whose score barely
tells present from absent (AUROC < ``MIN_AUROC`` on the calibration phantoms) gets no threshold, with the reason
stored: a threshold there would hide true results without keeping false ones out. Torch-free."""

from __future__ import annotations

import math

import numpy as np

from .priors import prior_for

DEFAULT_FPR = 0.05
KINDS = ("structure", "finding")


def presence_kind(name: str) -> str:
    """"finding" when the terminology names a finding (a mass, cyst or lesion in an organ), else "structure"."""
    prior = prior_for(name)[0]
    return "finding" if prior is not None and prior.finding else "structure"


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


MIN_AUROC = 0.8  # below this the score barely tells present from absent: a threshold would only hide true results


def _threshold_entry(scores: list[float], present: list[bool], fpr: float) -> dict:
    t = math.ceil(threshold_at_fpr(scores, present, fpr) * 1e4) / 1e4  # rounded up: never admits a calibration absent
    tpr, got = rates(scores, present, t)
    auroc = roc_auc(scores, present)
    entry = {"threshold": t, "fpr": round(got, 4), "tpr": round(tpr, 4), "auroc": round(auroc, 4),
             "n_present": int(np.sum(present)), "n_absent": int(len(present) - np.sum(present))}
    if not auroc >= MIN_AUROC:
        entry["threshold"] = None
        entry["not_applied"] = (f"AUROC {auroc:.2f} < {MIN_AUROC}: the object score does not tell present from absent "
                                f"targets of this kind; at {fpr:g} FPR it would keep {100 * tpr:.0f} % of the true ones")
    return entry


def calibration(scores: list[float], present: list[bool], kinds: list[str], fpr: float, data: dict) -> dict:
    """The ``metadata.json`` ``"presence"`` entry: per kind of target (``kinds``: each target's ``presence_kind``)
    that has absent targets, the threshold at ``fpr`` with its rates on the calibration data (None, with the reason,
    when the kind's AUROC is below ``MIN_AUROC``), and where the data came from."""
    entry = {"signal": "largest SAM2 object-score logit of a text target's result", "target_fpr": fpr, **data,
             "kinds": {}}
    for kind in KINDS:
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if any(not present[i] for i in idx):
            entry["kinds"][kind] = _threshold_entry([scores[i] for i in idx], [present[i] for i in idx], fpr)
    return entry


def threshold_for(entry: dict | None, name: str) -> dict | None:
    """The calibration (``threshold``, ``fpr``...) that applies to target ``name``: its kind's (a bundle calibrated
    with one threshold for all targets: that one); None when none applies."""
    if not entry:
        return None
    if "kinds" in entry:
        kind = entry["kinds"].get(presence_kind(name))
        return kind if kind and kind.get("threshold") is not None else None
    return entry if "threshold" in entry else None


def presence_doubt(model, name: str, scores: dict[int, float]) -> str | None:
    """One line when the result's object score is below the model's calibrated threshold (None: no calibration)."""
    entry = threshold_for(getattr(model, "presence", None), name)
    if entry is None or not scores:
        return None
    score, t = max(scores.values()), float(entry["threshold"])
    if score >= t:
        return None
    return (f"'{name}': object score {score:.2f} is below the calibrated presence threshold {t:.2f} "
            f"(false-positive rate {100 * float(entry.get('fpr', 0)):.0f} % on held-out phantoms)")
