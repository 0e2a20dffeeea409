"""Propagation cost the user feels: early stop, background encoding, and engine memory over many calls
(prints numbers and writes JSON; not a test).

    python Testing/Benchmarks/propagation.py [--model Resources/DemoWeights] [--seed 100000]
        [--structure "right kidney"] [--clicks 1000] [--propagations 100] [--out propagation.json]
    python Testing/Benchmarks/propagation.py --head-ct [--image-size 512] --skip memory --out head.json

1. Early stop: one click on the structure's middle slice, then a whole-volume propagation, with the
   default stop rule and with it disabled (fresh Session each, features included).
2. Background encoding: click + first propagation in a Session whose prefetch has finished, over the
   same in a fresh Session without prefetch (early stop disabled in both, so the same slices run).
3. Memory: ``--clicks`` clicks and ``--propagations`` propagations on one object of the 32x128x128
   phantom; engine RSS growth (ru_maxrss and the current RSS from /proc) after the first call.
Early stop needs a model that says where the object ends, so this uses trained weights (the demo bundle).
``--head-ct`` runs parts 1-2 on the benchmarks' real head CT (``headct.py``, 108 slices) at ``--image-size``
instead: the object is one eyeball (about a fifth of the slices), its reference the connected
-20..40 HU component around ``--head-seed`` after a 2-voxel opening (vitreous against orbital fat; an
approximate reference, good enough to tell a chain that followed the globe from one that left it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def head_ct_object(seed_ijk: tuple[int, int, int]):
    """(head CT Volume, boolean reference [K, J, I]) of the -20..40 HU component holding ``seed_ijk``."""
    from scipy import ndimage

    from headct import read_ct

    volume = read_ct()
    hu = volume.array
    i, j, k = seed_ijk
    labels, _ = ndimage.label(ndimage.binary_opening((hu > -20) & (hu < 40), iterations=2))
    if labels[k, j, i] == 0:
        raise SystemExit(f"--head-seed {i},{j},{k} is not inside a -20..40 HU component; pick a voxel inside the object")
    return volume, labels == labels[k, j, i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Resources/DemoWeights")
    parser.add_argument("--seed", type=int, default=100000)
    parser.add_argument("--structure", default="right kidney")
    parser.add_argument("--clicks", type=int, default=1000)
    parser.add_argument("--propagations", type=int, default=100)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: stop,prefetch,memory")
    parser.add_argument("--head-ct", action="store_true", help="an eyeball of the real head CT, not a phantom")
    parser.add_argument("--head-seed", default="101,185,39", help="i,j,k of a voxel inside the head CT's object")
    parser.add_argument("--image-size", type=int, default=512, help="SAM2 input size with --head-ct")
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.evaluation.interactive import initial_click
    from medvlsam2.evaluation.seg_metrics import dice
    from medvlsam2.factory import load_model
    from medvlsam2.session import Session

    if args.head_ct:
        model = load_model(args.model, image_size=args.image_size)
        volume, ref = head_ct_object(tuple(int(v) for v in args.head_seed.split(",")))
        structure = "eyeball (head CT)"
    else:
        model = load_model(args.model)
        case = generate_case(args.seed)
        volume, ref, structure = case.volume, case.mask(args.structure) > 0, args.structure
    seg = model.segmenter
    default_cfg = seg.config
    slices = np.flatnonzero(ref.any(axis=(1, 2)))
    click = [list(initial_click(ref, volume.spacing))]  # the interactive protocol's click start
    out = {"model": args.model, "structure": structure, "object_slices": [int(slices[0]), int(slices[-1])],
           "volume_slices": int(volume.shape[0]), "image_size": seg.image_size, "load_before": os.getloadavg()}
    skip = set(args.skip.split(","))

    def timed_propagation(session: Session, stop: bool) -> tuple[float, int, float]:
        # without: the run to the volume's ends a user had before (memory propagation, no stop rule); with: the
        # model's own settings (the demo bundle's box chain ends where the object's mask ends)
        seg.config = default_cfg if stop else dataclasses.replace(default_cfg, stop_after_slices=10**6,
                                                                  propagation="memory")
        obj = session.add_object()
        t = time.perf_counter()
        session.add_points(obj, click, [1])
        result = session.propagate(obj)
        seconds = time.perf_counter() - t
        seg.config = default_cfg
        return seconds, len(result.scores), dice(session.mask(obj), ref)

    if "stop" not in skip:
        with_stop = timed_propagation(Session(model, volume), stop=True)
        without = timed_propagation(Session(model, volume), stop=False)
        out["early_stop"] = {"with_s": with_stop[0], "with_slices": with_stop[1], "with_dice": with_stop[2],
                             "without_s": without[0], "without_slices": without[1], "without_dice": without[2],
                             "ratio": with_stop[0] / without[0]}
        print(f"early stop: {with_stop[0]:.2f} s over {with_stop[1]} slices (Dice {with_stop[2]:.3f}) vs "
              f"{without[0]:.2f} s over {without[1]} slices (Dice {without[2]:.3f}): ratio {with_stop[0] / without[0]:.2f}")

    if "prefetch" not in skip:
        warm = Session(model, volume, prefetch=True)
        warm._prefetcher.join()
        after_prefetch = timed_propagation(warm, stop=False)
        cold = timed_propagation(Session(model, volume), stop=False)
        out["prefetch"] = {"after_prefetch_s": after_prefetch[0], "without_s": cold[0], "ratio": after_prefetch[0] / cold[0]}
        print(f"first propagation after background encoding {after_prefetch[0]:.2f} s vs without {cold[0]:.2f} s: "
              f"ratio {after_prefetch[0] / cold[0]:.2f}")
        warm.close()

    if "memory" not in skip:
        session = Session(model, volume)
        obj = session.add_object()
        rng = np.random.default_rng(0)
        inside, outside = np.argwhere(ref), np.argwhere(~ref)
        session.add_points(obj, click, [1])
        session.propagate(obj)
        base = rss_mb()
        t = time.perf_counter()
        every = max(1, args.clicks // max(1, args.propagations))
        propagations = 0
        for n in range(args.clicks):
            positive = n % 2 == 0
            k, j, i = (inside if positive else outside)[rng.integers(len(inside if positive else outside))]
            session.add_points(obj, [[i, j, k]], [1 if positive else -1])
            if (n + 1) % every == 0 and propagations < args.propagations:
                session.propagate(obj)
                propagations += 1
        grown = rss_mb() - base
        out["memory"] = {"clicks": args.clicks, "propagations": propagations, "rss_growth_mb": grown,
                         "history_mb": session.history_bytes / 2**20, "seconds": time.perf_counter() - t}
        print(f"{args.clicks} clicks + {propagations} propagations: RSS +{grown:.1f} MB "
              f"(history {session.history_bytes / 2**20:.1f} MB) in {time.perf_counter() - t:.0f} s")
    out["load_after"] = os.getloadavg()
    print(f"load {out['load_before']} -> {out['load_after']}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
