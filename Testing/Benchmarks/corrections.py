"""Dice after the box and after each simulated click, with SAM2's ``add_all_frames_to_correct_as_cond``
on and off (prints a table and writes JSON; not a test).

    python Testing/Benchmarks/corrections.py [--model Resources/DemoWeights] [--seeds 100000-100009]
        [--structures liver,spleen,right kidney,left kidney] [--clicks 5] [--propagation memory|box]
        [--start box|click] [--out corrections.json]

On: a click on a propagated slice becomes a conditioning slice (kept by re-propagation, attended by
every slice). Off: upstream's default, the corrected slice stays a non-conditioning output. The setting acts
on SAM2's memory propagation (``--propagation memory``, how released SAM2.1/MedSAM2 files and text prompts
propagate); ``box`` is the demo bundle's box chain. The steps are the interactive protocol's
(``medvlsam2.evaluation.interactive``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Resources/DemoWeights")
    parser.add_argument("--seeds", default="100000-100009")
    parser.add_argument("--structures", default="liver,spleen,right kidney,left kidney")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--propagation", choices=["memory", "box"], help="default: the model's own")
    parser.add_argument("--start", choices=["box", "click"], default="box")
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.evaluation.interactive import run_interactive
    from medvlsam2.factory import load_model
    from medvlsam2.session import Session

    model = load_model(args.model)
    if args.propagation:
        model.segmenter.config = dataclasses.replace(model.segmenter.config, propagation=args.propagation)
    lo, hi = (int(v) for v in args.seeds.split("-"))
    structures = [s.strip() for s in args.structures.split(",")]
    rows = []
    for as_cond in (True, False):
        model.segmenter.add_all_frames_to_correct_as_cond = as_cond
        for seed in range(lo, hi + 1):
            case = generate_case(seed)
            session = Session(model, case.volume)
            for name in structures:
                t = time.perf_counter()
                result = run_interactive(session, case.mask(name), name, args.clicks, start=args.start)
                rows.append({"as_cond": as_cond, "seed": seed, "structure": name, "dice": result.dice_curve,
                             "seconds": time.perf_counter() - t})
                print(f"as_cond={as_cond!s:5} seed={seed} {name:13} dice " + " ".join(f"{d:.3f}" for d in result.dice_curve),
                      flush=True)
            session.close()
    for as_cond in (True, False):
        curves = np.array([r["dice"] for r in rows if r["as_cond"] == as_cond])
        print(f"mean as_cond={as_cond!s:5}: " + " ".join(f"{d:.3f}" for d in curves.mean(0)))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"model": args.model, "clicks": args.clicks, "start": args.start,
                       "propagation": model.segmenter.config.propagation, "rows": rows, "load": os.getloadavg()}, fh, indent=2)


if __name__ == "__main__":
    main()
