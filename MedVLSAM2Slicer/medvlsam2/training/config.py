"""Training configuration: one dataclass, read from a YAML or JSON file (unknown keys are errors).

``datasets:`` lists the data sources (``training.sources.DataSource``); ``init:`` the released parts to
start a fresh model from (``InitParts``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .batches import ClickSchedule
from .sources import DataSource

STAGES = (1, 2)
# model-config settings a run may change on its init_from bundle (they change no weight's shape)
OVERRIDABLE = {"llm": ("findings_context",), "projector": ("mlp_first", "num_tokens"),
               "segmenter": ("text_decoding", "stop_score", "grow_score", "num_key_slices")}
MODULES = ("vision_encoder", "projector", "llm", "bridge", "segmenter", "region")


@dataclass
class InitParts:
    """Released parts a fresh model starts from (each optional; paths on this machine, nothing is downloaded)."""

    sam2_checkpoint: str | None = None  # official SAM2.1 / MedSAM2 .pt (or .safetensors) for the segmenter
    llm: str | None = None  # local Hugging Face LLM folder (its tokenizer too); LoRA per ``lora_r``
    vlm: str | None = None  # Med3DVLM folder (encoder + projector + LLM) or its DCFormer_SigLIP encoder folder

    def paths(self) -> list[tuple[str, str]]:
        return [(f"init.{k}", v) for k, v in dataclasses.asdict(self).items() if v]


@dataclass
class TrainConfig:
    """What to train, on which data, for how long, and where to write checkpoints.

    Paths are relative to the working directory. ``datasets`` is the list of data sources (see
    ``training.sources``); each step reads ``cases_per_step`` of their cases (DataLoader ``workers``),
    preprocessed once into ``cache_dir``.
    """

    stage: int = 2
    model: str = "small"  # named config (medvlsam2.config) for a fresh model
    init_from: str | None = None  # bundle folder to start from (e.g. the stage-1 output); overrides ``model``/``init``
    init: InitParts = field(default_factory=InitParts)
    datasets: tuple[DataSource, ...] = ()
    cases_per_step: int = 4  # cases read per step and rank; text rows and clips are drawn from them
    workers: int = 0  # DataLoader processes reading and preparing the next steps (0: the training process)
    cache_dir: str = "runs/cache"  # preprocessed cases (MONAI PersistentDataset), shared by runs
    # frozen-encoder features of every training case, encoded once into this folder and read back each step
    # (``training.feature_cache``); the 3D vision encoder, SAM2's image encoder and the decoder's conv_s0/conv_s1
    # then stay frozen. A change of their weights or of the preprocessing re-encodes the cases.
    feature_cache: str | None = None
    feature_cache_dtype: str = "float16"  # float16, bfloat16 or float32 (exact, twice the size)
    lora_r: int | None = None  # LoRA rank of the LLM (None: the model config's; 0: no LoRA)
    gradient_checkpointing: bool = False  # in the LLM and the 3D vision encoder (memory for compute)
    output_dir: str = "runs/demo"
    max_steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    trainable: tuple[str, ...] = MODULES  # modules, or parts such as "segmenter.sam_mask_decoder"
    mixed_precision: str = "no"  # "no", "bf16" or "fp16" (accelerate)
    cpu: bool = False  # force CPU even when a GPU is present
    # per step
    text_cases: int = 4  # cases whose report / VQA pairs are trained on
    seg_clips: int = 4  # text-prompted clips ("Segment the X." -> [SEG] -> SAM2 with memory)
    interactive_clips: int = 2  # clips prompted by GT-sampled clicks or boxes, then corrective clicks
    clip_len: int = 6  # 0: text targets train by probes alone (no memory clip; ``text_decoding: slices`` bundles)
    # box/click clips as SAM2 trains them (``batches.ClickSchedule``); interactive_clip_len [0, 0] = clip_len
    interactive_clip_len: tuple[int, int] = (0, 0)  # [min, max] slices per box/click clip (memory over 8-16)
    max_corrections: int = 1  # corrective clicks per corrected slice (SAM2 samples up to 7)
    corrected_slices: int = 1  # tracked slices per box/click clip that get corrective clicks
    middle_start_rate: float = 0.0  # share of box/click clips prompted on the target's middle slice
    edge_start_rate: float = 0.0  # share prompted on the target's first or last slice (its thin end)
    thin_end_weight: float = 1.0  # object-score loss weight of slices holding < 25% of the organ's largest area
    probes: int = 4  # single-slice decodes without memory per text-prompted clip (present and absent)
    # True: a probe slice holding the target trains its mask even while its object score still says "absent" (SAM2
    # blanks such a slice's masks, so they carry no gradient): a new target (a lesion) learns mask and score at once
    ungated_probes: bool = False
    # sampling weight per target phrase or structure name (default 1); a referring expression ("the lesion in the
    # liver") takes its structure's ("liver lesion") unless its phrase has its own
    target_weights: dict[str, float] = field(default_factory=dict)
    # share of text-prompted clips that ask for a target the case lacks: "It is [SEG] X." with an all-negative
    # object score on every slice, so the segmenter (which sees the CT at full resolution) learns absence; > 0
    # also turns the "There is no X." language rows into "It is [SEG] X." (the LLM grounds every request and
    # the Session's presence gate decides), since a small LLM's 32 visual tokens cannot see a 15 mm lesion
    absent_rate: float = 0.0
    # True: referring expressions of findings are answered with the finding's kind first ("Segment the left kidney
    # hypodense region." -> "It is [SEG] cyst in the left kidney."; ``batches.case_targets``)
    answer_finding_kind: bool = False
    # stage 1: > 0 adds the auxiliary patch-label loss (``stage1``): a training-only head predicts from each visual
    # token which label values 1..patch_labels its encoder patches hold, weighted by ``patch_label_weight``
    patch_labels: int = 0
    patch_label_weight: float = 1.0
    # settings of the ``init_from`` bundle's model config changed before training, e.g.
    # {projector: {mlp_first: true}, segmenter: {text_decoding: slices}}; only ``OVERRIDABLE`` ones (no weight shapes)
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # loss weights and per-module learning-rate multipliers (e.g. {"llm": 10} to move the LLM faster)
    lm_weight: float = 1.0
    seg_weight: float = 1.0
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 200  # steps
    checkpoint_every_s: float = 300.0  # and at least this often in wall-clock seconds
    keep_checkpoints: int = 2
    time_limit_s: float = 0.0  # > 0: checkpoint and stop once this much wall-clock time has passed

    def validate(self) -> "TrainConfig":
        if self.stage not in STAGES:
            raise InputError(f"stage must be 1 or 2, got {self.stage}")
        if not self.datasets:
            raise InputError("datasets: list at least one data source, e.g. [{reader: m3d_seg, path: /data/M3D_Seg/0000}] "
                             "or [{reader: synthetic, seeds: [0, 512]}]")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise InputError(f"datasets: source names must be unique, got {names}")
        if self.cases_per_step < 1 or self.workers < 0:
            raise InputError("cases_per_step must be at least 1 and workers at least 0")
        if self.lora_r is not None and self.lora_r < 0:
            raise InputError("lora_r must be 0 (no LoRA) or a positive rank")
        bad = sorted(t for t in self.trainable if t.split(".")[0] not in MODULES)
        if bad:
            raise InputError(f"unknown trainable module(s) {bad}; choose from {list(MODULES)} or a part of one "
                             "(e.g. segmenter.sam_mask_decoder)")
        for section, values in self.model_overrides.items():
            bad = sorted(set(values) - set(OVERRIDABLE.get(section, ()))) if isinstance(values, dict) else [values]
            if bad:
                raise InputError(f"model_overrides: {section}.{bad} cannot be changed on a trained bundle; "
                                 f"allowed: {OVERRIDABLE}")
            if not self.init_from:
                raise InputError("model_overrides changes the init_from bundle's config; set init_from")
        if self.patch_labels < 0 or self.patch_label_weight <= 0:
            raise InputError("patch_labels must be >= 0 and patch_label_weight > 0")
        if self.patch_labels and (self.stage != 1 or not any(t.split(".")[0] == "vision_encoder" for t in self.trainable)):
            raise InputError("patch_labels trains the 3D vision encoder: use it in stage 1 with vision_encoder in trainable")
        if self.feature_cache:
            from .feature_cache import STORE_DTYPES, covers_encoder

            if self.feature_cache_dtype not in STORE_DTYPES:
                raise InputError(f"feature_cache_dtype must be one of {sorted(STORE_DTYPES)}, "
                                 f"got {self.feature_cache_dtype!r}")
            bad = sorted(t for t in self.trainable if covers_encoder(t))
            if bad:
                raise InputError(f"feature_cache: the cached encoders stay frozen, but trainable lists {bad}; list "
                                 "the trained parts instead (e.g. llm, projector, bridge, segmenter.sam_mask_decoder)")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise InputError("mixed_precision must be 'no', 'bf16' or 'fp16'")
        bad = sorted(set(self.lr_multipliers) - set(MODULES))
        if bad:
            raise InputError(f"lr_multipliers: unknown module(s) {bad}; choose from {list(MODULES)}")
        if not 0 <= self.absent_rate < 1:
            raise InputError(f"absent_rate must be in [0, 1), got {self.absent_rate}")
        if any(v <= 0 for v in [*self.lr_multipliers.values(), *self.target_weights.values()]):
            raise InputError("lr_multipliers and target_weights must be positive numbers")
        if self.stage == 2 and (self.clip_len < 0 or self.clip_len == 0 and self.probes < 1):
            raise InputError("clip_len must be at least 1, or 0 (text targets trained by probes alone) with probes >= 1")
        if self.clip_len == 0 and self.interactive_clips and self.interactive_clip_len == (0, 0):
            raise InputError("clip_len 0 needs its own interactive_clip_len, e.g. [1, 1]")
        lo_len, hi_len = self.interactive_clip_len
        if (lo_len, hi_len) != (0, 0) and not 1 <= lo_len <= hi_len:
            raise InputError(f"interactive_clip_len must be [min, max] with 1 <= min <= max (or [0, 0] for clip_len), "
                             f"got {list(self.interactive_clip_len)}")
        if self.max_corrections < 0 or self.corrected_slices < 0:
            raise InputError("max_corrections and corrected_slices must be 0 or more")
        rates = (self.middle_start_rate, self.edge_start_rate)
        if min(rates) < 0 or sum(rates) > 1:
            raise InputError("middle_start_rate and edge_start_rate must be >= 0 and add up to at most 1")
        if self.thin_end_weight <= 0:
            raise InputError("thin_end_weight must be a positive number")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def click_schedule(self) -> ClickSchedule:
        """The box/click clip recipe for ``batches.plan_step``."""
        length = self.interactive_clip_len if self.interactive_clip_len != (0, 0) else (self.clip_len, self.clip_len)
        return ClickSchedule(tuple(length), self.max_corrections, self.corrected_slices, self.middle_start_rate,
                             self.edge_start_rate)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "TrainConfig":
        """From plain data (YAML/JSON); unknown keys anywhere are errors naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        init = values.get("init") or {}
        if not isinstance(init, (dict, InitParts)):
            raise InputError(f"{where}: init must be a mapping of {[f.name for f in dataclasses.fields(InitParts)]}")
        if isinstance(init, dict):
            bad = sorted(set(init) - {f.name for f in dataclasses.fields(InitParts)})
            if bad:
                raise InputError(f"{where}: unknown init part(s) {bad}; known: "
                                 f"{[f.name for f in dataclasses.fields(InitParts)]}")
            init = InitParts(**init)
        values["init"] = init
        values["datasets"] = tuple(d if isinstance(d, DataSource) else DataSource.parse(i, d)
                                   for i, d in enumerate(values.get("datasets") or ()))
        return cls(**values).validate()


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or JSON file into a validated ``TrainConfig``; ``overrides`` win."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"training config {p} not found")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise InputError(f"{p.name} must hold a mapping of settings")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data, p.name)
