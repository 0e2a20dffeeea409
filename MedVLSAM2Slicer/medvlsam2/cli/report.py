"""``medvlsam2 report IMAGE -o report.md [--prompt TEXT ...] [--segmentation MASK]``: stream a draft findings
report and save it as Markdown, headed by what model made it and every warning that fired (``report.writer``); with
segments (text prompts segmented by the model, or a label map with its
``.labels.json`` names) the report gains measurements computed from them and flags the generated
statements they contradict (``medvlsam2.report.writer``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError
from .common import add_model_arguments, load_model_for, warn_if_unfamiliar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="draft a findings report for a CT (streams, then writes Markdown)")
    p.add_argument("image", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("-o", "--output", required=True, help="Markdown file to write")
    p.add_argument("--prompt", action="append", default=[],
                   help="segment this with the model and measure it (repeatable, e.g. 'liver lesion')")
    p.add_argument("--segmentation", help="label map to measure (names from its .labels.json sidecar if present)")
    add_model_arguments(p)
    p.set_defaults(func=run)


def read_segments(path: str, volume) -> dict:
    """Label map -> {name: mask}; names from ``medvlsam2 segment``'s sidecar JSON, else "label N"."""
    import numpy as np

    from ..data.datasets import load_labels
    from .segment import label_names_path

    labels = load_labels(path, volume)
    sidecar = label_names_path(Path(path))
    names = {}
    if sidecar.is_file():
        try:
            names = {int(k): str(v) for k, v in json.loads(sidecar.read_text()).items()}
        except (ValueError, AttributeError):
            raise InputError(f"{sidecar.name} must map label values to names, e.g. {{\"1\": \"liver\"}}") from None
    return {names.get(int(v), f"label {int(v)}"): (labels == v) for v in np.unique(labels) if v}


def run(args: argparse.Namespace) -> int:
    from ..io.volume import read_volume
    from ..report.writer import write_report
    from ..api import SessionAPI
    from ..session import Session

    from .segment import DOUBTFUL, not_found_line

    model, volume = load_model_for(args)[0], read_volume(args.image)
    unfamiliar = warn_if_unfamiliar(model, volume)

    session: SessionAPI = Session(model, volume, cache_mb=args.cache_mb)
    segments = read_segments(args.segmentation, volume) if args.segmentation else {}
    warnings = []
    for prompt in args.prompt:
        text = session.segment_text(prompt)
        for r in text.found:
            segments[r.name] = session.mask(r.object_id) > 0
            warnings += r.warnings
        for miss in text.not_found:
            print(f"Not delivered: {not_found_line(miss)}; it is not measured.", file=sys.stderr)
            warnings.append(f"not measured: {not_found_line(miss)}")
    pieces = []
    for piece in session.report():
        pieces.append(piece)
        print(piece, end="", flush=True)
    print()
    out = write_report(args.output, "".join(pieces), volume, segments, model=model, warnings=warnings)
    print(f"wrote {out}")
    return DOUBTFUL if warnings or unfamiliar else 0  # as `segment`: the report was written, with doubts
