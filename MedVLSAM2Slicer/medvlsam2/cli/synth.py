"""``medvlsam2 synth OUT``: write synthetic abdominal CT phantoms in the public dataset layouts."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("synth", help="write synthetic CT phantoms (MSD, M3D-Cap, M3D-VQA, M3D-RefSeg layouts)")
    p.add_argument("out", help="output folder")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="first seed; case n uses seed+n (keep >= 100000 for held-out sets)")
    p.add_argument("--shape", default="32,128,128", help="slices,rows,columns")
    p.add_argument("--findings", help='force findings in every case, JSON, e.g. \'{"renal_cyst": "left", '
                                      '"liver_lesions": [20], "splenomegaly": true}\' (default: drawn per seed)')
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
    findings = None
    if args.findings:
        import json

        try:
            findings = json.loads(args.findings)
        except json.JSONDecodeError:
            raise InputError(f"--findings must be a JSON object, got {args.findings!r}") from None
        if not isinstance(findings, dict):
            raise InputError("--findings must be a JSON object such as '{\"renal_cyst\": \"left\"}'")
    # Keep the field of view (about 36 x 36 x 16 cm) whatever the matrix size.
    spacing = (358.4 / shape[2], 358.4 / shape[1], 160.0 / shape[0])
    try:  # a bad findings key or shape fails here, before any file is written
        first = generate_case(args.seed, shape, spacing, findings)
    except ValueError as exc:
        raise InputError(f"cannot generate these phantoms: {exc}") from None
    cases = (first if n == 0 else generate_case(args.seed + n, shape, spacing, findings) for n in range(args.cases))
    root = write_dataset(tqdm(cases, total=args.cases, desc="phantoms", unit="case"), args.out, ORGANS)
    print(f"wrote {args.cases} synthetic cases (not clinical images) to {root}")
    return 0
