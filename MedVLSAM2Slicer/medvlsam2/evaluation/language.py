"""Language-grounding evaluation on synthetic phantoms (issue 14): referring segmentation on held-out
phrasings, multi-target prompts, absent targets, findings in generated reports, closed VQA with the
choices reshuffled, and (for models with region input) questions about a given region.

Held-out phrasings (``HELD_OUT_TEMPLATES``) are built from words the training templates use
(``data.synthetic.LESION_TEMPLATES`` / ``CYST_TEMPLATES``) but are not among those templates (a test
checks it), so a model must generalise from the trained expressions to score on them.

Phantom mix for held-out seeds (``held_out_findings``; i = seed - 100000): liver lesions none when
i % 4 == 0, one of 15-30 mm when i % 4 in (1, 3), two (15-30 mm and 8-14 mm) when i % 4 == 2; a renal
cyst of 15-24 mm, none / left / right for i % 3 == 0 / 1 / 2; splenomegaly when i % 5 == 4. Seeds
100000-100019 thus hold 15 phantoms with lesions (largest >= 15 mm), 13 with a cyst and 4 with
splenomegaly. Other attributes are drawn from the seed as usual.

Per case:
- referring: two held-out lesion phrasings (when the phantom has lesions; reference = all lesion voxels)
  and two held-out cyst phrasings naming the cyst's side (reference = the cyst);
- multi-target: "liver and spleen" and "right kidney and left kidney"; each target's objects are
  scored against its structure (a missing object scores 0);
- absent: two held-out phrasings of a finding the phantom lacks (a lesion in a lesion-free liver, a cyst
  in a kidney without one) and one organ the phantoms never have; "no object" = no segment returned;
- report findings: ``report.findings.positive_findings`` of the generated vs the reference report:
  recall = found / reference findings, false-finding rate = generated findings absent from the
  reference / generated findings, size error = |generated - reference| mm for findings with a size in
  both (the largest lesion, the cyst; splenomegaly sizes are in cm and compared in mm);
- closed VQA: each closed question with its choices in a new order (seeded by the case), scored as usual;
- region questions: the phantom's own questions about each lesion, the cyst and the spleen (``CTCase.region_qa``:
  what, how large, whether cystic, where), the reference region as the segment asked about; scored by
  ``region_correct``.
"""

from __future__ import annotations

import re

import numpy as np

from ..data import HELD_OUT_FIRST_SEED
from .seg_metrics import dice
from .vqa import closed_correct

HELD_OUT_TEMPLATES = {
    "lesion": ["hypodense mass in the liver", "focal lesion of the liver", "liver hypodensity",
               "low density mass of the liver"],
    "cyst": ["cystic lesion of the {side} kidney", "renal cyst on the {side} side", "{side} kidney hypodensity",
             "simple {side} renal cyst"],
}
ABSENT_ORGANS = ["gallbladder"]
REGION_VALUES = ((8,), (9,), (2,))  # regions asked about: each liver lesion, the renal cyst, the spleen
_FILLER = {"this", "is", "a", "the", "in", "of", "it"}
MULTI_TARGET_PROMPTS = ["liver and spleen", "right kidney and left kidney"]


def held_out_findings(seed: int) -> dict:
    """The documented findings mix for held-out seed ``seed`` (see the module docstring)."""
    i = seed - HELD_OUT_FIRST_SEED
    rng = np.random.default_rng([seed, 14])
    big = float(rng.uniform(15, 30))
    lesions = {0: [], 1: [big], 2: [big, float(rng.uniform(8, 14))], 3: [big]}[i % 4]
    cyst = {0: None, 1: "left", 2: "right"}[i % 3]
    return {"liver_lesions": lesions, "renal_cyst": cyst, "cyst_mm": float(rng.uniform(15, 24)),
            "splenomegaly": i % 5 == 4}


def _segment(session, prompt: str) -> tuple[np.ndarray, list]:
    results = session.segment_text(prompt).found
    pred = np.zeros(session.volume.shape, bool)
    for r in results:
        pred |= session.mask(r.object_id) > 0
    for r in results:
        session.remove(r.object_id)
    return pred, results


def _pick(rng, options: list[str], k: int) -> list[str]:
    return [options[i] for i in rng.choice(len(options), size=min(k, len(options)), replace=False)]


