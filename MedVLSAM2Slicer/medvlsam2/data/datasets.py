"""Readers for the public 3D CT dataset layouts the model trains on; each returns ``CTCase`` records lazily.

Layouts (paths inside an index file are relative to its folder, or to ``root=`` where a reader takes one):
- segmentation, Medical Segmentation Decathlon: ``dataset.json`` with ``labels`` (the category names,
  {"0": "background", "1": "liver"} or nnU-Net v2's {"background": 0, "liver": 1}) and a ``training``
  list of ``{"image": ..., "label": ...}`` (``test`` may list bare image paths);
- segmentation, M3D-Seg: one folder per dataset (``M3D_Seg/0000``) with ``0000.json`` holding ``train`` /
  ``test`` lists of ``{"image": "0000/1/image.npy", "label": "0000/1/mask_(C, H, W, D).npz"}`` (paths
  relative to ``M3D_Seg``); ``image.npy`` is ``[1, H, W, D]`` and the mask a SciPy sparse one-hot matrix
  of C category channels (channel c becomes label c + 1); category names come from a ``labels`` entry
  of that JSON or from ``M3D_Seg/dataset_info.json`` ({"0000": ["liver", ...]});
- image-report pairs, M3D-Cap: a JSON ``{"train": [{"image": ..., "text": report.txt}], "validation": [...]}``;
- image-report pairs, CT-RATE: a reports CSV with ``VolumeName``, ``Findings_EN``, ``Impressions_EN``;
  volumes are found by file name anywhere under the volume root (``train_1/train_1_a/train_1_a_1.nii.gz``);
- VQA, M3D-VQA: a CSV with ``Image Path``, ``Question Type``, ``Question``, ``Choice A``..``Choice D``,
  ``Answer``, ``Answer Choice``; rows with a choice letter become closed questions, the others open;
- referring segmentation, M3D-RefSeg: a CSV with ``Image``, ``Mask``, ``Mask_ID``, ``Question``
  (the referring expression) and ``Answer``.
Images are anything ``io.volume.read_volume`` reads, or M3D's preprocessed ``.npy`` arrays
([1,] D, H, W, unit spacing, intensities as stored).

``read_dataset(path)`` recognises any of these from a folder or file; a ``dataset.json`` folder written by
``medvlsam2 synth`` also gets its reports, VQA and referring expressions attached to each case.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.volume import Volume, read_volume
from .case import CHOICE_LETTERS, ClosedQA, CTCase, OpenQA, Referring

VQA_COLUMNS = ("Image Path", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer", "Answer Choice")
REFSEG_COLUMNS = ("Image", "Mask", "Mask_ID", "Question")
ANSWER_NAME = "Answer Name"  # our optional RefSeg column: ``Referring.answer`` (M3D's own "Answer" is a sentence)
CTRATE_COLUMNS = ("VolumeName", "Findings_EN")


class LazyCases(Sequence):
    """A sequence of cases loaded from disk only when indexed.

    ``ids`` are the case ids known from the index alone (no image read): held-out splits use them.
    ``label_names`` are the dataset's categories {value: name}, known before any case is loaded (a case's
    own ``label_names`` lists only the categories present in it).
    """

    def __init__(self, loaders: list[Callable[[], CTCase]], ids: list[str] | None = None,
                 label_names: dict[int, str] | None = None) -> None:
        self._loaders = loaders
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(loaders))]
        self.label_names = dict(label_names or {})
        if len(self.ids) != len(loaders):
            raise ValueError("one id per case")

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return LazyCases(self._loaders[index], self.ids[index], self.label_names)
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


def _label_array(p: Path) -> np.ndarray:
    """A label map's voxels, read without ``read_volume``'s Hounsfield-unit check (labels are not HU)."""
    if p.suffix == ".npy":
        return load_image(p).array
    import SimpleITK as sitk

    if not p.is_file():
        raise InputError(f"label map {p} does not exist; check the dataset root")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError:
        raise InputError(f"cannot read label map {p.name}: not a readable NIfTI/NRRD/MHA file") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    return Volume.from_sitk(image).array


def load_labels(path: str | os.PathLike, like: Volume) -> np.ndarray:
    """The label map at ``path`` as uint8 ``[k, j, i]``; it must have the shape of its image ``like``."""
    labels = _label_array(Path(path))
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


def _lists(meta: dict) -> list[str]:
    """The keys of a JSON index that hold lists (the splits it has)."""
    return [k for k, v in meta.items() if isinstance(v, list)]


def _label_names(labels, where: str) -> dict[int, str]:
    """Category names from {"1": "liver"} (MSD), {"liver": 1} (nnU-Net v2) or ["liver", ...] (label i + 1)."""
    if isinstance(labels, list):
        return {i + 1: str(n) for i, n in enumerate(labels)}
    if not isinstance(labels, dict):
        raise InputError(f"{where} needs 'labels' mapping label values to category names")
    try:
        if all(isinstance(v, int) for v in labels.values()):
            pairs = {int(v): str(n) for n, v in labels.items()}
        else:
            pairs = {int(v): str(n) for v, n in labels.items()}
    except (TypeError, ValueError):
        raise InputError(f"{where} 'labels' must map integer label values ('0', '1', ...) to names") from None
    return {v: n for v, n in pairs.items() if v != 0}


def _segmentation_entries(root: Path, split: str) -> tuple[dict[int, str], list[dict]]:
    meta = _json(root / "dataset.json")
    names = _label_names(meta.get("labels"), str(root / "dataset.json"))
    key = "training" if "training" in meta and split == "train" else split
    entries = meta.get(key)
    if not isinstance(entries, list):
        raise InputError(f"dataset.json has no '{key}' list; available: {_lists(meta)}")
    out = []
    for entry in entries:
        entry = {"image": entry} if isinstance(entry, str) else entry  # MSD lists test images as bare paths
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise InputError(f"dataset.json entry {entry!r} needs an 'image' path")
        out.append(entry)
    return names, out


_GENERIC_FOLDERS = {"", ".", "imagesTr", "imagesTs", "images", "volumes", "ct"}


def _case_id(image: str) -> str:
    """M3D names a case by its folder (``ct_case/000006/Axial.npy``); MSD-like layouts by the file name."""
    parent = Path(image).parent.name
    return parent if parent not in _GENERIC_FOLDERS else Path(image).name.split(".")[0]


def _segmentation_loader(root: Path, entry: dict, names: dict[int, str]) -> Callable[[], CTCase]:
    def load() -> CTCase:
        volume = load_image(root / entry["image"])
        labels = load_labels(root / entry["label"], volume) if entry.get("label") else None
        present = {v: n for v, n in names.items() if labels is not None and (labels == v).any()}
        return CTCase(_case_id(entry["image"]), volume, labels, present)
    return load


def read_segmentation(folder: str | os.PathLike, split: str = "train") -> LazyCases:
    """MSD-style folder: ``dataset.json`` + images + label maps, named by its ``labels`` entry."""
    root = Path(folder)
    names, entries = _segmentation_entries(root, split)
    return LazyCases([_segmentation_loader(root, e, names) for e in entries], [_case_id(e["image"]) for e in entries],
                     names)


_MASK_SHAPE = re.compile(r"mask_\((\d+(?:,\s*\d+)*)\)\.npz$")


def _m3d_mask(path: Path) -> np.ndarray:
    """An M3D-Seg sparse one-hot mask ``mask_(C, H, W, D).npz`` as a ``[k, j, i]`` label map."""
    from scipy import sparse

    match = _MASK_SHAPE.search(path.name)
    if not match:
        raise InputError(f"M3D-Seg mask {path.name} must be named mask_(C, H, W, D).npz (its shape)")
    shape = tuple(int(v) for v in match.group(1).split(","))
    if not path.is_file():
        raise InputError(f"mask {path} does not exist; check the dataset root")
    dense = sparse.load_npz(path).toarray()  # load_npz never unpickles
    if dense.size != int(np.prod(shape)) or len(shape) != 4:
        raise InputError(f"{path.name} holds {dense.size} values, not the (C, H, W, D) = {shape} its name gives")
    channels = dense.reshape(shape)
    labels = np.zeros(shape[1:], np.uint8)
    for c in range(shape[0]):  # overlapping channels: the later category wins
        labels[channels[c] > 0] = c + 1
    return np.ascontiguousarray(labels.transpose(2, 1, 0))


def read_m3d_seg(folder: str | os.PathLike, split: str = "train") -> LazyCases:
    """One M3D-Seg dataset folder (``M3D_Seg/0000`` with ``0000.json``); see the module docstring."""
    folder = Path(folder)
    meta = _json(folder / f"{folder.name}.json")
    if "labels" in meta:
        names = _label_names(meta["labels"], f"{folder.name}.json")
    else:
        info = _json(folder.parent / "dataset_info.json") if (folder.parent / "dataset_info.json").is_file() else {}
        if folder.name not in info:
            raise InputError(f"no category names for M3D-Seg dataset {folder.name}: add a 'labels' list to "
                             f"{folder.name}.json or an entry '{folder.name}' to {folder.parent / 'dataset_info.json'}")
        names = _label_names(info[folder.name], "dataset_info.json")
    entries = meta.get(split)
    if not isinstance(entries, list):
        raise InputError(f"{folder.name}.json has no '{split}' list; available: {_lists(meta)}")

    def loader(entry: dict) -> Callable[[], CTCase]:
        if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
            raise InputError(f"{folder.name}.json entry {entry!r} needs 'image' and 'label'")
        # Paths are relative to M3D_Seg (the parent); accept paths relative to the dataset folder too.
        base = folder.parent if (folder.parent / entry["image"]).exists() else folder

        def load() -> CTCase:
            path = base / entry["image"]
            if not path.is_file():
                raise InputError(f"image {path} does not exist; check the dataset root")
            array = np.load(path, allow_pickle=False)
            array = array[0] if array.ndim == 4 and array.shape[0] == 1 else array
            volume = Volume(np.ascontiguousarray(array.transpose(2, 1, 0)))  # [H, W, D] -> [k, j, i]
            labels = _m3d_mask(base / entry["label"])
            if labels.shape != volume.shape:
                raise InputError(f"mask {entry['label']} has shape {labels.shape[::-1]} "
                                 f"but its image {volume.shape[::-1]}")
            present = {v: n for v, n in names.items() if (labels == v).any()}
            return CTCase(Path(entry["image"]).parent.name, volume, labels, present)
        return load

    return LazyCases([loader(e) for e in entries], [Path(e["image"]).parent.name for e in entries], names)


def read_caption_pairs(json_path: str | os.PathLike, split: str = "train",
                       root: str | os.PathLike | None = None) -> LazyCases:
    """M3D-Cap: image-report pairs listed in a JSON file (paths relative to ``root``, default its folder)."""
    path = Path(json_path)
    base = Path(root) if root is not None else path.parent
    entries = _json(path).get(split)
    if not isinstance(entries, list):
        raise InputError(f"{path.name} has no '{split}' list of {{'image', 'text'}} entries")
    for e in entries:
        if not isinstance(e, dict) or not {"image", "text"} <= set(e):
            raise InputError(f"{path.name}: entry {e!r} needs 'image' and 'text'")

    def loader(e: dict) -> Callable[[], CTCase]:
        def load() -> CTCase:
            text_path = base / e["text"]
            if not text_path.is_file():
                raise InputError(f"report {text_path} does not exist")
            return CTCase(_case_id(e["image"]), load_image(base / e["image"]),
                          report=text_path.read_text(encoding="utf-8").strip())
        return load

    return LazyCases([loader(e) for e in entries], [_case_id(e["image"]) for e in entries])


CTRATE_METADATA_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")


def _ct_rate_geometry(row: dict, where: str) -> tuple[float, float, tuple[float, float, float]]:
    """(slope, intercept, spacing (i, j, k)) from one CT-RATE metadata row; XYSpacing reads like "[0.75, 0.75]"."""
    try:
        xy = [float(v) for v in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", row["XYSpacing"])]
        slope, intercept, z = float(row["RescaleSlope"]), float(row["RescaleIntercept"]), float(row["ZSpacing"])
    except (TypeError, ValueError):
        raise InputError(f"{where}: metadata of {row.get('VolumeName')} must hold numbers in "
                         f"{list(CTRATE_METADATA_COLUMNS[1:])}") from None
    if len(xy) != 2 or min(xy[0], xy[1], z) <= 0:
        raise InputError(f"{where}: spacing of {row.get('VolumeName')} must be two positive XY values and a positive Z")
    return slope, intercept, (xy[0], xy[1], z)


def read_ct_rate(volume_root: str | os.PathLike, reports_csv: str | os.PathLike,
                 metadata_csv: str | os.PathLike | None = None) -> LazyCases:
    """CT-RATE: findings + impression per volume name; volumes anywhere under ``volume_root``.

    ``metadata_csv`` (CT-RATE's ``*_metadata.csv``) is for volumes stored as raw scanner values: each
    volume is then rescaled to HU (``RescaleSlope``, ``RescaleIntercept``) and given the listed
    ``XYSpacing`` / ``ZSpacing``.
    """
    rows = _csv(Path(reports_csv), CTRATE_COLUMNS)
    files = {p.name: p for p in Path(volume_root).rglob("*.nii*")}
    geometry = {}
    if metadata_csv is not None:
        where = Path(metadata_csv).name
        rows_meta = _csv(Path(metadata_csv), CTRATE_METADATA_COLUMNS)
        geometry = {r["VolumeName"]: _ct_rate_geometry(r, where) for r in rows_meta}

    def loader(row: dict) -> Callable[[], CTCase]:
        name = row["VolumeName"]
        if name not in files:
            raise InputError(f"CT-RATE volume {name} listed in the reports CSV is not under {volume_root}")
        if metadata_csv is not None and name not in geometry:
            raise InputError(f"CT-RATE volume {name} has no row in {Path(metadata_csv).name}")

        def load() -> CTCase:
            parts = (row["Findings_EN"], row.get("Impressions_EN") or "")
            report = " ".join(t.strip() for t in parts if t and t.strip())
            volume = read_volume(files[name])
            if name in geometry:
                slope, intercept, spacing = geometry[name]
                hu = np.round(volume.array.astype(np.float64) * slope + intercept)
                volume = Volume(np.clip(hu, -1024, 3071).astype(np.int16), spacing, volume.origin, volume.direction)
            return CTCase(name.split(".")[0], volume, report=report)
        return load

    return LazyCases([loader(r) for r in rows], [r["VolumeName"].split(".")[0] for r in rows])


def _vqa_by_image(path: Path) -> dict[str, tuple[list[ClosedQA], list[OpenQA]]]:
    """M3D-VQA rows grouped by image.

    In M3D-VQA every row is asked both ways (``Question Type`` is its category, 1-5): its choices and
    ``Answer Choice`` give a closed question and its ``Answer`` text an open one. Rows whose ``Question
    Type`` is "closed" or "open" (``medvlsam2 synth``) are only that kind.
    """
    grouped: dict[str, tuple[list[ClosedQA], list[OpenQA]]] = {}
    for row in _csv(path, VQA_COLUMNS):
        closed, opened = grouped.setdefault(row["Image Path"], ([], []))
        kind = (row.get("Question Type") or "").strip().lower()
        letter = (row["Answer Choice"] or "").strip().upper()
        if letter and kind != "open":
            if letter not in CHOICE_LETTERS:
                raise InputError(f"{path.name}: 'Answer Choice' must be one of A-D, got {letter!r}")
            choices = [row[f"Choice {c}"] or "" for c in CHOICE_LETTERS]
            if not choices[CHOICE_LETTERS.index(letter)].strip():
                raise InputError(f"{path.name}: answer {letter} of {row['Question']!r} points at an empty choice")
            closed.append(ClosedQA(row["Question"], choices, letter))
        if kind != "closed" and (row["Answer"] or "").strip():
            opened.append(OpenQA(row["Question"], row["Answer"]))
    return grouped


def read_vqa(csv_path: str | os.PathLike, root: str | os.PathLike | None = None) -> LazyCases:
    """M3D-VQA: one case per image with its closed (lettered) and open questions (images under ``root``)."""
    path = Path(csv_path)
    base = Path(root) if root is not None else path.parent

    def loader(image: str, closed: list[ClosedQA], opened: list[OpenQA]) -> Callable[[], CTCase]:
        return lambda: CTCase(_case_id(image), load_image(base / image),
                              vqa_closed=closed, vqa_open=opened)

    grouped = _vqa_by_image(path)
    return LazyCases([loader(i, c, o) for i, (c, o) in grouped.items()], [_case_id(i) for i in grouped])


def _refs_by_image(path: Path) -> dict[tuple[str, str], list[Referring]]:
    """M3D-RefSeg rows grouped by (image, mask)."""
    grouped: dict[tuple[str, str], list[Referring]] = {}
    for row in _csv(path, REFSEG_COLUMNS):
        try:
            ref = Referring(row["Question"], int(row["Mask_ID"]), row.get(ANSWER_NAME) or "")
        except ValueError:
            raise InputError(f"{path.name}: 'Mask_ID' must be an integer label value, got {row['Mask_ID']!r}") from None
        grouped.setdefault((row["Image"], row["Mask"]), []).append(ref)
    return grouped


def read_refseg(csv_path: str | os.PathLike, root: str | os.PathLike | None = None) -> LazyCases:
    """M3D-RefSeg: one case per image; each row is an expression naming one label value of its mask."""
    path = Path(csv_path)
    base = Path(root) if root is not None else path.parent

    def loader(image: str, mask: str, refs: list[Referring]) -> Callable[[], CTCase]:
        def load() -> CTCase:
            volume = load_image(base / image)
            labels = load_labels(base / mask, volume)
            return CTCase(_case_id(image), volume, labels,
                          {r.label: r.expression for r in refs if r.label}, referring=refs)
        return load

    grouped = _refs_by_image(path)
    return LazyCases([loader(i, m, r) for (i, m), r in grouped.items()], [_case_id(i) for i, _ in grouped])


# Files next to a dataset.json that ``medvlsam2 synth`` writes (see ``data.writers.LAYOUT_FILES``).
_SIDECARS = {"captions": "m3d_cap.json", "vqa": "m3d_vqa.csv", "refseg": "m3d_refseg.csv"}


def _annotated(root: Path, split: str) -> LazyCases:
    """Segmentation cases of ``root/dataset.json`` with the reports, VQA and referring expressions of its sidecars."""
    names, entries = _segmentation_entries(root, split)
    reports: dict[str, str] = {}
    if (root / _SIDECARS["captions"]).is_file():
        captions = _json(root / _SIDECARS["captions"]).get(split, [])
        reports = {e["image"]: e["text"] for e in captions if isinstance(e, dict) and {"image", "text"} <= set(e)}
    vqa = _vqa_by_image(root / _SIDECARS["vqa"]) if (root / _SIDECARS["vqa"]).is_file() else {}
    refs: dict[str, list[Referring]] = {}
    if (root / _SIDECARS["refseg"]).is_file():
        for (image, _), group in _refs_by_image(root / _SIDECARS["refseg"]).items():
            refs.setdefault(image, []).extend(group)

    def loader(entry: dict) -> Callable[[], CTCase]:
        base = _segmentation_loader(root, entry, names)
        image = entry["image"]

        def load() -> CTCase:
            case = base()
            if image in reports:
                text = root / reports[image]
                if not text.is_file():
                    raise InputError(f"report {text} listed in {_SIDECARS['captions']} does not exist")
                case.report = text.read_text(encoding="utf-8").strip()
            case.vqa_closed, case.vqa_open = (list(v) for v in vqa.get(image, ([], [])))
            case.referring = list(refs.get(image, []))
            return case
        return load

    return LazyCases([loader(e) for e in entries], [_case_id(e["image"]) for e in entries], names)


def read_dataset(path: str | os.PathLike, split: str = "train") -> LazyCases:
    """Cases of whatever supported layout ``path`` is (a dataset folder or an index file).

    - a folder with ``dataset.json`` (MSD, or ``medvlsam2 synth`` output with its reports/VQA/referring files);
    - an M3D-Seg dataset folder ``NAME`` with ``NAME.json``;
    - an M3D-Cap JSON, an M3D-VQA CSV or an M3D-RefSeg CSV file.
    CT-RATE needs two paths: use ``read_ct_rate(volume_root, reports_csv)``.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "dataset.json").is_file():
            return _annotated(p, split)
        if (p / f"{p.name}.json").is_file():
            return read_m3d_seg(p, split)
        raise InputError(f"{p} has neither dataset.json (MSD / medvlsam2 synth) nor {p.name}.json (M3D-Seg); "
                         "point at a dataset folder or at an M3D-Cap JSON / M3D-VQA / M3D-RefSeg CSV file")
    if p.suffix == ".json":
        return read_caption_pairs(p, split)
    if p.suffix == ".csv":
        header = _csv_header(p)
        if set(VQA_COLUMNS) <= header:
            return read_vqa(p)
        if set(REFSEG_COLUMNS) <= header:
            return read_refseg(p)
        raise InputError(f"{p.name} is neither an M3D-VQA CSV (columns {list(VQA_COLUMNS)}) nor an M3D-RefSeg CSV "
                         f"(columns {list(REFSEG_COLUMNS)}); CT-RATE reports need read_ct_rate(volume_root, csv)")
    raise InputError(f"{p} does not exist or is not a dataset folder, .json or .csv index")


def _csv_header(path: Path) -> set[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return set(next(csv.reader(fh), []))
