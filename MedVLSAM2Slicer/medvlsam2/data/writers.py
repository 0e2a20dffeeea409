"""Write cases into the public layouts that ``data.datasets`` reads (used by ``medvlsam2 synth``)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..io.volume import write_mask
from .case import CHOICE_LETTERS, CTCase
from .datasets import REFSEG_COLUMNS, VQA_COLUMNS

LAYOUT_FILES = {"segmentation": "dataset.json", "captions": "m3d_cap.json", "vqa": "m3d_vqa.csv",
                "refseg": "m3d_refseg.csv"}


def write_dataset(cases: Iterable[CTCase], folder: str | os.PathLike, label_names: dict[int, str],
                  split: str = "train") -> Path:
    """One NIfTI image and label map per case, indexed by all four layouts (see ``LAYOUT_FILES``)."""
    import SimpleITK as sitk

    root = Path(folder)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "reports").mkdir(exist_ok=True)
    seg, caps, vqa, ref = [], [], [], []
    for case in cases:
        image, label = f"imagesTr/{case.case_id}.nii.gz", f"labelsTr/{case.case_id}.nii.gz"
        sitk.WriteImage(case.volume.to_sitk(), str(root / image), useCompression=True)
        if case.labels is not None:
            write_mask(case.labels, case.volume, root / label)
        seg.append({"image": image, "label": label if case.labels is not None else None})
        if case.report:
            (root / "reports" / f"{case.case_id}.txt").write_text(case.report + "\n", encoding="utf-8")
            caps.append({"image": image, "text": f"reports/{case.case_id}.txt"})
        for q in case.vqa_closed:
            vqa.append({"Image Path": image, "Question Type": "closed", "Question": q.question,
                        **{f"Choice {c}": q.choices[i] for i, c in enumerate(CHOICE_LETTERS)},
                        "Answer": q.choices[CHOICE_LETTERS.index(q.answer)], "Answer Choice": q.answer})
        for q in case.vqa_open:
            vqa.append({"Image Path": image, "Question Type": "open", "Question": q.question,
                        **{f"Choice {c}": "" for c in CHOICE_LETTERS}, "Answer": q.answer, "Answer Choice": ""})
        for r in case.referring:
            ref.append({"Image": image, "Mask": label, "Mask_ID": r.label, "Question": r.expression, "Answer": ""})
    names = {"0": "background", **{str(v): n for v, n in sorted(label_names.items())}}
    key = "training" if split == "train" else split
    (root / LAYOUT_FILES["segmentation"]).write_text(json.dumps({"name": "synthetic abdomen", "labels": names, key: seg}, indent=1))
    (root / LAYOUT_FILES["captions"]).write_text(json.dumps({split: caps}, indent=1))
    _write_csv(root / LAYOUT_FILES["vqa"], ("Question Type",) + VQA_COLUMNS, vqa)
    _write_csv(root / LAYOUT_FILES["refseg"], REFSEG_COLUMNS + ("Answer",), ref)
    return root


def write_case(case: CTCase, folder: str | os.PathLike, layout: str = "m3d") -> Path:
    """One case as its own dataset folder (all layouts of ``LAYOUT_FILES``), readable by ``read_dataset``.

    ``layout="m3d"`` is the only layout: MSD ``dataset.json`` plus the M3D-Cap / M3D-VQA / M3D-RefSeg
    index files. The folder's index files are rewritten, so give each case its own folder (or use
    ``write_dataset`` for many cases).
    """
    if layout != "m3d":
        raise ValueError(f"unknown layout {layout!r}; the writer has 'm3d' (MSD + M3D-Cap/VQA/RefSeg index files)")
    return write_dataset([case], folder, case.label_names)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(columns)))
        writer.writeheader()
        writer.writerows(rows)
