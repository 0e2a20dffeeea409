"""Write cases into the public layouts that ``data.datasets`` reads (used by ``medvlsam2 synth``)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..io.volume import write_mask
from .case import CHOICE_LETTERS, CTCase
from .datasets import ANSWER_NAME, REFSEG_COLUMNS, VQA_COLUMNS

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
            ref.append({"Image": image, "Mask": label, "Mask_ID": r.label, "Question": r.expression, "Answer": "",
                        ANSWER_NAME: r.answer})
    names = {"0": "background", **{str(v): n for v, n in sorted(label_names.items())}}
    key = "training" if split == "train" else split
    (root / LAYOUT_FILES["segmentation"]).write_text(json.dumps({"name": "synthetic abdomen", "labels": names, key: seg}, indent=1))
    (root / LAYOUT_FILES["captions"]).write_text(json.dumps({split: caps}, indent=1))
    _write_csv(root / LAYOUT_FILES["vqa"], ("Question Type",) + VQA_COLUMNS, vqa)
    _write_csv(root / LAYOUT_FILES["refseg"], REFSEG_COLUMNS + ("Answer", ANSWER_NAME), ref)
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


def write_m3d_seg(cases: Iterable[CTCase], folder: str | os.PathLike, label_names: dict[int, str],
                  code: str = "0000") -> Path:
    """M3D-Seg layout: ``folder/code/<case>/image.npy`` ([1, H, W, D]) and ``mask_(C, H, W, D).npz`` (SciPy
    sparse one-hot, channel c = label c + 1), indexed by ``folder/code/code.json``; names in ``dataset_info.json``.
    Returns the dataset folder ``folder/code`` (what ``read_m3d_seg`` takes)."""
    import numpy as np
    from scipy import sparse

    root = Path(folder)
    values = sorted(label_names)
    if values != list(range(1, len(values) + 1)):
        raise ValueError("M3D-Seg channels are labels 1..C: label_names must be keyed 1..C")
    entries = []
    for case in cases:
        sub = root / code / case.case_id
        sub.mkdir(parents=True, exist_ok=True)
        np.save(sub / "image.npy", case.volume.array.transpose(2, 1, 0)[None].astype(np.float32))
        onehot = np.stack([(case.labels == v).transpose(2, 1, 0) for v in values]).astype(np.uint8)
        name = f"mask_({', '.join(str(n) for n in onehot.shape)}).npz"
        sparse.save_npz(sub / name, sparse.csr_matrix(onehot.reshape(onehot.shape[0], -1)))
        entries.append({"image": f"{code}/{case.case_id}/image.npy", "label": f"{code}/{case.case_id}/{name}"})
    (root / code / f"{code}.json").write_text(json.dumps({"train": entries}, indent=1))
    info = json.loads((root / "dataset_info.json").read_text()) if (root / "dataset_info.json").is_file() else {}
    info[code] = [label_names[v] for v in values]
    (root / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return root / code


def write_ct_rate(cases: Iterable[CTCase], folder: str | os.PathLike, slope: float = 1.0,
                  intercept: float = -1024.0) -> tuple[Path, Path, Path]:
    """CT-RATE layout: raw scanner values (``HU = value * slope + intercept``) in
    ``folder/volumes/train_N/train_N_a/train_N_a_1.nii.gz``, a reports CSV and a metadata CSV.
    Returns (volume root, reports CSV, metadata CSV), the arguments of ``read_ct_rate``."""
    import numpy as np
    import SimpleITK as sitk

    root = Path(folder)
    reports, meta = [], []
    for n, case in enumerate(cases, start=1):
        name = f"train_{n}_a_1.nii.gz"
        sub = root / "volumes" / f"train_{n}" / f"train_{n}_a"
        sub.mkdir(parents=True, exist_ok=True)
        raw = np.round((case.volume.array.astype(np.float64) - intercept) / slope).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(raw), str(sub / name), useCompression=True)
        findings, _, impression = (case.report or "").partition(". ")
        reports.append({"VolumeName": name, "Findings_EN": findings + ".", "Impressions_EN": impression})
        i, j, k = case.volume.spacing
        meta.append({"VolumeName": name, "RescaleSlope": slope, "RescaleIntercept": intercept,
                     "XYSpacing": f"[{i}, {j}]", "ZSpacing": k})
    _write_csv(root / "train_reports.csv", ("VolumeName", "Findings_EN", "Impressions_EN"), reports)
    _write_csv(root / "train_metadata.csv", ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"),
               meta)
    return root / "volumes", root / "train_reports.csv", root / "train_metadata.csv"
