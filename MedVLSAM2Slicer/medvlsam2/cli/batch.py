"""``medvlsam2 batch (FOLDER | cases.csv) --prompt TEXT ... -o OUTDIR``: many CTs, resumable.

Each case gets ``OUTDIR/<case>/`` with ``mask.nii.gz`` (one label per prompt; overlapping targets in
``mask.layer2.nii.gz``..., see ``io.volume.write_segments``), ``mask.labels.json`` naming the labels, and optionally
``report.md``; a ``.complete`` marker is written last. It holds the run's key (the input's content hash, the model and
the prompts), so a resumed run skips only cases done with the same key: an interrupted run redoes unfinished cases and
a changed prompt, model or image is recomputed. A case that fails is recorded in ``summary.csv`` and the others
continue; targets withheld or in doubt are counted in its ``doubts`` column and named in the report.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import time
from pathlib import Path

from ..errors import InputError
from .common import add_model_arguments, demo_weights_folder, load_model_for, warn_if_unfamiliar

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
MARKER = ".complete"
HASH_CHUNK = 1 << 20


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


def content_hash(image: Path) -> str:
    """SHA-256 of the image file (or of every file of a DICOM folder, by name), read in 1 MB chunks."""
    digest = hashlib.sha256()
    files = sorted(p for p in image.rglob("*") if p.is_file()) if image.is_dir() else [image]
    for f in files:
        digest.update(str(f.relative_to(image) if image.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def model_identity(spec: str, model) -> str:
    """What the outputs depend on about the model: its spec, description and provenance, and the name, size and
    modification time of each file it was loaded from (cheap; a retrained bundle differs)."""
    parts = [spec, str(getattr(model, "description", "")), str(getattr(model, "provenance", ""))]
    path = Path(spec)
    for f in (sorted(path.iterdir()) if path.is_dir() else [path] if path.is_file() else []):
        if f.is_file():
            stat = f.stat()
            parts.append(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "\n".join(parts)


def run_key(image: Path, model_id: str, prompts: list[str], report: bool) -> str:
    return hashlib.sha256(json.dumps([content_hash(image), model_id, prompts, report]).encode()).hexdigest()


def process_case(model, image: Path, out: Path, prompts: list[str], report: bool, cache_mb: float | None = None,
                 warn: bool = False, key: str = "") -> tuple[int, int]:
    """Write one case's outputs into ``out``; returns (segmented voxels, targets withheld or in doubt).

    ``warn``: print the domain warning if this CT is unlike the model's training data (the caller warns once).
    """
    import numpy as np

    from ..api import SessionAPI
    from ..io.volume import read_volume, write_segments
    from ..session import Session
    from .segment import write_label_names

    volume = read_volume(image)
    if warn:
        warn_if_unfamiliar(model, volume)
    (out / MARKER).unlink(missing_ok=True)  # a case redone under a new key is unfinished until its marker is back
    session: SessionAPI = Session(model, volume, cache_mb=cache_mb)
    per_prompt, doubts, warnings = [], 0, []
    for prompt in prompts:  # one value per prompt: the union of the objects its [SEG] tokens produced
        text = session.segment_text(prompt)
        masks = [session.mask(r.object_id) > 0 for r in text.found]
        per_prompt.append(np.any(masks, axis=0) if masks else np.zeros(volume.shape, bool))  # none: withheld or absent
        doubts += len(text.not_found) + sum(bool(r.warnings) for r in text.found)
        warnings += [not_found_text(m) for m in text.not_found] + [w for r in text.found for w in r.warnings]
    out.mkdir(parents=True, exist_ok=True)
    if prompts:
        paths = write_segments(per_prompt, list(prompts), volume, out / "mask.nii.gz")
        write_label_names(paths[0], {v: p for v, p in enumerate(prompts, start=1)})
    if report:
        from ..report.writer import write_report

        write_report(out / "report.md", "".join(session.report()), volume,
                     {p: m for p, m in zip(prompts, per_prompt) if m.any()}, model=model, warnings=warnings)
    (out / MARKER).write_text(json.dumps({"key": key}))
    return int(sum(m.sum() for m in per_prompt)), doubts


def not_found_text(miss) -> str:
    from .segment import not_found_line

    return f"not delivered: {not_found_line(miss)}"


def done_earlier(out: Path, key: str) -> bool:
    """The case was finished under the same key (same image content, model and prompts)."""
    try:
        return json.loads((out / MARKER).read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


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
    model_id = model_identity(args.model or str(demo_weights_folder()), model)
    for case_id, image in tqdm(cases, desc="cases", unit="case"):
        out = root / case_id
        start = time.perf_counter()
        try:
            key = run_key(image, model_id, args.prompt, args.report)
            if done_earlier(out, key):
                rows.append({"case": case_id, "status": "done earlier", "seconds": "", "voxels": "", "doubts": "",
                             "error": ""})
                continue
            redo = (out / MARKER).is_file()
            voxels, doubts = process_case(model, image, out, args.prompt, args.report, args.cache_mb, warn=not rows,
                                          key=key)
            rows.append({"case": case_id, "status": "redone (image, model or prompts changed)" if redo else "ok",
                         "seconds": f"{time.perf_counter() - start:.1f}", "voxels": voxels, "doubts": doubts,
                         "error": ""})
        except Exception as exc:  # one bad case must not stop the batch; the summary names it
            failed += 1
            rows.append({"case": case_id, "status": "failed", "seconds": "", "voxels": "", "doubts": "",
                         "error": str(exc)[:300]})
            tqdm.write(f"{case_id}: failed ({exc})")
    with open(root / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", "status", "seconds", "voxels", "doubts", "error"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(cases) - failed} of {len(cases)} cases done; summary in {root / 'summary.csv'}")
    return 1 if failed else 0
