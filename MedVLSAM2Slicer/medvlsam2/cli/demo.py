"""``medvlsam2 demo``: the whole product on one held-out synthetic phantom, with no download.

Segments organs by text, answers a question, drafts a report, and writes what a person can check:
the masks (with the phantom's geometry), ``answer.txt``, ``report.md``, an overlay PNG and Dice
against the phantom's own labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import RANDOM_WARNING, TRAINED_NOTE, add_model_arguments, load_model_for

DEMO_ORGANS = ("liver", "spleen", "right kidney", "left kidney")
# Outline colours (RGB) per organ, in DEMO_ORGANS order; further targets reuse them.
COLOURS = ((235, 120, 50), (160, 90, 210), (60, 190, 80), (70, 140, 240), (240, 220, 60), (60, 210, 210))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run text segmentation, a question and a report on a synthetic phantom (no download)")
    p.add_argument("-o", "--output", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--seed", type=int, default=100000, help="phantom seed (>= 100000: never seen in training)")
    p.add_argument("--organs", default=",".join(DEMO_ORGANS), help="comma-separated text prompts")
    add_model_arguments(p)
    p.set_defaults(func=run)


def overlay_png(volume, masks: dict[str, "np.ndarray"], path: Path, window: str = "abdomen") -> Path:
    """Three axial slices through the segmented organs, windowed, with filled coloured masks and a legend."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..io.windowing import apply_window

    union = np.zeros(volume.shape, bool)
    for m in masks.values():
        union |= m > 0
    ks = np.nonzero(union.any(axis=(1, 2)))[0]
    lo, hi = (int(ks.min()), int(ks.max())) if len(ks) else (0, volume.shape[0] - 1)
    slices = sorted({int(round(lo + f * (hi - lo))) for f in (0.25, 0.5, 0.75)})
    gray = (apply_window(volume.array, window) * 255).astype(np.uint8)
    tiles = []
    for k in slices:
        rgb = np.repeat(gray[k][..., None], 3, axis=2).astype(np.float32)
        for (name, m), colour in zip(masks.items(), COLOURS * 4):
            sel = m[k] > 0
            rgb[sel] = 0.55 * rgb[sel] + 0.45 * np.array(colour, np.float32)
        tile = Image.fromarray(rgb.astype(np.uint8)).resize((256, 256), Image.NEAREST)
        ImageDraw.Draw(tile).text((4, 4), f"slice {k}", fill=(255, 255, 0))
        tiles.append(tile)
    legend_h = 18 * len(masks) + 10
    canvas = Image.new("RGB", (256 * len(tiles), 256 + legend_h), (0, 0, 0))
    for n, tile in enumerate(tiles):
        canvas.paste(tile, (256 * n, 0))
    draw = ImageDraw.Draw(canvas)
    for n, (name, colour) in enumerate(zip(masks, COLOURS * 4)):
        draw.rectangle([6, 262 + 18 * n, 18, 274 + 18 * n], fill=tuple(colour))
        draw.text((24, 262 + 18 * n), name, fill=(255, 255, 255))
    canvas.save(path)
    return path


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..data.synthetic import STRUCTURE_LABELS, generate_case
    from ..evaluation.seg_metrics import dice
    from ..errors import InputError
    from ..api import SessionAPI
    from ..io.volume import write_segments
    from ..session import Session
    from .segment import write_label_names

    organs = [o.strip() for o in args.organs.split(",") if o.strip()]
    unknown = [o for o in organs if o not in STRUCTURE_LABELS]
    if unknown:
        raise InputError(f"unknown organ(s) {unknown}; the phantoms have {sorted(STRUCTURE_LABELS)}")
    model, trained = load_model_for(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    case = generate_case(args.seed)
    print(f"phantom: seed {args.seed}, {case.volume.shape[0]} slices of {case.volume.shape[1]}x{case.volume.shape[2]}")
    session: SessionAPI = Session(model, case.volume, cache_mb=args.cache_mb)

    masks, scores, warnings = {}, {}, []
    for organ in tqdm(organs, desc="text prompts", unit="organ"):
        text = session.segment_text(organ)
        results = text.found
        warnings += [w for r in results for w in r.warnings] + [f"not delivered: {n.reason}" for n in text.not_found]
        masks[organ] = session.mask(results[0].object_id) if results else np.zeros(case.volume.shape, np.uint8)
        scores[organ] = dice(masks[organ] > 0, np.isin(case.labels, STRUCTURE_LABELS[organ]))
    written = []
    for suffix in ("nii.gz", "seg.nrrd"):  # overlapping targets are all kept (io.volume.write_segments)
        paths = write_segments([masks[organ] for organ in organs], organs, case.volume, out / f"masks.{suffix}")
        written += paths
    written.append(write_label_names(paths[0], {v: o for v, o in enumerate(organs, start=1)}))
    import SimpleITK as sitk

    sitk.WriteImage(case.volume.to_sitk(), str(out / "phantom.nii.gz"), useCompression=True)

    qa = case.vqa_closed[0]
    answer = "".join(session.ask(qa.prompt())).strip()
    (out / "answer.txt").write_text(f"Q: {qa.prompt()}\nA: {answer}\nexpected: {qa.target()}\n", encoding="utf-8")
    report = "".join(session.report()).strip()
    note = TRAINED_NOTE if trained else RANDOM_WARNING
    from ..report.writer import draft_report

    title = "Draft report (research use only, not for diagnosis)"
    (out / "report.md").write_text(draft_report(report, case.volume, masks, title=title, notice=note, model=model,
                                                warnings=warnings)
                                   + f"\n## Phantom's reference report\n\n{case.report}\n", encoding="utf-8")
    overlay_png(case.volume, masks, out / "overlay.png")

    print("\nDice against the phantom's labels:")
    for organ, d in scores.items():
        print(f"  {organ:<14} {d:.3f}")
    print(f"\nQ: {qa.prompt()}\nA: {answer}   (expected {qa.target()})")
    print(f"\nreport: {report}\n")
    names = [p.name for p in written] + ["phantom.nii.gz", "answer.txt", "report.md", "overlay.png"]
    print(f"wrote {out}/" + ", ".join(names))
    if not trained:
        print(f"WARNING: {RANDOM_WARNING}")
    return 0
