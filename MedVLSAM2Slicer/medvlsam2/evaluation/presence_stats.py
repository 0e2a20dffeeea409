"""Presence decisions scored: AUROC of the object score, and TPR/FPR of delivery and of a calibrated threshold."""

from __future__ import annotations

from ..plausibility.presence import KINDS, presence_kind, rates, roc_auc


def presence_summary(rows: list[dict]) -> dict:
    """``rows``: per-prompt dicts with ``prompt``, ``present``, ``delivered``, ``score`` (None: nothing drawn, scored
    lowest) and ``threshold`` (the calibrated threshold that applied to the prompt, None: none). ``calibrated``: per
    kind of target (``presence_kind``), the thresholds used and "present when score >= threshold"'s TPR / FPR."""
    scores = [r["score"] if r["score"] is not None else float("-inf") for r in rows]
    present = [bool(r["present"]) for r in rows]
    delivered_tpr, delivered_fpr = rates([float(r["delivered"]) for r in rows], present, 0.5)
    out = {"n": len(rows), "auroc": roc_auc(scores, present), "delivered_tpr": delivered_tpr,
           "delivered_fpr": delivered_fpr, "calibrated": {}}
    for kind in KINDS:
        idx = [i for i, r in enumerate(rows) if r.get("threshold") is not None and presence_kind(r["prompt"]) == kind]
        if idx:
            above = [float(scores[i] >= rows[i]["threshold"]) for i in idx]
            tpr, fpr = rates(above, [present[i] for i in idx], 0.5)
            out["calibrated"][kind] = {"thresholds": sorted({rows[i]["threshold"] for i in idx}), "tpr": tpr,
                                       "fpr": fpr, "n": len(idx)}
    return out


def calibrate_bundle(bundle: str, records: list[dict], fpr: float, data: dict) -> dict:
    """Choose the presence threshold at ``fpr`` on the honesty records and store it (with ``data``: where it came
    from) as ``"presence"`` in ``bundle``/metadata.json; returns the entry. Only metadata changes, never weights."""
    import json
    from pathlib import Path

    from ..plausibility.presence import calibration

    from .honesty import presence_rows

    rows = presence_rows([p for r in records if "honesty" in r for p in r["honesty"]["prompts"]])
    scores = [p["score"] if p["score"] is not None else float("-inf") for p in rows]
    entry = calibration(scores, [p["present"] for p in rows], [presence_kind(p["prompt"]) for p in rows], fpr, data)
    path = Path(bundle) / "metadata.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["presence"] = entry
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return entry
