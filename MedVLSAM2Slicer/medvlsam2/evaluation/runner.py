"""Evaluate a model on ``CTCase`` records: text-prompted Dice/NSD per structure, the interactive protocol,
report metrics and closed/open VQA. Results are a JSON-ready dict; ``to_markdown`` renders its tables.

Use ``evaluate_case`` per case (so a caller can show progress) and ``summarise`` on the records, or
``evaluate`` for both. Structures absent from a case are skipped for that case (no reference to score).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import InputError
from .interactive import DEFAULT_CLICKS, STARTS, run_interactive
from .seg_metrics import NSD_TOLERANCE_MM, dice, nsd
from .text_metrics import CONVENTIONS, text_scores
from .vqa import closed_accuracy, closed_correct, open_scores

TASKS = ("seg", "interactive", "report", "vqa", "language", "honesty")
DEFAULT_TASKS = TASKS[:4]  # "language" and "honesty" need the synthetic phantoms' labels and findings (evaluation/language.py)


@dataclass
class EvalOptions:
    """What to evaluate. ``structures``: target name -> label values; None = each name in a case's ``label_names``."""

    tasks: Sequence[str] = DEFAULT_TASKS
    structures: dict[str, list[int]] | None = None
    interactive_structures: Sequence[str] | None = None  # None = the same as ``structures``
    clicks: int = DEFAULT_CLICKS
    interactive_start: str = "box"  # step 0 of the interactive protocol: "box" or "click" (evaluation/interactive.py)
    tolerance_mm: float = NSD_TOLERANCE_MM
    conventions: Sequence[str] = CONVENTIONS
    bertscore_model: str | None = None
    max_questions: int | None = None  # per case and kind (closed/open); None = all

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise InputError(f"unknown or no evaluation task(s) {sorted(unknown)}; choose from {','.join(TASKS)}")
        if self.interactive_start not in STARTS:
            raise InputError(f"the interactive protocol starts with one of {', '.join(STARTS)}, "
                             f"got {self.interactive_start!r}")
        bad = set(self.conventions) - set(CONVENTIONS)
        if bad:
            raise InputError(f"unknown text-metric convention(s) {sorted(bad)}; choose from {CONVENTIONS}")
        if self.clicks < 0:
            raise InputError("the number of simulated clicks must be >= 0")


def _targets(case, options: EvalOptions) -> dict[str, np.ndarray]:
    """Reference masks of the structures present in ``case`` (name -> bool array)."""
    if case.labels is None:
        raise InputError(f"case {case.case_id} has no label map; drop the seg/interactive tasks for it")
    if options.structures is None:
        groups: dict[str, list[int]] = {}
        for value, name in case.label_names.items():
            groups.setdefault(name, []).append(value)
    else:
        groups = dict(options.structures)
    masks = {name: np.isin(case.labels, values) for name, values in groups.items()}
    return {name: m for name, m in masks.items() if m.any()}


def _text(pieces: Iterable[str]) -> str:
    return "".join(pieces).strip()


