"""Streaming training data: each step reads a few cases, plans the step and builds only the slices it uses.

Step ``n`` of rank ``r`` (data step ``d = n * world + r``) is a pure function of (seed, d):
``cases_per_step`` cases are drawn from the sources by their weights with a generator seeded by
(seed, d), read from the on-disk cache (``data.transforms.persistent_cases``: read + preprocessed
once), converted with the inference pre-processing (``batches.prepare_case``, without SAM2 frames),
planned (``batches.plan_step``, seeded by (seed, d)), and then only the planned slices' SAM2 frames are
built (``PlannedSlices``; the label maps stay whole at the frame size, uint8, since losses weigh a slice
by the target's largest area). DataLoader workers do all of this ahead of the training loop,
so host and device memory depend on the step's size, not on the dataset's, and a resumed run sees the
same batches.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import ModelConfig
from ..data.case import CTCase
from ..data import synthetic
from ..io.slices import volume_to_frames
from ..io.volume import Volume
from .batches import CaseTensors, StepPlan, plan_step
from .config import TrainConfig
from .feature_cache import TrainFeatureCache, entry_key
from .sources import OpenSource


class PlannedSlices:
    """The slices a step uses of a per-slice tensor [K, ...]; indexing with a list of planned slices stacks
    them, like the full tensor would (``.shape`` and ``.dtype`` are the full tensor's)."""

    def __init__(self, slices: dict[int, torch.Tensor], num_slices: int, like: torch.Tensor) -> None:
        self._slices = slices
        self.shape = torch.Size((num_slices, *like.shape[1:]))
        self.dtype = like.dtype

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self._slices[index]
        try:
            return torch.stack([self._slices[int(k)] for k in index])
        except KeyError as exc:
            raise KeyError(f"slice {exc} was not planned for this step") from None

    def __len__(self) -> int:
        return self.shape[0]


def planned_slices(plan: StepPlan) -> dict[int, set[int]]:
    """Case (index into the step's pool) -> the slices the plan decodes."""
    used: dict[int, set[int]] = {}
    for clip in plan.seg + plan.interactive:
        used.setdefault(clip.case, set()).update(clip.slices)
    for case, _, slices in plan.probes:
        used.setdefault(case, set()).update(slices)
    return used


def _for_tasks(case: CTCase, tasks: Sequence[str]) -> CTCase:
    """The case with only what its source's ``tasks`` train (reports, VQA and region questions, referring
    expressions)."""
    vqa = "vqa" in tasks
    return replace(case, report=case.report if "report" in tasks else None, vqa_closed=case.vqa_closed if vqa else [],
                   vqa_open=case.vqa_open if vqa else [], region_qa=case.region_qa if vqa else [],
                   referring=case.referring if "refseg" in tasks else [])


class StepData(Dataset):
    """Item ``d`` = (pool, plan) of data step ``d``: the step's cases as ``CaseTensors`` with only the planned
    slices' frames and labels, and the step's plan (indices into that pool)."""

    def __init__(self, sources: Sequence[OpenSource], cfg: TrainConfig, model_config: ModelConfig) -> None:
        from ..data.transforms import persistent_cases, standardize_transform

        self.sources, self.cfg, self.model_config = list(sources), cfg, model_config
        weights = np.array([s.spec.weight for s in self.sources], dtype=np.float64)
        self.p = weights / weights.sum()
        cache = Path(cfg.cache_dir)
        self.cached, self.keys = [], []
        for s in self.sources:
            spacing = tuple(s.spec.spacing) if s.spec.spacing else None
            key = f"{s.spec.reader}|{Path(s.spec.path).resolve() if s.spec.path else s.spec.seeds}|{s.spec.shape}|{spacing}"
            if s.spec.reader == "synthetic":  # a seed's phantom (image or texts) changes with the generator version
                key += f"|generator {synthetic.GENERATOR_VERSION}"
            transform = None if s.spec.reader == "synthetic" else standardize_transform(spacing)
            self.cached.append(persistent_cases(s.cases, cache, key, transform))
            self.keys.append(key)
        # frozen-encoder features (``training.feature_cache``): set by the loop once built; steps then read the
        # planned slices' SAM2 features and the 3D patch tokens instead of building frames
        self.features: TrainFeatureCache | None = None

    def __len__(self) -> int:
        return self.cfg.max_steps * 1_000_000  # any data step (the sampler names them)

    def case(self, source: int, index: int) -> CTCase:
        from ..data.transforms import record_case

        return _for_tasks(record_case(self.cached[source][index]), self.sources[source].spec.tasks)

    def case_key(self, source: int, index: int) -> str:
        """The feature-cache key of a case: its source's cache key and its id."""
        return entry_key(self.keys[source], self.sources[source].cases.ids[index])

    def draw(self, data_step: int) -> list[tuple[int, int]]:
        """(source, case index) of the step's cases; a function of (seed, data step) only."""
        rng = np.random.default_rng([self.cfg.seed, data_step, 7])
        picks = []
        for s in rng.choice(len(self.sources), size=self.cfg.cases_per_step, p=self.p):
            train = self.sources[int(s)].train
            picks.append((int(s), int(train[int(rng.integers(len(train)))])))
        return list(dict.fromkeys(picks))  # a case drawn twice is one pool entry

    def __getitem__(self, data_step: int) -> tuple[list[CaseTensors], StepPlan]:
        from .batches import prepare_case

        pool, volumes, keys = [], [], []
        for s, i in self.draw(data_step):
            case = self.case(s, i)
            src = self.sources[s]
            structures = src.structures if case.labels is not None else {}
            tensors = prepare_case(case, self.model_config, structures, with_frames=False,
                                   absent_by_segmenter=self.cfg.absent_rate > 0, patch_labels=self.cfg.patch_labels,
                                   answer_finding_kind=self.cfg.answer_finding_kind)
            tensors.interactive = "interactive" in src.spec.tasks
            pool.append(tensors)
            volumes.append(case.volume)
            keys.append(self.case_key(s, i))
        cfg = self.cfg
        plan = plan_step(cfg.seed, data_step, pool, cfg.stage, cfg.text_cases, cfg.seg_clips, cfg.interactive_clips,
                         cfg.clip_len, cfg.probes, absent_rate=cfg.absent_rate, target_weights=cfg.target_weights,
                         clicks=cfg.click_schedule())
        used = planned_slices(plan)
        seg = self.model_config.segmenter
        for c, (tensors, volume) in enumerate(zip(pool, volumes)):
            keep = sorted(used.get(c, ()))
            if self.features is not None:
                tensors.features = self.features.read(keys[c], keep)
                continue
            k = tensors.labels.shape[0]
            frames = volume_to_frames(Volume(volume.array[keep]), seg.image_size, seg.window)[0].half() if keep else None
            tensors.frames = PlannedSlices(dict(zip(keep, frames)) if keep else {}, k,
                                           frames if keep else torch.zeros((0, 3, seg.image_size, seg.image_size)))
        return pool, plan


def _identity(item):
    return item


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # the training process keeps the cores; workers only read and resize


def step_loader(data: StepData, data_steps: Sequence[int], workers: int) -> DataLoader:
    """Batches of ``data`` for ``data_steps`` in order, read ahead by ``workers`` processes (0: in this one)."""
    return DataLoader(data, batch_size=None, sampler=list(data_steps), num_workers=workers, collate_fn=_identity,
                      worker_init_fn=_one_thread if workers else None, prefetch_factor=2 if workers else None)


def corpus(data: StepData, per_source: int = 64) -> list[str]:
    """Texts of the first ``per_source`` training cases of each source (for a fresh word-level tokenizer)."""
    from ..modeling.prompting import segment_question
    from .batches import case_targets, case_texts

    texts: list[str] = []
    for s, src in enumerate(data.sources):
        texts += [segment_question(name) for name in src.structures]
        for i in src.train[:per_source]:
            case = data.case(s, i)
            texts += [t for pair in case_texts(case) for t in pair]
            texts += [segment_question(t.phrase) for group in case_targets(case, {}) for t in group]
    return texts
