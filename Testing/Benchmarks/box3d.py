"""A 3D box alone (issue 13): Dice of ``Session.add_box(3D box)`` then ``propagate()`` with NO slice range, and the
voxels written outside the box's k-range (goal: Dice >= 0.90, zero voxels outside), on held-out phantoms.

The box is the interactive protocol's initial box (``evaluation.interactive.initial_box``: the reference's 2D
box on its middle slice, with its slice range). Prints a table and writes JSON.

    python Testing/Benchmarks/box3d.py --model Resources/DemoWeights --seeds 100000-100009 \
        --structures "liver,spleen,right kidney,left kidney" --out box3d.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="Resources/DemoWeights")
    p.add_argument("--seeds", default="100000-100009", help="held-out phantom seeds first-last (>= 100000)")
    p.add_argument("--structures", default="liver,spleen,right kidney,left kidney")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from medvlsam2.data.synthetic import STRUCTURE_LABELS, generate_case
    from medvlsam2.evaluation.interactive import initial_box
    from medvlsam2.evaluation.seg_metrics import dice
    from medvlsam2.factory import load_model
    from medvlsam2.session import Session

    first, last = (int(v) for v in args.seeds.split("-"))
    if first < 100000:
        raise SystemExit("--seeds must be held-out phantoms (>= 100000)")
    names = [s.strip() for s in args.structures.split(",")]
    model = load_model(args.model)
    rows: list[dict] = []
    summary, mean = {}, float("nan")
    for seed in range(first, last + 1):
        case = generate_case(seed)
        session = Session(model, case.volume)
        for name in names:
            ref = np.isin(case.labels, STRUCTURE_LABELS[name])
            if not ref.any():
                continue
            box = initial_box(ref)
            obj = session.add_object(name)
            t0 = time.perf_counter()
            session.add_box(obj, box)
            session.propagate(obj)
            pred = session.mask(obj) > 0
            k0, k1 = box[2], box[5]
            outside = int(pred[:k0].sum() + pred[k1 + 1:].sum())
            rows.append({"seed": seed, "structure": name, "box": list(box), "dice": dice(pred, ref),
                         "voxels_outside_k_range": outside, "seconds": time.perf_counter() - t0})
            session.remove(obj)
            summary, mean = _write(args, names, first, last, rows)  # after every structure: a stopped run keeps it
    print("| structure | Dice (3D box alone) | voxels outside k-range | n |")
    print("|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['dice']:.3f} | {s['voxels_outside_k_range']} | {s['n']} |")
    print(f"mean Dice {mean:.3f}")


def _write(args, names: list[str], first: int, last: int, rows: list[dict]) -> tuple[dict, float]:
    summary = {}
    for name in names:
        mine = [r for r in rows if r["structure"] == name]
        if mine:
            summary[name] = {"dice": float(np.mean([r["dice"] for r in mine])),
                             "voxels_outside_k_range": int(sum(r["voxels_outside_k_range"] for r in mine)),
                             "n": len(mine)}
    mean = float(np.mean([s["dice"] for s in summary.values()])) if summary else float("nan")
    with open(args.out, "w") as fh:
        json.dump({"model": args.model, "seeds": [first, last], "summary": summary, "mean_dice": mean, "cases": rows},
                  fh, indent=2)
    return summary, mean


if __name__ == "__main__":
    main()