def evaluate_case(model, case, options: EvalOptions) -> dict:
    """Run every requested task on one case; returns its per-case record (scores, generated texts, times)."""
    from ..session import Session

    start = time.perf_counter()
    session = Session(model, case.volume)
    spacing = case.volume.spacing
    record: dict = {"case_id": case.case_id}
    needs_labels = {"seg", "interactive"} & set(options.tasks)
    targets = _targets(case, options) if needs_labels else {}
    if "seg" in options.tasks:
        record["seg"] = []
        for name, ref in targets.items():
            t0 = time.perf_counter()
            results = session.segment_text(name).found
            pred = np.zeros(ref.shape, bool)
            for r in results:
                pred |= session.mask(r.object_id) > 0
                session.remove(r.object_id)
            record["seg"].append({"structure": name, "dice": dice(pred, ref),
                                  "nsd": nsd(pred, ref, spacing, options.tolerance_mm),
                                  "objects": len(results), "seconds": time.perf_counter() - t0})
    if "interactive" in options.tasks:
        record["interactive"] = []
        wanted = options.interactive_structures
        for name, ref in targets.items():
            if wanted is not None and name not in wanted:
                continue
            res = run_interactive(session, ref, name, options.clicks, options.tolerance_mm, options.interactive_start)
            record["interactive"].append({"structure": name, **res.to_dict()})
    if "report" in options.tasks and case.report:
        record["report"] = {"reference": case.report, "generated": _text(session.report())}
    if "vqa" in options.tasks:
        limit = options.max_questions
        record["vqa_closed"] = []
        for q in case.vqa_closed[:limit]:
            generated = _text(session.ask(q.prompt()))
            record["vqa_closed"].append({"question": q.prompt(), "answer": q.answer, "choices": len(q.choices),
                                         "generated": generated, "correct": closed_correct(generated, q.answer)})
        record["vqa_open"] = [{"question": q.question, "answer": q.answer, "generated": _text(session.ask(q.question))}
                              for q in case.vqa_open[:limit]]
    if "language" in options.tasks:
        from .language import evaluate_language

        report = record["report"]["generated"] if "report" in record else _text(session.report())
        record["language"] = evaluate_language(session, case, report, options.structures or {})
    if "honesty" in options.tasks:
        from .honesty import evaluate_honesty

        record["honesty"] = evaluate_honesty(session, case)
    record["seconds"] = time.perf_counter() - start
    return record


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def summarise(records: Sequence[dict], options: EvalOptions) -> dict:
    """Aggregate per-case records into per-structure and per-task means."""
    out: dict = {"n_cases": len(records), "tasks": list(options.tasks), "tolerance_mm": options.tolerance_mm,
                 "seconds": sum(r["seconds"] for r in records)}
    if "seg" in options.tasks:
        rows: dict[str, list[dict]] = {}
        for r in records:
            for s in r.get("seg", []):
                rows.setdefault(s["structure"], []).append(s)
        out["seg"] = {name: {"dice": _mean([s["dice"] for s in v]), "nsd": _mean([s["nsd"] for s in v]),
                             "n": len(v), "seconds": _mean([s["seconds"] for s in v])} for name, v in rows.items()}
    if "interactive" in options.tasks:
        rows = {}
        for r in records:
            for s in r.get("interactive", []):
                rows.setdefault(s["structure"], []).append(s)
        out["interactive"], out["interactive_start"] = {}, options.interactive_start
        for name, v in rows.items():
            steps = len(v[0]["steps"])
            out["interactive"][name] = {
                "dice_per_step": [_mean([s["steps"][i]["dice"] for s in v]) for i in range(steps)],
                "nsd_per_step": [_mean([s["steps"][i]["nsd"] for s in v]) for i in range(steps)],
                "dice_auc": _mean([s["dice_auc"] for s in v]), "nsd_auc": _mean([s["nsd_auc"] for s in v]),
                "final_dice": _mean([s["final_dice"] for s in v]), "final_nsd": _mean([s["final_nsd"] for s in v]),
                "seconds_per_case": _mean([s["seconds"] for s in v]), "n": len(v)}
    if "report" in options.tasks:
        pairs = [r["report"] for r in records if "report" in r]
        if pairs:
            gen, ref = [p["generated"] for p in pairs], [p["reference"] for p in pairs]
            out["report"] = {c: text_scores(gen, ref, c, options.bertscore_model) for c in options.conventions}
            out["report"]["n"] = len(pairs)
    if "vqa" in options.tasks:
        closed = [q for r in records for q in r.get("vqa_closed", [])]
        opened = [q for r in records for q in r.get("vqa_open", [])]
        out["vqa"] = {}
        if closed:
            out["vqa"]["closed"] = closed_accuracy([q["generated"] for q in closed], [q["answer"] for q in closed],
                                                   [q["choices"] for q in closed])
        if opened:
            gen, ans = [q["generated"] for q in opened], [q["answer"] for q in opened]
            out["vqa"]["open"] = {c: open_scores(gen, ans, c, options.bertscore_model) for c in options.conventions}
    if "language" in options.tasks:
        from .language import summarise_language

        out["language"] = summarise_language(records)
    if "honesty" in options.tasks:
        from .honesty import summarise_honesty

        out["honesty"] = summarise_honesty(records)
    return out


