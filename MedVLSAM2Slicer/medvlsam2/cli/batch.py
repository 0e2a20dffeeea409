"""``medvlsam2 batch (FOLDER | cases.csv) --prompt TEXT ... -o OUTDIR``: many CTs, resumable.

Each case gets ``OUTDIR/<case>/`` with ``mask.nii.gz`` (one label per prompt) and optionally
``report.md``; a ``.complete`` marker is written last, so an interrupted run redoes only unfinished
cases. A case that fails is recorded in ``summary.csv`` and the others continue.
"""

from __future__ import annotations

import argparse
import csv
import re
import time
from pathlib import Path

from ..errors import InputError
from .common import add_model_arguments, load_model_for, warn_if_unfamiliar

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
MARKER = ".complete"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="segment (and report on) every CT of a folder or CSV; resumable")
    p.add_argument("cases", help="folder of CT files / DICOM series folders, or a CSV with an 'image' column")
    p.add_argument("--prompt", action="append", default=[], help="structure to segment (repeatable)")
    p.add_argument("--report", action="store_true", help="also write a draft report per case")
    p.add_argument("-o", "--output", required=True, help="output folder")
    add_model_arguments(p)
    p.set_defaults(func=run)


def list_cases(source: str | Path) -> list[tuple[str, Path]]:
    """(case id, image path) pairs from a folder (files and DICOM folders) or a CSV with 'image' [, 'case_id']."""
    src = Path(source)
    if src.is_file() and src.suffix == ".csv":
        with open(src, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "image" not in (reader.fieldnames or []):
                raise InputError(f"{src.name} needs an 'image' column (and optionally 'case_id')")
            rows = [(r.get("case_id") or "", (src.parent / r["image"]).resolve()) for r in reader]
    elif src.is_dir():
        rows = [("", p) for p in sorted(src.iterdir()) if p.is_dir() or p.name.endswith(IMAGE_SUFFIXES)]
    else:
        raise InputError(f"{src} is neither a folder nor a .csv file")
    cases, seen = [], set()
    for case_id, path in rows:
        case_id = case_id or re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$", "", path.name)
        if case_id in seen:
            raise InputError(f"case id {case_id!r} appears twice; give unique names or a 'case_id' column")
        seen.add(case_id)
        cases.append((case_id, path))
    if not cases:
        raise InputError(f"no CT files ({', '.join(IMAGE_SUFFIXES)}) or DICOM folders in {src}")
    return cases


def process_case(model, image: Path, out: Path, prompts: list[str], report: bool, cache_mb: float | None = None,
                 warn: bool = False) -> int:
    """Write one case's outputs into ``out`` and return the number of segmented voxels.

    ``warn``: print the domain warning if this CT is unlike the model's training data (the caller warns once).
    """
    import numpy as np

    from ..io.volume import read_volume, write_mask
    from ..results import label_map
    from ..session import Session

    volume = read_volume(image)
    if warn:
        warn_if_unfamiliar(model, volume)
    session = Session(model, volume, cache_mb=cache_mb)
    per_prompt = []
    for prompt in prompts:  # one value per prompt: the union of the objects its [SEG] tokens produced
        masks = [session.mask(r.object_id) > 0 for r in session.segment_text(prompt).found]
        per_prompt.append(np.any(masks, axis=0) if masks else np.zeros(volume.shape, bool))  # none: the model found none
    labels = label_map(per_prompt) if prompts else np.zeros(volume.shape, np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    if prompts:
        write_mask(labels, volume, out / "mask.nii.gz")
    if report:
        from ..report.writer import write_report

        write_report(out / "report.md", "".join(session.report()), volume,
                     {p: m for p, m in zip(prompts, per_prompt) if m.any()})
    (out / MARKER).write_text("")
    return int((labels > 0).sum())


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if not args.prompt and not args.report:
        raise InputError("nothing to do: give --prompt TEXT (repeatable) and/or --report")
    cases = list_cases(args.cases)
    root = Path(args.output)
    root.mkdir(parents=True, exist_ok=True)
    model = load_model_for(args)[0]
    from ..capabilities import LANGUAGE, TEXT_SEGMENTATION, require

    if args.prompt:  # refuse before the first case, not once per case
        require(model, TEXT_SEGMENTATION)
    if args.report:
        require(model, LANGUAGE)
    rows, failed = [], 0
    for case_id, image in tqdm(cases, desc="cases", unit="case"):
        out = root / case_id
        if (out / MARKER).is_file():
            rows.append({"case": case_id, "status": "done earlier", "seconds": "", "voxels": "", "error": ""})
            continue
        start = time.perf_counter()
        try:
            voxels = process_case(model, image, out, args.prompt, args.report, args.cache_mb, warn=not rows)
            rows.append({"case": case_id, "status": "ok", "seconds": f"{time.perf_counter() - start:.1f}",
                         "voxels": voxels, "error": ""})
        except Exception as exc:  # one bad case must not stop the batch; the summary names it
            failed += 1
            rows.append({"case": case_id, "status": "failed", "seconds": "", "voxels": "", "error": str(exc)[:300]})
            tqdm.write(f"{case_id}: failed ({exc})")
    with open(root / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", "status", "seconds", "voxels", "error"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(cases) - failed} of {len(cases)} cases done; summary in {root / 'summary.csv'}")
    return 1 if failed else 0
