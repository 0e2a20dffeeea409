"""The ``datasets:`` list of a training config: which readers feed training, with what weight, for which
tasks, and which cases are held out.

Every source is opened (its index files read, its folders checked) before the model is built, so a
missing folder or an empty source fails before the first step with a message naming it. Cases are then
read lazily through ``data.datasets`` and preprocessed once into an on-disk MONAI ``PersistentDataset``
(``data.transforms.persistent_cases``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data import HELD_OUT_FIRST_SEED
from ..errors import InputError

READERS = ("msd", "m3d_seg", "m3d_cap", "ct_rate", "m3d_vqa", "m3d_refseg", "synthetic")
TASKS = ("report", "vqa", "seg", "refseg", "interactive")
# reader -> the extra keys it takes (besides the common ones)
_READER_KEYS: dict[str, tuple[str, ...]] = {
    "msd": ("subset",), "m3d_seg": ("subset",), "m3d_cap": ("subset", "root"), "ct_rate": ("reports", "metadata"),
    "m3d_vqa": ("root",), "m3d_refseg": ("root",), "synthetic": ("seeds", "shape"),
}
_COMMON_KEYS = ("reader", "path", "name", "weight", "tasks", "split", "spacing")


@dataclass
class DataSource:
    """One entry of ``datasets:``.

    ``path``: the dataset folder (msd, m3d_seg), index file (m3d_cap JSON, m3d_vqa / m3d_refseg CSV) or the
    CT-RATE volume root (with ``reports`` and optionally ``metadata`` CSVs); ``root``: where an index file's
    image paths start (default: its folder). ``split``: ``{held_out: 0.1}`` (a fraction, chosen by a hash of
    each case id, so stable) or ``{held_out: [id, ...]}``. ``spacing``: resample to (x, y, z) mm once when
    caching (default: keep the voxels; orientation RAS and the body crop always apply).
    """

    reader: str
    path: str | None = None
    name: str = ""
    weight: float = 1.0
    tasks: tuple[str, ...] = TASKS
    split: dict[str, Any] = field(default_factory=dict)
    spacing: tuple[float, float, float] | None = None
    subset: str = "train"
    root: str | None = None
    reports: str | None = None
    metadata: str | None = None
    seeds: tuple[int, int] = (0, 64)
    shape: tuple[int, int, int] | None = None

    @classmethod
    def parse(cls, index: int, entry: Any) -> "DataSource":
        where = f"datasets[{index}]"
        if not isinstance(entry, dict) or "reader" not in entry:
            raise InputError(f"{where} must be a mapping with at least 'reader' (one of {list(READERS)})")
        reader = entry["reader"]
        if reader not in READERS:
            raise InputError(f"{where}: unknown reader {reader!r}; choose one of {list(READERS)}")
        allowed = _COMMON_KEYS + _READER_KEYS[reader]
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise InputError(f"{where} ({reader}): unknown key(s) {unknown}; this reader takes {list(allowed)}")
        values = {k: tuple(v) if isinstance(v, list) and k != "split" else v for k, v in entry.items()}
        values.setdefault("name", f"{reader}_{index}")
        return cls(**values).validate(where)

    def validate(self, where: str) -> "DataSource":
        if self.reader == "synthetic":
            lo, hi = self.seeds
            if not 0 <= lo < hi <= HELD_OUT_FIRST_SEED:
                raise InputError(f"{where}: synthetic seeds must be [first, last) within [0, {HELD_OUT_FIRST_SEED}) "
                                 f"(seeds >= {HELD_OUT_FIRST_SEED} are held out for evaluation), got {list(self.seeds)}")
        elif not self.path:
            raise InputError(f"{where} ({self.reader}) needs 'path'")
        if self.reader == "ct_rate" and not self.reports:
            raise InputError(f"{where} (ct_rate) needs 'reports' (the reports CSV); 'path' is the volume root")
        if not (isinstance(self.weight, (int, float)) and self.weight > 0):
            raise InputError(f"{where}: weight must be a positive number, got {self.weight!r}")
        bad = sorted(set(self.tasks) - set(TASKS))
        if bad or not self.tasks:
            raise InputError(f"{where}: unknown task(s) {bad}; choose from {list(TASKS)}")
        if "interactive" in self.tasks and not {"seg", "refseg"} & set(self.tasks):
            raise InputError(f"{where}: 'interactive' draws its targets from 'seg' or 'refseg'; list one of them too")
        if set(self.split) - {"held_out"}:
            raise InputError(f"{where}: split takes only 'held_out' (a fraction in [0, 1) or a list of case ids)")
        held = self.split.get("held_out", 0)
        if isinstance(held, (int, float)) and not isinstance(held, bool):
            if not 0 <= held < 1:
                raise InputError(f"{where}: split.held_out as a fraction must be in [0, 1), got {held}")
        elif not (isinstance(held, list) and all(isinstance(i, (str, int)) for i in held)):
            raise InputError(f"{where}: split.held_out must be a fraction or a list of case ids")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise InputError(f"{where}: spacing must be three positive numbers (x, y, z in mm)")
        return self

    def to_entry(self) -> dict[str, Any]:
        """The ``datasets:`` entry that ``parse`` reads back into this source (keys its reader takes)."""
        allowed = _COMMON_KEYS + _READER_KEYS[self.reader]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()
                if k in allowed and v is not None}

    def files(self) -> list[tuple[str, str]]:
        """(what, path) of everything that must exist before training starts."""
        if self.reader == "synthetic":
            return []
        need = [("path", self.path)]
        need += [(k, getattr(self, k)) for k in ("root", "reports", "metadata") if getattr(self, k)]
        return need


@dataclass
class OpenSource:
    """A source with its cases listed (not read): ``train`` indexes into ``cases``."""

    spec: DataSource
    cases: Sequence  # LazyCases
    train: list[int]
    held_out: list[str]
    structures: dict[str, list[int]]  # target name -> label values (the dataset's categories)


def _open_cases(s: DataSource):
    from ..data import datasets

    if s.reader == "synthetic":
        from ..data import synthetic
        from ..data.datasets import LazyCases

        seeds = range(*s.seeds)
        kwargs = {}
        if s.shape:  # same body size as the default 32x128x128 phantom at (2.8, 2.8, 5.0) mm
            k, j, i = s.shape
            kwargs = {"shape": tuple(s.shape), "spacing": (2.8 * 128 / i, 2.8 * 128 / j, 5.0 * 32 / k)}
        loaders = [_SyntheticCase(seed, kwargs) for seed in seeds]
        names = {v: n for n, vs in synthetic.STRUCTURE_LABELS.items() for v in vs}
        return LazyCases(loaders, [f"synthetic_{seed}" for seed in seeds], names)
    if s.reader == "msd":
        if not (Path(s.path) / "dataset.json").is_file():
            raise InputError(f"{s.name}: {s.path} has no dataset.json (an MSD / medvlsam2 synth folder)")
        return datasets.read_dataset(s.path, s.subset)  # also attaches reports / VQA / referring sidecars
    if s.reader == "m3d_seg":
        return datasets.read_m3d_seg(s.path, s.subset)
    if s.reader == "m3d_cap":
        return datasets.read_caption_pairs(s.path, s.subset, s.root)
    if s.reader == "ct_rate":
        return datasets.read_ct_rate(s.path, s.reports, s.metadata)
    if s.reader == "m3d_vqa":
        return datasets.read_vqa(s.path, s.root)
    return datasets.read_refseg(s.path, s.root)


class _SyntheticCase:
    """Picklable loader of one phantom (DataLoader workers call it)."""

    def __init__(self, seed: int, kwargs: dict) -> None:
        self.seed, self.kwargs = seed, kwargs

    def __call__(self):
        from ..data.synthetic import generate_case

        return generate_case(self.seed, **self.kwargs)


def _held_out(ids: list[str], spec: DataSource) -> set[str]:
    held = spec.split.get("held_out", 0)
    if isinstance(held, list):
        unknown = sorted(set(map(str, held)) - set(ids))
        if unknown:
            raise InputError(f"{spec.name}: held-out id(s) {unknown[:5]} are not cases of {spec.path}")
        return set(map(str, held))
    # a fraction: the ids with the smallest hashes, so that adding cases keeps earlier choices
    ranked = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    return set(ranked[:round(held * len(ids))])


def open_sources(specs: Sequence[DataSource]) -> list[OpenSource]:
    """Check every folder and index, list the cases and split them; errors name the source and the path."""
    opened = []
    for s in specs:
        for what, path in s.files():
            if not Path(path).exists():
                raise InputError(f"dataset {s.name} ({s.reader}): {what} {path} does not exist; fix the path in "
                                 "the config's datasets list")
        cases = _open_cases(s)
        held = _held_out(list(cases.ids), s)
        train = [i for i, case_id in enumerate(cases.ids) if case_id not in held]
        if not train:
            raise InputError(f"dataset {s.name} ({s.reader}) at {s.path or list(s.seeds)} has no training cases "
                             f"({len(cases)} listed, {len(held)} held out)")
        structures: dict[str, list[int]] = {}
        if "seg" in s.tasks:
            for value, label in sorted(cases.label_names.items()):
                structures.setdefault(label, []).append(int(value))
        opened.append(OpenSource(s, cases, train, sorted(held), structures))
    return opened


HELD_OUT_FILE = "held_out.json"  # in a run's output folder: {source name: {"source": entry, "ids": [case ids]}}


def held_out_record(sources: Sequence[OpenSource]) -> dict:
    return {s.spec.name: {"source": s.spec.to_entry(), "ids": s.held_out} for s in sources}


def held_out_cases(path: str | Path):
    """The cases a training run held out (its ``held_out.json``, or the run folder holding it), read lazily
    from the sources the run trained on, so that ``medvlsam2 evaluate --held-out RUN`` scores exactly them."""
    from ..data.datasets import LazyCases

    p = Path(path)
    p = p / HELD_OUT_FILE if p.is_dir() else p
    if not p.is_file():
        raise InputError(f"{path}: no {HELD_OUT_FILE} there; give a training run's output folder or its {HELD_OUT_FILE}")
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p} is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(record, dict) or not all(isinstance(e, dict) and isinstance(e.get("source"), dict)
                                               and isinstance(e.get("ids"), list) for e in record.values()):
        raise InputError(f"{p} does not list sources with their held-out ids (written before this version?); "
                         "evaluate those cases with --dataset instead")
    loaders, ids, names = [], [], {}
    for index, (name, entry) in enumerate(record.items()):
        spec = DataSource.parse(index, entry["source"])
        for what, file in spec.files():
            if not Path(file).exists():
                raise InputError(f"held-out source {name} ({spec.reader}): {what} {file} no longer exists")
        cases = _open_cases(spec)
        position = {case_id: i for i, case_id in enumerate(cases.ids)}
        missing = sorted(set(map(str, entry["ids"])) - set(position))
        if missing:
            raise InputError(f"held-out source {name}: case(s) {missing[:5]} are no longer in {spec.path or spec.reader}")
        for case_id in map(str, entry["ids"]):
            loaders.append(lambda c=cases, i=position[case_id]: c[i])
            ids.append(case_id)
        names.update(cases.label_names)
    if not ids:
        raise InputError(f"{p}: the run held out no cases (give a source a split: {{held_out: ...}} in its config)")
    return LazyCases(loaders, ids, names)
