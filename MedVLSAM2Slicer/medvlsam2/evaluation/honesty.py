"""Never confidently wrong, measured: the confidently-wrong rate and presence calibration on phantoms with findings.

Prompt mix per case (phantoms built with ``language.held_out_findings``; wordings from ``language.HELD_OUT_TEMPLATES``,
which training never saw), each run with ``force=True`` so every target gives a mask and the engine's doubts show as
flags ("(unverified)" / "(forced)" names or warnings):
- organs (present): liver, spleen, right kidney, left kidney (reference: ``synthetic.STRUCTURE_LABELS``);
- lesion: one held-out lesion wording; present when the phantom has lesions (reference: every lesion voxel), else absent;
- cyst: with a cyst, one held-out wording naming its side (present, reference: the cyst) and one naming the other side
  (absent: the wrong-side request); without one, one wording naming a random side (absent);
- absent organ: "gallbladder" (the phantoms never have one).

Per prompt: ``delivered`` (some result carries no flag: what a default call hands over), the Dice of the delivered
masks and of everything drawn, the presence score (largest object-score logit of its results; every slice's too) and
the calibrated threshold of the prompt's kind (``plausibility.presence.threshold_for``).
Summary: ``delivered_wrong_rate`` = delivered present targets with Dice < 0.5 / delivered present targets;
``absent_delivered_rate`` = absent targets delivered / absent targets; ``confidently_wrong_rate`` = their sum;
organ Dice (withheld counts 0) and ``withheld_true_organs`` (organ prompts withheld whose drawn mask had Dice >= 0.5);
presence AUROC of the score, TPR and FPR of delivery and of the calibrated threshold.
"""

from __future__ import annotations

import numpy as np

from ..plausibility.presence import threshold_for
from .language import HELD_OUT_TEMPLATES, _pick
from .presence_stats import presence_summary
from .seg_metrics import dice

ORGANS = ("liver", "spleen", "right kidney", "left kidney")
ABSENT_ORGAN = "gallbladder"
WRONG = 0.5  # a delivered result with Dice below this is wrong
FLAGS = ("(unverified)", "(forced)")


def prompt_mix(case, rng) -> list[tuple[str, str, np.ndarray | None]]:
    """(kind, prompt, reference mask or None when absent) for ``case`` (see the module docstring)."""
    from ..data.synthetic import STRUCTURE_LABELS

    labels = case.labels
    out = [("organ", o, np.isin(labels, STRUCTURE_LABELS[o])) for o in ORGANS]
    lesion, cyst = labels == 8, labels == 9
    out.append(("lesion", _pick(rng, HELD_OUT_TEMPLATES["lesion"], 1)[0], lesion if lesion.any() else None))
    sided = [t for t in HELD_OUT_TEMPLATES["cyst"] if "{side}" in t]
    if cyst.any():
        side = "right" if (np.isin(labels, [3]) & _near(cyst)).any() else "left"
        other = "left" if side == "right" else "right"
        first, second = _pick(rng, sided, 2)
        out += [("cyst", first.format(side=side), cyst), ("wrong side", second.format(side=other), None)]
    else:
        out.append(("absent cyst", _pick(rng, sided, 1)[0].format(side=str(rng.choice(["left", "right"]))), None))
    out.append(("absent organ", ABSENT_ORGAN, None))
    return out


def _near(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=2)


def flagged(result) -> bool:
    return bool(result.warnings) or result.name.endswith(FLAGS)


def evaluate_honesty(session, case) -> dict:
    """The per-case record (see the module docstring)."""
    rng = np.random.default_rng([*case.case_id.encode(), 24])
    rows = []
    presence = getattr(session.model, "presence", None)
    for kind, prompt, ref in prompt_mix(case, rng):
        text = session.segment_text(prompt, force=True)
        drawn = np.zeros(session.volume.shape, bool)
        delivered, unvetted = np.zeros_like(drawn), np.zeros_like(drawn)
        score, slice_scores = None, []
        for r in text.found:
            m = session.mask(r.object_id) > 0
            drawn |= m
            if not flagged(r):
                delivered |= m
            if not r.name.endswith(FLAGS[1]):  # what an engine without vetting delivers: all but the gate's
                unvetted |= m
            if r.scores:
                score = max(score if score is not None else -np.inf, max(r.scores.values()))
                slice_scores += [round(float(v), 2) for v in r.scores.values()]
            session.remove(r.object_id)
        any_delivered = any(not flagged(r) for r in text.found)
        row = {"kind": kind, "prompt": prompt, "present": ref is not None, "delivered": any_delivered,
               "delivered_unvetted": any(not r.name.endswith(FLAGS[1]) for r in text.found),
               "score": score, "threshold": (threshold_for(presence, prompt) or {}).get("threshold"),
               "slice_scores": sorted(slice_scores, reverse=True),  # for presence signals other than the largest
               "warnings": [w for r in text.found for w in r.warnings][:3],
               "not_found": [n.reason for n in text.not_found][:3]}
        if ref is not None:
            row["dice_delivered"] = dice(delivered, ref) if any_delivered else 0.0
            row["dice_delivered_unvetted"] = dice(unvetted, ref) if unvetted.any() else 0.0
            row["dice_drawn"] = dice(drawn, ref)
        rows.append(row)
    return {"prompts": rows}