def evaluate_language(session, case, generated_report: str | None, structures: dict[str, list[int]]) -> dict:
    """The per-case record of the language tasks (see the module docstring)."""
    from ..data.case import CHOICE_LETTERS, ClosedQA
    from ..report.findings import positive_findings

    rng = np.random.default_rng(list(case.case_id.encode()))
    labels = case.labels
    out: dict = {"referring": [], "multi": [], "absent": [], "closed_shuffled": []}
    lesion, cyst = labels == 8, labels == 9
    side = None
    if cyst.any():
        side = "right" if np.isin(labels, [3]).any() and _touches(cyst, labels == 3) else "left"
    if lesion.any():
        for phrase in _pick(rng, HELD_OUT_TEMPLATES["lesion"], 2):
            pred, results = _segment(session, phrase)
            out["referring"].append({"target": "liver lesion", "prompt": phrase, "dice": dice(pred, lesion),
                                     "objects": len(results)})
    if side:
        for t in _pick(rng, HELD_OUT_TEMPLATES["cyst"], 2):
            pred, results = _segment(session, t.format(side=side))
            out["referring"].append({"target": "renal cyst", "prompt": t.format(side=side), "dice": dice(pred, cyst),
                                     "objects": len(results)})
    for prompt in MULTI_TARGET_PROMPTS:
        results = session.segment_text(prompt).found
        for target in prompt.split(" and "):
            ref = np.isin(labels, structures[target])
            mine = [r for r in results if r.name == target]
            pred = np.zeros(ref.shape, bool)
            for r in mine:
                pred |= session.mask(r.object_id) > 0
            out["multi"].append({"prompt": prompt, "target": target, "dice": dice(pred, ref), "objects": len(mine)})
        for r in results:
            session.remove(r.object_id)
    absent = []
    if not lesion.any():
        absent += _pick(rng, HELD_OUT_TEMPLATES["lesion"], 2)
    other = {"left": "right", "right": "left"}.get(side, str(rng.choice(["left", "right"])))
    absent += [t.format(side=other) for t in _pick(rng, [t for t in HELD_OUT_TEMPLATES["cyst"] if "{side}" in t], 2)]
    absent += ABSENT_ORGANS
    for phrase in absent:
        _, results = _segment(session, phrase)
        out["absent"].append({"prompt": phrase, "no_object": not results})
    if generated_report is not None and case.report:
        ref, gen = positive_findings(case.report), positive_findings(generated_report)
        out["findings"] = {"reference": len(ref), "generated": len(gen), "found": len(set(ref) & set(gen)),
                           "false": len(set(gen) - set(ref)),
                           "size_errors_mm": [abs(gen[k].size_mm - ref[k].size_mm) for k in set(ref) & set(gen)
                                              if gen[k].size_mm is not None and ref[k].size_mm is not None]}
    for qa in case.vqa_closed:
        right = qa.choices[CHOICE_LETTERS.index(qa.answer)]
        order = [qa.choices[i] for i in rng.permutation(len(qa.choices))]
        again = ClosedQA(qa.question, order, CHOICE_LETTERS[order.index(right)])
        generated = "".join(session.ask(again.prompt())).strip()
        out["closed_shuffled"].append({"question": again.prompt(), "answer": again.answer, "generated": generated,
                                       "correct": closed_correct(generated, again.answer)})
    if getattr(session.model, "region_trained", False):
        out["region"] = _region_answers(session, case)  # a bundle with an untrained region encoder refuses them
    return out


def _region_answers(session, case) -> list[dict]:
    """The generator's questions about each lesion, the cyst and the spleen (``CTCase.region_qa``), the reference
    region as the asked-about segment."""
    by_region: dict[tuple, list] = {}
    for qa in case.region_qa:
        if qa.values in REGION_VALUES:
            by_region.setdefault((qa.values, qa.component), []).append(qa)
    out = []
    for qas in by_region.values():
        obj = session.add_object("region")
        session._objects[obj].mask = qas[0].mask(case.labels).astype(np.uint8)
        for qa in qas:
            answer = "".join(session.ask(qa.question, context={"object": obj})).strip().lower()
            out.append({"question": qa.question, "reference": qa.answer, "answer": answer,
                        "correct": region_correct(qa.question, qa.answer, answer)})
        session.remove(obj)
    return out


