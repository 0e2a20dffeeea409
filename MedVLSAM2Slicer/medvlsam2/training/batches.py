"""CTCase -> training tensors, and the per-step sampling plan.

Every case is converted once (``prepare_case``) with the same code inference uses: the encoder input
via ``io.encoder_input``, SAM2 frames via ``io.slices``, chat tokens via ``modeling.prompting``. The data
order is a pure function of (seed, step) (``plan_step``), so a resumed run sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ModelConfig, VisionConfig
from ..data.case import CHOICE_LETTERS, ClosedQA, CTCase, RegionQA
from ..errors import InputError
from ..io.encoder_input import to_encoder_tensor
from ..io.slices import volume_to_frames
from ..modeling.prompting import (IGNORE, REPORT_QUESTION, build_inputs, no_object_answer, region_question, seg_answer,
                                  segment_question)
from .feature_cache import CachedFeatures


@dataclass
class Target:
    """A segmentation target: the phrase after "Segment the", the label values it covers, and for a referring
    expression the structure whose values it names ("" when none does, e.g. an absent one's label 0)."""

    phrase: str
    values: tuple[int, ...]
    structure: str = ""
    answer: str = ""  # the name its segmentation answer gives it ("" = the phrase; ``case_targets``)

    @property
    def named(self) -> str:
        """The words after [SEG] in its answer: ``answer``, else the phrase."""
        return self.answer or self.phrase


@dataclass
class CaseTensors:
    encoder: torch.Tensor  # [1, D, H, W] in [0, 1]
    frames: torch.Tensor  # [K, 3, S, S] float16, SAM2-normalised
    labels: torch.Tensor  # [K, S, S] uint8 label map at the SAM2 frame size (nearest)
    # (question, answer): report, closed and open VQA, segmentation requests; (question, answer, (patch weights [N],
    # geometry [G])) for questions about a region (``modeling.region``)
    texts: list[tuple]
    present: list[Target] = field(default_factory=list)
    absent: list[Target] = field(default_factory=list)
    z_extent: dict[tuple[int, ...], list[int]] = field(default_factory=dict)  # label values -> slices holding them
    interactive: bool = True  # its present targets may also be box/click clips (the source's ``tasks``)
    # training from a feature cache: the frozen encoders' outputs (``frames`` then stays None)
    features: CachedFeatures | None = None
    patch_labels: torch.Tensor | None = None  # [N, L]: label value 1..L present in 3D-encoder patch n (``patch_presence``)
    _on_slice: torch.Tensor | None = field(default=None, repr=False)  # [K, 256] bool: label value v on slice k

    def slices_with(self, target: Target) -> list[int]:
        if target.values not in self.z_extent:
            if self._on_slice is None:  # one pass over the label map, not one per target
                flat = self.labels.flatten(1).long()
                self._on_slice = torch.stack([torch.bincount(row, minlength=256) > 0 for row in flat]) \
                    if flat.shape[1] else torch.zeros((len(flat), 256), dtype=torch.bool)
            hit = self._on_slice[:, [v for v in target.values if 0 <= v < 256]].any(1)
            self.z_extent[target.values] = torch.nonzero(hit).flatten().tolist()
        return self.z_extent[target.values]

    def mask(self, target: Target, slices: Sequence[int]) -> torch.Tensor:
        """Binary float mask [len(slices), S, S] of ``target`` on ``slices``."""
        lab = self.labels[list(slices)]
        values = torch.tensor(target.values, dtype=lab.dtype)
        return torch.isin(lab, values).float()


def case_targets(case: CTCase, structure_labels: dict[str, Iterable[int]], answer_finding_kind: bool = False
                 ) -> tuple[list[Target], list[Target]]:
    """Semantic targets (``structure_labels``) and referring expressions, split into present / absent.
    ``answer_finding_kind``: a referring expression is answered with its ``Referring.answer`` (the finding's kind
    first, "It is [SEG] cyst in the left kidney."), so that the next-token loss at [SEG] must tell a finding in an
    organ from the organ; otherwise, and structures always, with its own words."""
    present_values = set(np.unique(case.labels).tolist()) - {0} if case.labels is not None else set()
    present, absent = [], []
    structures = [Target(name, tuple(int(v) for v in values), name) for name, values in structure_labels.items()]
    for t in structures:
        (present if present_values & set(t.values) else absent).append(t)
    named = {t.values: t.structure for t in structures}
    for ref in case.referring:
        phrase = ref.expression.strip().rstrip(".")
        phrase = phrase[4:] if phrase.lower().startswith("the ") else phrase  # "Segment the" adds it back
        # an absent expression (label 0) covers no voxel: "the cyst in the right kidney" of a phantom whose cyst is on the
        # left is nothing, not the background (label value 0), which is what such targets used to train towards
        values = (int(ref.label),) if ref.label else ()
        t = Target(phrase, values, named.get(values, ""), ref.answer if answer_finding_kind else "")
        (present if ref.label in present_values else absent).append(t)
    return present, absent


def case_texts(case: CTCase) -> list[tuple[str, str]]:
    texts = [(REPORT_QUESTION, case.report)] if case.report else []
    texts += [(qa.prompt(), qa.target()) for qa in case.vqa_closed]
    texts += [(qa.question, qa.answer) for qa in case.vqa_open]
    return texts


REPORT_COPIES = 9  # extra copies of the report row (with case_texts' own: about 1 row in 8 of a phantom's)
ABSENT_COPIES = 2  # absent-target rows ("There is no X.") count twice


def shuffled_choices(case: CTCase, copies: int = 2) -> list[tuple[str, str]]:
    """Each closed question again with its choices in ``copies`` other orders (seeded by the case id), so the
    answer is learnt as content, not as a letter position."""
    rng = np.random.default_rng(list(case.case_id.encode()))
    out = []
    for qa in case.vqa_closed:
        right = qa.choices[CHOICE_LETTERS.index(qa.answer)]
        for _ in range(copies):
            order = [qa.choices[i] for i in rng.permutation(len(qa.choices))]
            again = ClosedQA(qa.question, order, CHOICE_LETTERS[order.index(right)])
            out.append((again.prompt(), again.target()))
    return out


def language_rows(case: CTCase, config: ModelConfig, encoder: torch.Tensor, present: list[Target],
                  absent: list[Target], absent_by_segmenter: bool = False) -> list[tuple]:
    """Language-only rows besides ``case_texts``: "Segment the X." -> "It is [SEG] X." for present targets and
    "There is no X." for absent ones (``absent_by_segmenter``: "It is [SEG] X." too, since the segmenter's
    object score then learns absence), closed VQA with reshuffled choices, and region questions (the
    region as model input) when the model has a region encoder."""
    rows: list[tuple] = [(segment_question(t.phrase), seg_answer(t.named)) for t in present]
    rows += [(segment_question(t.phrase), seg_answer(t.named) if absent_by_segmenter
              else no_object_answer(t.phrase)) for t in absent] * ABSENT_COPIES
    rows += shuffled_choices(case)
    if case.report:  # rows are drawn uniformly: copies keep reports from drowning among the short rows
        rows += [(REPORT_QUESTION, case.report)] * REPORT_COPIES
    if config.region_input and case.labels is not None:
        present = set(np.unique(case.labels).tolist())
        for qa in case.region_qa:  # a component of a present value exists: the generator numbered what it found
            if present & set(qa.values):
                rows.append((region_question(qa.question), qa.answer,
                             RegionInputs(qa, case.labels, case.volume.spacing, encoder[0], config.vision)))
    return rows


@dataclass
class RegionInputs:
    """A region row's model inputs (patch weights [N], geometry [G]) from ``modeling.region.region_inputs``, computed
    when a step draws the row: a case has about 20 region rows and a step draws one or none of them."""

    qa: RegionQA
    labels: np.ndarray
    spacing: tuple[float, float, float]
    encoder: torch.Tensor  # [1, D, H, W]
    vision: VisionConfig

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        from ..modeling.region import region_inputs

        return region_inputs(self.qa.mask(self.labels), self.spacing, self.encoder, self.vision)


def patch_presence(labels: np.ndarray, config: ModelConfig, count: int) -> torch.Tensor:
    """Label map [k, j, i] -> [N, count]: 1 where 3D-encoder patch n (the ViT's flattening order) holds any voxel of
    label value 1..count. The encoder sees the whole field of view resized, so patches tile the label map evenly."""
    from ..modeling.region import patch_grid

    lab = torch.from_numpy(labels.astype(np.int64))
    onehot = torch.stack([lab == v for v in range(1, count + 1)]).float()  # [count, k, j, i]
    return F.adaptive_max_pool3d(onehot, patch_grid(config.vision)).flatten(1).T.contiguous()


def prepare_case(case: CTCase, config: ModelConfig, structure_labels: dict[str, Iterable[int]],
                 with_frames: bool = True, absent_by_segmenter: bool = False, patch_labels: int = 0,
                 answer_finding_kind: bool = False) -> CaseTensors:
    """Convert one case with the inference pre-processing (encoder grid, SAM2 frames); ``absent_by_segmenter``
    as in ``language_rows``; ``patch_labels`` > 0 adds ``patch_presence`` of label values 1..patch_labels;
    ``answer_finding_kind`` as in ``case_targets``.

    ``with_frames=False`` leaves ``frames`` None (the streaming loader builds only the planned slices'). A case
    without a label map (report / VQA only) has no targets and an empty label map [K, 0, 0]."""
    if case.labels is None and (structure_labels or case.referring):
        raise InputError(f"case {case.case_id} has no label map; segmentation targets need one")
    encoder, _ = to_encoder_tensor(case.volume, config.vision.input_size, config.vision.window)
    frames = volume_to_frames(case.volume, config.segmenter.image_size, config.segmenter.window)[0].half() \
        if with_frames else None
    size = config.segmenter.image_size
    if case.labels is None:
        labels = torch.zeros((case.volume.shape[0], 0, 0), dtype=torch.uint8)
    else:
        labels = F.interpolate(torch.from_numpy(case.labels.astype(np.uint8))[:, None].float(), size=(size, size),
                               mode="nearest")[:, 0].to(torch.uint8)
    present, absent = case_targets(case, structure_labels, answer_finding_kind)
    # "Segment the X." -> "It is [SEG] X." as language rows too: stage 1 then teaches the [SEG] state to
    # name its target (a quick language-only loss; stage 2's mask losses alone did not separate left/right)
    rows = language_rows(case, config, encoder, present, absent, absent_by_segmenter)
    asked = case_texts(case)
    texts = asked + rows
    if config.llm.findings_context and case.labels is not None:  # report and VQA rows read the findings sentence
        from ..report.context import context_from_labels, with_context

        sentence = context_from_labels(case.volume, case.labels)
        asked = {q for q, *_ in asked + shuffled_choices(case)}
        texts = [(with_context(sentence, r[0]), *r[1:]) if r[0] in asked else r for r in texts]
    tensors = CaseTensors(encoder[0], frames, labels, texts, present, absent)
    if patch_labels and case.labels is not None:
        tensors.patch_labels = patch_presence(case.labels, config, patch_labels)
    for t in present + absent:
        tensors.slices_with(t)
    return tensors


def generate_pool(generate: Callable[[int], CTCase], seeds: Sequence[int], workers: int = 0) -> list[CTCase]:
    """Generate phantoms (in ``workers`` processes when > 1; the generator is deterministic per seed)."""
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(generate, seeds, chunksize=4))
    return [generate(s) for s in seeds]


