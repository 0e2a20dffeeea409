"""``medvlsam2 synth OUT``: write synthetic abdominal CT phantoms in the public dataset layouts."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("synth", help="write synthetic CT phantoms (MSD, M3D-Cap, M3D-VQA, M3D-RefSeg layouts)")
    p.add_argument("out", help="output folder")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="first seed; case n uses seed+n (keep >= 100000 for held-out sets)")
    p.add_argument("--shape", default="32,128,128", help="slices,rows,columns")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.synthetic import ORGANS, generate_case
    from ..data.writers import write_dataset
    from ..errors import InputError

    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        raise InputError(f"--shape must be three integers like 32,128,128, got {args.shape!r}") from None
    if len(shape) != 3 or args.cases < 1:
        raise InputError("--shape needs three sizes and --cases at least 1")
    # Keep the field of view (about 36 x 36 x 16 cm) whatever the matrix size.
    spacing = (358.4 / shape[2], 358.4 / shape[1], 160.0 / shape[0])
    cases = (generate_case(args.seed + n, shape, spacing) for n in range(args.cases))
    root = write_dataset(tqdm(cases, total=args.cases, desc="phantoms", unit="case"), args.out, ORGANS)
    print(f"wrote {args.cases} synthetic cases (not clinical images) to {root}")
    return 0
