"""Readers for the public 3D CT dataset layouts the model trains on; each returns ``CTCase`` records lazily.

Layouts (paths inside a layout file are relative to that file's folder):
- segmentation, Medical Segmentation Decathlon / M3D-Seg: ``dataset.json`` with ``labels``
  ({"0": "background", "1": "liver", ...}, the category names) and ``training`` (MSD) or ``train`` /
  ``test`` (M3D-Seg) lists of ``{"image": ..., "label": ...}``;
- image-report pairs, M3D-Cap: a JSON ``{"train": [{"image": ..., "text": report.txt}], "validation": [...]}``;
- image-report pairs, CT-RATE: a reports CSV with ``VolumeName``, ``Findings_EN``, ``Impressions_EN``;
  volumes are found by file name anywhere under the volume root (``train_1/train_1_a/train_1_a_1.nii.gz``);
- VQA, M3D-VQA: a CSV with ``Image Path``, ``Question Type``, ``Question``, ``Choice A``..``Choice D``,
  ``Answer``, ``Answer Choice``; rows with a choice letter become closed questions, the others open;
- referring segmentation, M3D-RefSeg: a CSV with ``Image``, ``Mask``, ``Mask_ID``, ``Question``
  (the referring expression) and ``Answer``.
Images are anything ``io.volume.read_volume`` reads, or M3D's preprocessed ``.npy`` arrays
([1,] D, H, W, unit spacing, intensities as stored).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.volume import Volume, read_volume
from .case import CHOICE_LETTERS, ClosedQA, CTCase, OpenQA, Referring

VQA_COLUMNS = ("Image Path", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer", "Answer Choice")
REFSEG_COLUMNS = ("Image", "Mask", "Mask_ID", "Question")
CTRATE_COLUMNS = ("VolumeName", "Findings_EN")


class LazyCases(Sequence):
    """A sequence of cases loaded from disk only when indexed."""

    def __init__(self, loaders: list[Callable[[], CTCase]]) -> None:
        self._loaders = loaders

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return LazyCases(self._loaders[index])
        return self._loaders[index]()


def load_image(path: str | os.PathLike) -> Volume:
    """A CT volume from a medical image file or an M3D ``.npy`` array."""
    p = Path(path)
    if p.suffix == ".npy":
        if not p.is_file():
            raise InputError(f"image {p} does not exist; check the dataset root")
        array = np.load(p, allow_pickle=False)  # never unpickle
        return Volume(array[0] if array.ndim == 4 and array.shape[0] == 1 else array)
    return read_volume(p)


def load_labels(path: str | os.PathLike, like: Volume) -> np.ndarray:
    labels = load_image(path).array
    if labels.shape != like.shape:
        raise InputError(f"label map {Path(path).name} has shape {labels.shape} but its image {like.shape}; "
                         "the dataset pairs the wrong files")
    if not np.issubdtype(labels.dtype, np.integer) and not np.all(np.mod(labels, 1) == 0):
        raise InputError(f"label map {Path(path).name} holds non-integer values; it must be a label map")
    return labels.astype(np.uint8)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON (line {exc.lineno}): fix or regenerate it") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object")
    return data


def _csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path.name} lacks column(s) {missing}; expected at least {list(required)}")
            return list(reader)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None


def read_segmentation(folder: str | os.PathLike, split: str = "train") -> LazyCases:
    """MSD / M3D-Seg folder: ``dataset.json`` + images + label maps, named by its ``labels`` entry."""
    root = Path(folder)
    meta = _json(root / "dataset.json")
    if not isinstance(meta.get("labels"), dict):
        raise InputError(f"{root / 'dataset.json'} needs a 'labels' object mapping label values to category names")
    try:
        names = {int(v): str(n) for v, n in meta["labels"].items() if int(v) != 0}
    except ValueError:
        raise InputError("dataset.json 'labels' keys must be integer label values ('0', '1', ...)") from None
    key = "training" if "training" in meta and split == "train" else split
    entries = meta.get(key)
    if not isinstance(entries, list):
        raise InputError(f"dataset.json has no '{key}' list; available: {[k for k, v in meta.items() if isinstance(v, list)]}")

    def loader(entry: dict) -> Callable[[], CTCase]:
        if not isinstance(entry, dict) or "image" not in entry:
            raise InputError(f"dataset.json entry {entry!r} needs an 'image' path")

        def load() -> CTCase:
            volume = load_image(root / entry["image"])
            labels = load_labels(root / entry["label"], volume) if entry.get("label") else None
            present = {v: n for v, n in names.items() if labels is not None and (labels == v).any()}
            return CTCase(Path(entry["image"]).name.split(".")[0], volume, labels, present)
        return load

    return LazyCases([loader(e) for e in entries])


def read_caption_pairs(json_path: str | os.PathLike, split: str = "train") -> LazyCases:
    """M3D-Cap: image-report pairs listed in a JSON file."""
    path = Path(json_path)
    entries = _json(path).get(split)
    if not isinstance(entries, list):
        raise InputError(f"{path.name} has no '{split}' list of {{'image', 'text'}} entries")
    for e in entries:
        if not isinstance(e, dict) or not {"image", "text"} <= set(e):
            raise InputError(f"{path.name}: entry {e!r} needs 'image' and 'text'")

    def loader(e: dict) -> Callable[[], CTCase]:
        def load() -> CTCase:
            text_path = path.parent / e["text"]
            if not text_path.is_file():
                raise InputError(f"report {text_path} does not exist")
            return CTCase(Path(e["image"]).parent.name or Path(e["image"]).stem, load_image(path.parent / e["image"]),
                          report=text_path.read_text(encoding="utf-8").strip())
        return load

    return LazyCases([loader(e) for e in entries])


def read_ct_rate(volume_root: str | os.PathLike, reports_csv: str | os.PathLike) -> LazyCases:
    """CT-RATE: findings + impression per volume name; volumes anywhere under ``volume_root``."""
    rows = _csv(Path(reports_csv), CTRATE_COLUMNS)
    files = {p.name: p for p in Path(volume_root).rglob("*.nii*")}

    def loader(row: dict) -> Callable[[], CTCase]:
        name = row["VolumeName"]
        if name not in files:
            raise InputError(f"CT-RATE volume {name} listed in the reports CSV is not under {volume_root}")

        def load() -> CTCase:
            report = " ".join(t.strip() for t in (row["Findings_EN"], row.get("Impressions_EN") or "") if t and t.strip())
            return CTCase(name.split(".")[0], read_volume(files[name]), report=report)
        return load

    return LazyCases([loader(r) for r in rows])


def read_vqa(csv_path: str | os.PathLike) -> LazyCases:
    """M3D-VQA: one case per image with its closed (lettered) and open questions."""
    path = Path(csv_path)
    grouped: dict[str, list[dict]] = {}
    for row in _csv(path, VQA_COLUMNS):
        grouped.setdefault(row["Image Path"], []).append(row)

    def loader(image: str, rows: list[dict]) -> Callable[[], CTCase]:
        closed, opened = [], []
        for row in rows:
            letter = (row["Answer Choice"] or "").strip().upper()
            if letter:
                if letter not in CHOICE_LETTERS:
                    raise InputError(f"{path.name}: 'Answer Choice' must be one of A-D, got {letter!r}")
                closed.append(ClosedQA(row["Question"], [row[f"Choice {c}"] for c in CHOICE_LETTERS], letter))
            else:
                opened.append(OpenQA(row["Question"], row["Answer"]))
        return lambda: CTCase(Path(image).parent.name or Path(image).stem, load_image(path.parent / image),
                              vqa_closed=closed, vqa_open=opened)

    return LazyCases([loader(i, r) for i, r in grouped.items()])


def read_refseg(csv_path: str | os.PathLike) -> LazyCases:
    """M3D-RefSeg: one case per image; each row is an expression naming one label value of its mask."""
    path = Path(csv_path)
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in _csv(path, REFSEG_COLUMNS):
        grouped.setdefault((row["Image"], row["Mask"]), []).append(row)

    def loader(image: str, mask: str, rows: list[dict]) -> Callable[[], CTCase]:
        try:
            refs = [Referring(r["Question"], int(r["Mask_ID"])) for r in rows]
        except ValueError:
            raise InputError(f"{path.name}: 'Mask_ID' must be an integer label value") from None

        def load() -> CTCase:
            volume = load_image(path.parent / image)
            labels = load_labels(path.parent / mask, volume)
            return CTCase(Path(image).parent.name or Path(image).stem, volume, labels,
                          {r.label: r.expression for r in refs}, referring=refs)
        return load

    return LazyCases([loader(i, m, r) for (i, m), r in grouped.items()])