# ----- chat rows ------------------------------------------------------------------------------
def text_rows(tokenizer, num_image_tokens: int, pairs: Sequence[tuple[str, str]]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, labels (answer only) and attention mask for (question, answer) pairs."""
    built = [build_inputs(tokenizer, num_image_tokens, q, a) for q, a in pairs]
    length = max(len(ids) for ids, _ in built)
    ids = torch.full((len(built), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(built), length), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(built), length), dtype=torch.long)
    for row, (i, lab) in enumerate(built):
        ids[row, :len(i)], labels[row, :len(i)], attn[row, :len(i)] = i, lab, 1
    return ids, labels, attn


# ----- the per-step plan ----------------------------------------------------------------------
START_MODES = ("inside", "middle", "edge")


@dataclass
class Clip:
    case: int
    target: Target
    slices: list[int]  # consecutive slices, first = prompted slice (either direction)
    start: str = "inside"  # START_MODES: a random slice holding the target, its middle slice, or its first/last


@dataclass(frozen=True)
class ClickSchedule:
    """How box/click clips are drawn, after SAM2's own training: clip length, where the prompt goes and how many
    corrective clicks follow, on the prompted slice and on tracked slices (each click then lands on an error
    region of the mask it corrects, sampled in ``stage2``)."""

    clip_len: tuple[int, int] = (6, 6)  # [min, max] slices; one length per step so the clips batch together
    max_corrections: int = 1  # corrective clicks per corrected slice: 0..N on the prompted slice, 1..N elsewhere
    corrected_slices: int = 1  # tracked slices per clip that get corrective clicks (then condition like prompts)
    middle_start_rate: float = 0.0  # share of clips prompted on the target's middle slice (as a 3D box is)
    edge_start_rate: float = 0.0  # share prompted on its first or last slice, tracking into the organ


@dataclass
class StepPlan:
    text: list[tuple]  # (case, question, answer) or (case, question, answer, region inputs)
    seg: list[Clip]  # text-prompted clips; row i of the chat batch asks for seg[i].target
    probes: list[tuple[int, Target, list[int]]]  # (case, target, slices) decoded without memory
    interactive: list[Clip]
    interactive_kind: str  # "box" or "points" (one kind per step so the prompts batch together)
    corrections: dict[int, int] = field(default_factory=dict)  # clip slice index -> corrective clicks there


def _clip(rng: np.random.Generator, case: CaseTensors, index: int, target: Target, length: int,
          start_mode: str = "inside") -> Clip:
    k = case.labels.shape[0]
    present = case.slices_with(target) or list(range(k))  # absent target: start anywhere
    length = min(length, k)
    step = 1 if rng.random() < 0.5 else -1
    if start_mode == "middle":  # the slice a 3D box prompts (``evaluation.interactive.initial_box``)
        mid = round((present[0] + present[-1]) / 2)
        start = min(present, key=lambda s: abs(s - mid))
    elif start_mode == "edge":  # the organ's thin end, tracked inwards
        first = rng.random() < 0.5
        start, step = (present[0], 1) if first else (present[-1], -1)
    else:
        start = int(rng.choice(present))
    if not 0 <= start + step * (length - 1) < k:
        step = -step
    if not 0 <= start + step * (length - 1) < k:  # neither direction fits: keep the start inside the volume
        start = min(max(start, length - 1), k - 1) if step < 0 else min(start, k - length)
    return Clip(index, target, [int(start + step * t) for t in range(length)], start_mode)


def _pick(rng: np.random.Generator, targets: list[Target], weights: dict[str, float] | None) -> Target:
    if not weights:
        return targets[int(rng.integers(len(targets)))]
    w = np.array([weights.get(t.phrase, weights.get(t.structure, 1.0)) for t in targets], dtype=np.float64)
    return targets[int(rng.choice(len(targets), p=w / w.sum()))]


def plan_step(seed: int, step: int, pool: Sequence[CaseTensors], stage: int, text_cases: int, seg_clips: int,
              interactive_clips: int, clip_len: int, probes: int, absent_rate: float = 0.0,
              target_weights: dict[str, float] | None = None, clicks: ClickSchedule | None = None) -> StepPlan:
    """Everything random about one step, drawn from a generator seeded by (seed, step).

    ``target_weights`` oversamples text-prompted targets by phrase or structure (e.g. the harder kidneys; a
    referring expression takes its structure's weight unless its phrase has one); ``clicks`` shapes
    the box/click clips (default: ``clip_len`` slices, one correction on the prompted and one tracked slice).
    ``absent_rate`` is 0 by default: an absent target is a language row ("There is no X.", no [SEG]), and
    SAM2 learns negative object scores from the probes on slices without the target."""
    clicks = clicks or ClickSchedule((clip_len, clip_len))
    rng = np.random.default_rng([seed, step])
    text = []
    for c in rng.choice(len(pool), size=min(text_cases, len(pool)), replace=False):
        pairs = pool[c].texts
        if pairs:
            text.append((int(c), *pairs[int(rng.integers(len(pairs)))]))
    if stage == 1:
        return StepPlan(text, [], [], [], "box")
    seg, probe_list, inter = [], [], []
    for _ in range(seg_clips):
        c = int(rng.integers(len(pool)))
        case = pool[c]
        # now and then ask for a structure the case lacks: the object score must stay negative
        use_absent = case.absent and (not case.present or rng.random() < absent_rate)
        choices = case.absent if use_absent else case.present
        if not choices:
            continue
        target = _pick(rng, choices, target_weights)
        seg.append(_clip(rng, case, c, target, clip_len))
        k = case.labels.shape[0]
        # probes: half on slices holding the target (any of them: a short clip covers few), half anywhere (mostly
        # absent), same [SEG] tokens
        inside = case.slices_with(target) or seg[-1].slices or list(range(k))
        picks = [int(rng.choice(inside)) for _ in range(probes // 2)]
        picks += [int(v) for v in rng.integers(0, k, size=probes - len(picks))]
        probe_list.append((c, target, picks))
    inter_len = int(rng.integers(clicks.clip_len[0], clicks.clip_len[1] + 1))
    for _ in range(interactive_clips):
        c = int(rng.integers(len(pool)))
        case = pool[c]
        if case.present and case.interactive:
            target = case.present[int(rng.integers(len(case.present)))]
            u = rng.random()
            mode = "middle" if u < clicks.middle_start_rate else \
                "edge" if u < clicks.middle_start_rate + clicks.edge_start_rate else "inside"
            inter.append(_clip(rng, case, c, target, inter_len, mode))
    kind = "box" if rng.random() < 0.5 else "points"
    return StepPlan(text, seg, probe_list, inter, kind, _corrections(rng, inter, clicks))


def _corrections(rng: np.random.Generator, clips: list[Clip], clicks: ClickSchedule) -> dict[int, int]:
    """Clip slice index -> corrective clicks: 0..max on the prompted slice (0 trains the box or click alone, the
    first step users see), 1..max on ``corrected_slices`` tracked slices drawn at random."""
    if not clips or clicks.max_corrections < 1:
        return {}
    length = len(clips[0].slices)
    plan = {0: int(rng.integers(0, clicks.max_corrections + 1))}
    tracked = rng.choice(np.arange(1, length), size=min(clicks.corrected_slices, length - 1), replace=False)
    for t in sorted(int(v) for v in tracked):
        plan[t] = int(rng.integers(1, clicks.max_corrections + 1))
    return {t: n for t, n in plan.items() if n > 0}


def seg_pairs(plan: StepPlan) -> list[tuple[int, str, str]]:
    """Chat rows for the text-prompted clips: "Segment the X." -> "It is [SEG] X."."""
    return [(clip.case, segment_question(clip.target.phrase), seg_answer(clip.target.named)) for clip in plan.seg]
