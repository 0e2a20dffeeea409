"""``medvlsam2 demo``: the whole product on one held-out synthetic phantom, with no download.

The phantom (seed 100001, findings of the held-out mix ``evaluation.language.held_out_findings``) holds a liver
lesion and a renal cyst. The demo segments organs and both findings by text, measures every segment, asks
whether there is a focal liver lesion, drafts a report, and writes what a person can check: the masks (with the
phantom's geometry), ``answer.txt``, ``report.md`` (generated text, measurements, warnings), an overlay PNG
through the findings and Dice against the phantom's own labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import RANDOM_WARNING, TRAINED_NOTE, add_model_arguments, load_model_for

DEMO_TARGETS = ("liver", "spleen", "right kidney", "left kidney", "liver lesion", "kidney cyst")
DEMO_SEED = 100001  # held-out mix: one liver lesion of 15-30 mm and a cyst in the left kidney
DEMO_QUESTION = "Is there a focal liver lesion?"
# Fill colours (RGB) per target, in DEMO_TARGETS order; further targets reuse them.
FINDING_ML = 50.0  # the overlay treats a segment under this volume as a finding (a lesion or cyst, not an organ)
COLOURS = ((235, 120, 50), (160, 90, 210), (60, 190, 80), (70, 140, 240), (240, 220, 60), (60, 210, 210))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run text segmentation, a question and a report on a synthetic phantom (no download)")
    p.add_argument("-o", "--output", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="phantom seed (>= 100000: never seen in training; its "
                   "findings follow the held-out mix of evaluation/language.py)")
    p.add_argument("--organs", default=",".join(DEMO_TARGETS), help="comma-separated text prompts (phantom structures)")
    add_model_arguments(p)
    p.set_defaults(func=run)


def is_finding(volume, mask: "np.ndarray", small_ml: float = FINDING_ML) -> bool:
    """A segment smaller than ``small_ml`` (a lesion or a cyst, not an organ)."""
    import numpy as np

    return 0 < (mask > 0).sum() * float(np.prod(volume.spacing)) / 1000.0 < small_ml


def overlay_slices(volume, masks: dict[str, "np.ndarray"], small_ml: float = FINDING_ML) -> list[int]:
    """Three axial slices: the largest cross-section of each small segment (a finding, under ``small_ml``), then
    slices through the middle of all segments until there are three."""
    import numpy as np

    chosen: list[int] = []
    for m in masks.values():
        if is_finding(volume, m, small_ml) and len(chosen) < 3:
            chosen.append(int((m > 0).sum(axis=(1, 2)).argmax()))
    union = np.zeros(volume.shape, bool)
    for m in masks.values():
        union |= m > 0
    ks = np.nonzero(union.any(axis=(1, 2)))[0]
    lo, hi = (int(ks.min()), int(ks.max())) if len(ks) else (0, volume.shape[0] - 1)
    for f in (0.5, 0.25, 0.75, 0.4, 0.6):
        k = int(round(lo + f * (hi - lo)))
        if len(set(chosen)) < 3 and k not in chosen:
            chosen.append(k)
    return sorted(set(chosen))[:3]


def overlay_png(volume, masks: dict[str, "np.ndarray"], path: Path, window: str = "abdomen",
                small_ml: float = FINDING_ML) -> Path:
    """Three axial slices (``overlay_slices``: through the findings first), windowed, with filled coloured masks
    (findings, segments under ``small_ml``, nearly opaque) and a legend."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..io.windowing import apply_window

    slices = overlay_slices(volume, masks, small_ml)
    gray = (apply_window(volume.array, window) * 255).astype(np.uint8)
    # a finding lies inside its organ's mask: drawn nearly opaque over it, it keeps its own colour
    alpha = {name: 0.9 if is_finding(volume, m, small_ml) else 0.45 for name, m in masks.items()}
    tiles = []
    for k in slices:
        rgb = np.repeat(gray[k][..., None], 3, axis=2).astype(np.float32)
        for (name, m), colour in zip(masks.items(), COLOURS * 4):
            sel = m[k] > 0
            rgb[sel] = (1 - alpha[name]) * rgb[sel] + alpha[name] * np.array(colour, np.float32)
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
    from ..evaluation.language import held_out_findings
    from ..evaluation.seg_metrics import dice
    from ..report.measurements import measure
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
    findings = held_out_findings(args.seed) if args.seed >= 100000 else None
    case = generate_case(args.seed, findings=findings)
    print(f"phantom: seed {args.seed}, {case.volume.shape[0]} slices of {case.volume.shape[1]}x{case.volume.shape[2]}; "
          f"reference report: {case.report}")
    session: SessionAPI = Session(model, case.volume, cache_mb=args.cache_mb)

    masks, scores, warnings = {}, {}, []
    for organ in tqdm(organs, desc="text prompts", unit="target"):
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

    qa = next((q for q in case.vqa_closed if q.question == DEMO_QUESTION), case.vqa_closed[0])
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

    print("\nDice against the phantom's labels, and what the segment measures:")
    sizes = {m.name: m for m in measure({o: masks[o] for o in organs}, case.volume)}
    for organ, d in scores.items():
        m = sizes.get(organ)
        size = (f"{m.volume_ml:8.1f} mL, long axis {m.long_axis_mm:5.1f} mm, short axis {m.short_axis_mm:5.1f} mm"
                if m else "not delivered")
        print(f"  {organ:<14} Dice {d:.3f}   {size}")
    print(f"\nQ: {qa.prompt()}\nA: {answer}   (expected {qa.target()})")
    print(f"\nreport: {report}\n")
    names = [p.name for p in written] + ["phantom.nii.gz", "answer.txt", "report.md", "overlay.png"]
    print(f"wrote {out}/" + ", ".join(names))
    if not trained:
        print(f"WARNING: {RANDOM_WARNING}")
    return 0