def evaluate(model, cases: Sequence, options: EvalOptions | None = None,
             on_case: Callable[[dict], None] | None = None) -> dict:
    """Evaluate ``model`` on ``cases``: ``{"summary": ..., "cases": [per-case records]}``."""
    options = options or EvalOptions()
    if not cases:
        raise InputError("no cases to evaluate")
    records = []
    for case in cases:
        records.append(evaluate_case(model, case, options))
        if on_case:
            on_case(records[-1])
    return {"summary": summarise(records, options), "cases": records}


# ----- Markdown -------------------------------------------------------------------------------------------
def _f(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _text_table(title: str, by_convention: dict, missing: dict[str, str]) -> list[str]:
    """One table per convention; reasons for metrics not computed are collected into ``missing``."""
    lines = []
    for conv, scores in by_convention.items():
        if not isinstance(scores, dict):
            continue
        names = [k for k, v in scores.items() if k not in ("unavailable", "n") and not isinstance(v, str)]
        notes = "".join(f"; {k.replace('_', ' ')}: {v}" for k, v in scores.items() if isinstance(v, str))
        lines += [f"{title} ({conv} convention, fractions of 1{notes}):", "",
                  "| " + " | ".join(names) + " |", "|" + "---|" * len(names),
                  "| " + " | ".join(_f(scores[k]) for k in names) + " |", ""]
        missing.update(scores.get("unavailable", {}))
    return lines


def to_markdown(summary: dict, title: str = "Evaluation") -> str:
    """Markdown tables of a ``summarise`` result."""
    lines = [f"### {title}", "", f"{summary['n_cases']} case(s); NSD tolerance {summary['tolerance_mm']:g} mm; "
             f"total {summary['seconds']:.0f} s.", ""]
    missing: dict[str, str] = {}
    seg = summary.get("seg")
    if seg:
        lines += ["Text-prompted segmentation (prompt = structure name):", "",
                  "| Structure | Dice | NSD | n | s/case |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {_f(v['dice'])} | {_f(v['nsd'])} | {v['n']} | {_f(v['seconds'], 1)} |" for n, v in seg.items()]
        lines += [f"| **mean** | {_f(_mean([v['dice'] for v in seg.values()]))} | "
                  f"{_f(_mean([v['nsd'] for v in seg.values()]))} | | |", ""]
    inter = summary.get("interactive")
    if inter:
        steps = max(len(v["dice_per_step"]) for v in inter.values())
        head = [summary.get("interactive_start", "box")] + [f"+{i} click" for i in range(1, steps)]
        lines += ["Interactive protocol (Dice after each step):", "",
                  "| Structure | " + " | ".join(head) + " | final NSD | Dice AUC | NSD AUC | s/case | n |",
                  "|" + "---|" * (len(head) + 6)]
        for n, v in inter.items():
            lines.append(f"| {n} | " + " | ".join(_f(d) for d in v["dice_per_step"]) +
                         f" | {_f(v['final_nsd'])} | {_f(v['dice_auc'], 2)} | {_f(v['nsd_auc'], 2)} | "
                         f"{_f(v['seconds_per_case'], 1)} | {v['n']} |")
        lines.append("")
    if summary.get("report"):
        lines += _text_table(f"Report generation, {summary['report']['n']} report(s)", summary["report"], missing)
    vqa = summary.get("vqa") or {}
    if "closed" in vqa:
        c = vqa["closed"]
        lines += [f"Closed VQA: accuracy {_f(c['accuracy'])} on {c['n']} question(s) "
                  f"(chance {_f(c.get('chance', float('nan')))}).", ""]
    if "open" in vqa:
        lines += _text_table("Open VQA", vqa["open"], missing)
    if summary.get("language"):
        from .language import language_markdown

        lines += language_markdown(summary["language"])
    if summary.get("honesty"):
        from .honesty import honesty_markdown

        lines += honesty_markdown(summary["honesty"])
    lines += [f"- {metric}: not computed ({reason})" for metric, reason in missing.items()]
    return "\n".join(lines).rstrip() + "\n"
