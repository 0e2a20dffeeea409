"""``medvlsam2 segment IMAGE (--prompt TEXT | --point i,j,k[,+|-] ... | --box ... [--slice k]) -o MASK``.

Exit codes: 0 a non-empty mask was written and nothing about it is in doubt; 1 an error (message on stderr); 3 the
mask was written but is empty ("no voxels found", e.g. the model said the target is absent); 4 a named target was
withheld as implausible (the one-line reason says why), the mask holds the others; 5 the mask was written but carries doubts (a "(unverified)"
target given with --force, a click the result disagrees with, a box that may be too small, a CT unlike the model's
training data), each printed as a WARNING line. Scripts never mistake an empty or doubtful result for a
segmentation. Overlapping targets are all kept (``io.volume.write_segments``) and ``<mask>.labels.json`` names them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError
from ..io.volume import MASK_SUFFIXES
from .common import add_model_arguments, load_model_for, warn_if_unfamiliar

EMPTY_RESULT = 3  # exit code of a run that found no voxels
WITHHELD = 4  # a named target was withheld as implausible (plausibility.vet)
DOUBTFUL = 5  # written, with warnings


def parse_point(text: str) -> tuple[list[float], int]:
    parts = text.split(",")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in "+-"):
        raise InputError(f"--point takes i,j,k or i,j,k,+ or i,j,k,- (got {text!r})")
    try:
        ijk = [float(v) for v in parts[:3]]
    except ValueError:
        raise InputError(f"--point coordinates must be numbers (got {text!r})") from None
    return ijk, -1 if len(parts) == 4 and parts[3] == "-" else 1


def parse_box(text: str, k: int | None) -> list[float]:
    """``i0,j0,k0,i1,j1,k1`` (3D) or ``i0,j0,i1,j1`` (2D, needs ``--slice``)."""
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--box coordinates must be numbers (got {text!r})") from None
    if len(box) == 4 and k is None:
        raise InputError("a 2D --box i0,j0,i1,j1 needs --slice k (or give the 3D box i0,j0,k0,i1,j1,k1)")
    if len(box) == 6 and k is not None:
        raise InputError("--slice is for a 2D --box; a 3D box i0,j0,k0,i1,j1,k1 carries its own slices")
    if len(box) not in (4, 6):
        raise InputError(f"--box takes i0,j0,k0,i1,j1,k1 or i0,j0,i1,j1 with --slice (got {len(box)} numbers)")
    return box


def label_names_path(mask_path: Path) -> Path:
    """The sidecar JSON next to a label map: ``mask.nii.gz`` -> ``mask.labels.json``."""
    name = mask_path.name
    for suffix in sorted(MASK_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return mask_path.with_name(f"{name}.labels.json")


def write_label_names(mask_path: Path, labels: dict[int, str]) -> Path:
    """Sidecar JSON {"1": "liver", ...}: label value -> segment name."""
    out = label_names_path(Path(mask_path))
    out.write_text(json.dumps({str(v): n for v, n in sorted(labels.items())}, indent=1), encoding="utf-8")
    return out


def not_found_line(miss) -> str:
    """"'X': why" for a ``NotFound`` (a plausibility reason already names its target)."""
    return miss.reason if miss.reason.startswith(f"'{miss.target}'") else f"'{miss.target}': {miss.reason}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment a CT by text, clicks or a box; writes a mask with the CT's geometry")
    p.add_argument("image", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("-o", "--output", required=True, help="mask file (.nii.gz, .nrrd, .seg.nrrd)")
    p.add_argument("--prompt", action="append", default=[],
                   help="what to segment, e.g. 'liver' (repeatable; 'liver and spleen' or one per line: one segment each)")
    p.add_argument("--point", action="append", default=[], help="voxel click i,j,k[,+|-] (repeatable)")
    p.add_argument("--box", help="3D voxel box i0,j0,k0,i1,j1,k1 (bounds the object to slices k0..k1), "
                                 "or 2D box i0,j0,i1,j1 with --slice k")
    p.add_argument("--slice", type=int, help="slice k of a 2D --box")
    p.add_argument("--box-ends", action="store_true", help="also prompt a 3D box on its first and last slices")
    add_model_arguments(p)
    p.add_argument("--no-propagate", action="store_true", help="only the prompted slices")
    p.add_argument("--force", action="store_true",
                   help="deliver text targets the checks withhold (implausible or absent), named 'X (unverified)'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..api import SessionAPI
    from ..io.volume import read_volume, write_segments
    from ..session import Session

    if sum(bool(x) for x in (args.prompt, args.point, args.box)) != 1:
        raise InputError("give exactly one kind of prompt: --prompt, --point (repeatable) or --box")
    if args.box:
        parse_box(args.box, args.slice)  # bad boxes are refused before the model loads
    volume = read_volume(args.image)
    model = load_model_for(args)[0]
    unfamiliar = warn_if_unfamiliar(model, volume)
    session: SessionAPI = Session(model, volume, cache_mb=args.cache_mb)
    missing, warnings = [], []
    with tqdm(total=volume.shape[0], desc="propagating", unit="slice") as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        if args.prompt:
            results = []
            for prompt in args.prompt:
                text = session.segment_text(prompt, progress=progress, force=args.force)
                results += text.found
                missing += text.not_found
            masks, names = [session.mask(r.object_id) for r in results], [r.name for r in results]
            warnings = [w for r in results for w in r.warnings]
        else:
            obj = session.add_object("Segment_1")
            if args.point:
                clicks = [parse_point(t) for t in args.point]
                result = session.add_points(obj, [c[0] for c in clicks], [c[1] for c in clicks])
            else:
                result = session.add_box(obj, parse_box(args.box, args.slice), k=args.slice, ends=args.box_ends)
            if not args.no_propagate:
                result = session.propagate(obj, progress=progress)
            masks, names, warnings = [session.mask(obj)], ["Segment_1"], list(result.warnings)
    from ..plausibility.vet import withheld

    for miss in missing:
        if withheld(miss):
            print(f"Not delivered: {miss.reason}; nothing is drawn for it (--force draws it, marked unverified).",
                  file=sys.stderr)
        else:
            print(f"Not found: {miss.target} ({miss.reason}); nothing is drawn for it.", file=sys.stderr)
    from ..domain import domain_warning

    shown = {domain_warning(model, volume)} if unfamiliar else set()  # printed above; every text result carries it
    for line in dict.fromkeys(w for w in warnings if w not in shown):
        print(f"WARNING: {line}", file=sys.stderr)
    paths = write_segments(masks, names, volume, args.output)
    labels = {v: n for v, n in enumerate(names, start=1)}
    sidecar = write_label_names(paths[0], labels)  # always, even for an empty mask: what was asked and named
    voxels = int(sum((m > 0).sum() for m in masks))
    if any(withheld(m) for m in missing):
        return WITHHELD
    if not voxels:
        print(f"no voxels found: the model segmented nothing for this prompt; {paths[0]} is an empty mask. Try another "
              "click or box, or a model suited to this CT", file=sys.stderr)
        return EMPTY_RESULT
    extra = f" and {len(paths) - 1} more layer file(s) for overlapping segments" if len(paths) > 1 else ""
    print(f"wrote {paths[0]}{extra} ({voxels} voxels; {len(labels)} segment(s) named in {sidecar.name})")
    return DOUBTFUL if warnings or unfamiliar else 0