def region_correct(question: str, reference: str, answer: str) -> bool:
    """A size within 5 mm (findings) or 1 cm (organs) of the reference's; "yes"/"no" as the reference's; otherwise
    every word of the reference but its filler ("This is a cyst in the left kidney." -> cyst, left, kidney)."""
    words = lambda t: re.findall(r"[a-z]+", t.lower())  # noqa: E731
    if question == "How large is it?":
        ref, got = (re.search(r"(\d+) (mm|cm)\b", t.lower()) for t in (reference, answer))
        tolerance = 5 if ref and ref[2] == "mm" else 1
        return bool(ref and got) and got[2] == ref[2] and abs(int(got[1]) - int(ref[1])) <= tolerance
    if reference.lower() in ("yes", "no"):
        return words(answer)[:1] == [reference.lower()]
    return set(words(reference)) - _FILLER <= set(words(answer))


def _touches(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether mask ``a`` borders mask ``b`` (a cyst lies inside its kidney)."""
    from scipy.ndimage import binary_dilation

    return bool((binary_dilation(a, iterations=2) & b).any())


def summarise_language(records: list[dict]) -> dict:
    rows = [r["language"] for r in records if "language" in r]
    mean = lambda v: float(np.mean(v)) if len(v) else float("nan")  # noqa: E731
    ref = {t: [x["dice"] for r in rows for x in r["referring"] if x["target"] == t] for t in ("liver lesion", "renal cyst")}
    multi: dict[str, list[float]] = {}
    for r in rows:
        for x in r["multi"]:
            multi.setdefault(x["target"], []).append(x["dice"])
    absent = [x["no_object"] for r in rows for x in r["absent"]]
    f = [r["findings"] for r in rows if "findings" in r]
    closed = [x["correct"] for r in rows for x in r["closed_shuffled"]]
    sizes = [e for x in f for e in x["size_errors_mm"]]
    out = {"n": len(rows),
           "referring": {t: {"dice": mean(v), "n": len(v)} for t, v in ref.items()},
           "multi": {t: {"dice": mean(v), "n": len(v)} for t, v in multi.items()},
           "absent": {"no_object_rate": mean(absent), "n": len(absent)},
           "findings": {"recall": sum(x["found"] for x in f) / max(1, sum(x["reference"] for x in f)),
                        "false_rate": sum(x["false"] for x in f) / max(1, sum(x["generated"] for x in f)),
                        "size_error_mm": mean(sizes), "within_5mm": mean([e <= 5 for e in sizes]),
                        "reference": sum(x["reference"] for x in f), "generated": sum(x["generated"] for x in f)},
           "closed_shuffled": {"accuracy": mean(closed), "n": len(closed)}}
    region = [x for r in rows for x in r.get("region", [])]
    if region:  # a constant answer scores the share of regions it fits: the distinct answers show it
        out["region"] = {q: {"accuracy": mean([x["correct"] for x in region if x["question"] == q]),
                             "n": sum(x["question"] == q for x in region),
                             "distinct_answers": len({x["answer"] for x in region if x["question"] == q})}
                         for q in dict.fromkeys(x["question"] for x in region)}
    return out


def language_markdown(s: dict) -> list[str]:
    f = s["findings"]
    lines = ["Language grounding (held-out phrasings; see evaluation/language.py):", "",
             "| Measure | Value | n |", "|---|---|---|"]
    lines += [f"| referring Dice, {t} | {v['dice']:.3f} | {v['n']} |" for t, v in s["referring"].items()]
    lines += [f"| multi-target Dice, {t} | {v['dice']:.3f} | {v['n']} |" for t, v in s["multi"].items()]
    lines += [f"| absent target: no-object rate | {s['absent']['no_object_rate']:.3f} | {s['absent']['n']} |",
              f"| report finding recall | {f['recall']:.3f} | {f['reference']} |",
              f"| report false-finding rate | {f['false_rate']:.3f} | {f['generated']} |",
              f"| report size error (mm, mean) / within 5 mm | {f['size_error_mm']:.1f} / {f['within_5mm']:.2f} | |",
              f"| closed VQA, reshuffled choices | {s['closed_shuffled']['accuracy']:.3f} | {s['closed_shuffled']['n']} |"]
    for q, r in s.get("region", {}).items():
        lines.append(f"| region input: \"{q}\" ({r['distinct_answers']} distinct answers) | {r['accuracy']:.3f} | "
                     f"{r['n']} |")
    return lines + [""]