def summarise_honesty(records: list[dict], unvetted: bool = False) -> dict:
    """The measure (module docstring). ``unvetted``: as an engine without vetting would have delivered (every result
    but the segmenter gate's "(forced)" ones): the "before" of the same masks."""
    key = "_unvetted" if unvetted else ""
    rows = [{**p, "delivered": p.get("delivered" + key, p["delivered"]),
             "dice_delivered": p.get("dice_delivered" + key, p.get("dice_delivered"))}
            for r in records if "honesty" in r for p in r["honesty"]["prompts"]]
    present = [p for p in rows if p["present"]]
    absent = [p for p in rows if not p["present"]]
    given = [p for p in present if p["delivered"]]
    wrong = sum(p["dice_delivered"] < WRONG for p in given)
    organs = [p for p in rows if p["kind"] == "organ"]
    share = lambda a, b: a / b if b else float("nan")  # noqa: E731
    kinds = {}
    for p in rows:
        k = kinds.setdefault(p["kind"], {"n": 0, "delivered": 0, "dice": []})
        k["n"] += 1
        k["delivered"] += int(p["delivered"])
        if p["present"]:
            k["dice"].append(p["dice_delivered"])
    out = {"n_prompts": len(rows), "delivered_wrong_rate": share(wrong, len(given)), "delivered_present": len(given),
           "absent_delivered_rate": share(sum(p["delivered"] for p in absent), len(absent)), "n_absent": len(absent),
           "organ_dice": float(np.mean([p["dice_delivered"] for p in organs])) if organs else float("nan"),
           "organ_dice_drawn": float(np.mean([p["dice_drawn"] for p in organs])) if organs else float("nan"),
           "withheld_true_organs": sum(not p["delivered"] and p["dice_drawn"] >= WRONG for p in organs),
           "n_organs": len(organs),
           "kinds": {k: {"n": v["n"], "delivered": v["delivered"],
                         "dice": float(np.mean(v["dice"])) if v["dice"] else None} for k, v in kinds.items()},
           "presence": presence_summary(presence_rows(rows))}
    out["confidently_wrong_rate"] = (0.0 if not given else out["delivered_wrong_rate"]) + out["absent_delivered_rate"]
    if not unvetted:
        out["unvetted"] = summarise_honesty(records, unvetted=True)
    return out


def presence_rows(rows: list[dict]) -> list[dict]:
    """The prompts a presence decision is about: is a structure of this class there at all? A wrong-side request
    names a class that is present (its side is the priors' check), so it is left out of presence calibration."""
    return [p for p in rows if p["kind"] != "wrong side"]


def honesty_markdown(s: dict) -> list[str]:
    p = s["presence"]
    u = s.get("unvetted")
    lines = ["Never confidently wrong (evaluation/honesty.py mix; force=True, flags = what a default call withholds):", "",
             "| Measure | Value | n |", "|---|---|---|",
             f"| confidently-wrong rate (sum of the next two) | {s['confidently_wrong_rate']:.3f} | {s['n_prompts']} |",
             f"| delivered present targets with Dice < 0.5 | {s['delivered_wrong_rate']:.3f} | {s['delivered_present']} |",
             f"| absent targets delivered as masks | {s['absent_delivered_rate']:.3f} | {s['n_absent']} |",
             f"| organ Dice, delivered (withheld = 0) / as drawn | {s['organ_dice']:.3f} / {s['organ_dice_drawn']:.3f} "
             f"| {s['n_organs']} |",
             f"| true organ results withheld | {s['withheld_true_organs']} | {s['n_organs']} |",
             f"| presence AUROC (object score) | {p['auroc']:.3f} | {p['n']} |",
             f"| delivery as presence decision: TPR / FPR | {p['delivered_tpr']:.3f} / {p['delivered_fpr']:.3f} | |"]
    if u:
        lines += [f"| without vetting (same masks): confidently-wrong / delivered wrong / absent delivered | "
                  f"{u['confidently_wrong_rate']:.3f} / {u['delivered_wrong_rate']:.3f} / {u['absent_delivered_rate']:.3f} | |"]
    for kind, k in p.get("calibrated", {}).items():
        lines.append(f"| calibrated threshold, {kind} ({', '.join(format(t, '.2f') for t in k['thresholds'])}): "
                     f"TPR / FPR | {k['tpr']:.3f} / {k['fpr']:.3f} | {k['n']} |")
    lines += ["", "| Prompt kind | n | delivered | Dice of delivered |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {v['delivered']} | {'' if v['dice'] is None else format(v['dice'], '.3f')} |"
              for k, v in s["kinds"].items()]
    return lines + [""]
