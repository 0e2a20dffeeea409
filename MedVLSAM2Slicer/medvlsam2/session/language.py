"""Text prompts and questions on a Session: one object per [SEG] the model emits, a region as model input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from ..data.case import ClosedQA
from ..errors import CapabilityError, InputError
from ..modeling.key_slices import choose_key_slices
from ..modeling.prompting import FORCED
from ..results import SegmentationResult
from ..utils.cancel import CancelToken, check
from .propagation import Progress
from .state import Prompt

if TYPE_CHECKING:
    from ..report.context import SegmentedFindings
    from .core import Session


def segment_target(session: "Session", prompt: str, cancel: CancelToken | None, progress: Progress | None,
                   force: bool) -> tuple[list[SegmentationResult], str]:
    """The target's results, and why there are none (empty when there are)."""
    results = []
    predictor = session.predictor
    cfg = session.model.config.segmenter
    prompts = session.model.text_to_seg_prompts(session.visual_tokens(), prompt, cancel=cancel, force=force)
    if not prompts:
        return [], f"the model answered that there is no {prompt}"
    if cfg.text_decoding not in ("memory", "slices"):
        raise InputError(f"segmenter text_decoding must be 'memory' or 'slices', got {cfg.text_decoding!r}")
    for name, tokens in prompts:
        obj = session.add_object(name)
        o = session._objects[obj]
        o.tokens = tokens
        try:
            if cfg.text_decoding == "slices":
                result = _every_slice(session, obj, cancel, progress, force)
                if result is None:
                    session.remove(obj)
                else:
                    results.append(result)
                continue
            with predictor.extra_prompt_tokens(tokens):
                keys, scores = choose_key_slices(lambda k: predictor.object_score_without_memory(o.state, k),
                                                 session.volume.shape[0], cfg.key_slice_stride, cfg.num_key_slices)
            # The segmenter sees the image at full resolution: no probe slice scoring above the gate means
            # the target is not there, whatever the language model answered (``force`` draws it anyway).
            if max(scores.values()) < cfg.stop_score:
                if not force:
                    session.remove(obj)
                    continue
                o.name = name if name.endswith(FORCED) else f"{name} {FORCED}"
            for k in keys:
                predictor.add_prompt_tokens(o.state, k, 1, tokens)
            o.prompts = [Prompt(k) for k in keys]
            results.append(session.propagate(obj, cancel=cancel, progress=progress))
        except BaseException:
            session.remove(obj)  # a cancelled text prompt leaves no half-made object
            raise
    reason = "" if results else (f"the segmenter found no {prompt}: no slice scored above its presence "
                                 f"gate ({cfg.stop_score:g})")
    return results, reason


def kept_slices(masks: dict[int, np.ndarray], scores: dict[int, float], gate: float, grow: float | None) -> set[int]:
    """The slices whose mask a "slices" text object keeps: those whose object score reaches ``gate``, then, when
    ``grow`` is set, each neighbour of a kept slice whose score reaches ``grow`` and whose mask overlaps that
    slice's by at least half the smaller mask (hysteresis along the slice axis)."""
    kept = {k for k in masks if scores[k] >= gate and masks[k].any()}
    todo = list(kept) if grow is not None else []
    while todo:
        k = todo.pop()
        for nb in (k - 1, k + 1):
            if nb in masks and nb not in kept and scores[nb] >= grow and masks[nb].any():
                if (masks[nb] & masks[k]).sum() * 2 >= min(masks[nb].sum(), masks[k].sum()):
                    kept.add(nb)
                    todo.append(nb)
    return kept


def without_strays(mask: np.ndarray) -> np.ndarray:
    """``mask`` [K, J, I] without its parts on one slice, when some part spans ``MIN_PART_SLICES`` or more: the stray
    bits that decoding each slice alone leaves beside the object. On phantoms 20400-20427 (held-out phrasings and bare
    names, per-slice decodes of the shipped weights) they were in 39 of 70 lesion masks and 16 of 42 cyst masks, and
    dropping them raised referring Dice 0.760 -> 0.779 (lesions) and 0.615 -> 0.641 (cysts)."""
    from scipy.ndimage import label

    from ..plausibility.checks import MIN_PART_SLICES, slice_spans

    parts, n = label(mask)
    if n < 2:
        return mask
    deep = [i + 1 for i, span in enumerate(slice_spans(parts)) if span >= MIN_PART_SLICES]
    return np.isin(parts, deep).astype(mask.dtype) if deep else mask


def _every_slice(session: "Session", obj: int, cancel: CancelToken | None, progress: Progress | None,
                 force: bool) -> SegmentationResult | None:
    """``text_decoding`` "slices": the object's tokens decoded on every slice without memory; a slice keeps its
    mask where its object score reaches the gate (``stop_score``). None when no slice does (``force``: the
    best slice is kept anyway, and the object named "(forced)"). The best slice becomes the object's prompted
    slice, so clicks and a later propagation start from it as from a key slice."""
    predictor, o = session.predictor, session._objects[obj]
    cfg, n = session.model.config.segmenter, session.volume.shape[0]
    masks, scores = {}, {}
    with predictor.extra_prompt_tokens(o.tokens):
        for k in range(n):
            check(cancel)
            logits, scores[k] = predictor.decode_tokens_without_memory(o.state, k)
            masks[k] = (logits > 0).cpu().numpy().astype(np.uint8)
            if progress:
                progress(k + 1, n)
    best = max(scores, key=scores.get)
    kept = kept_slices(masks, scores, cfg.stop_score, cfg.grow_score)
    if not kept:
        if not force or not masks[best].any():
            return None
        kept, o.name = {best}, o.name if o.name.endswith(FORCED) else f"{o.name} {FORCED}"
    volume = np.zeros((n,) + masks[best].shape, np.uint8)
    for k in kept:
        volume[k] = masks[k]
    volume = without_strays(volume)
    writes = {k: volume[k] for k in kept if volume[k].any()}
    key = max(writes, key=scores.get)
    predictor.add_prompt_tokens(o.state, key, 1, o.tokens)
    predictor.set_slice_mask(o.state, key, torch.from_numpy(writes[key] > 0))
    return session._commit(obj, writes, [Prompt(key)], {k: scores[k] for k in writes}, None)


def segmented_findings(session: "Session", cancel: CancelToken | None):
    """The Session's ``report.context.SegmentedFindings`` when its model reads the findings sentence, else None: its own
    text segmentation of ``CONTEXT_TARGETS`` (``CONTEXT_AGREEMENT`` of a target's phrasings must find it), vetted like
    any text result, once per Session; the objects it makes are removed again (the user's segments are not touched)."""
    cfg = getattr(session.model, "config", None)
    if not (cfg is not None and cfg.llm.findings_context and session.predictor is not None):
        return None
    from ..plausibility.checks import MIN_PART_SLICES
    from ..report.context import CONTEXT_AGREEMENT, CONTEXT_TARGETS, findings_context

    if session._findings is None:
        masks = {}
        for target, phrasings in CONTEXT_TARGETS.items():
            found = []
            for phrase in phrasings:
                mask = np.zeros(session.volume.shape, bool)
                for r in session.segment_text(phrase, cancel=cancel).found:
                    mask |= session.mask(r.object_id) > 0
                    session.remove(r.object_id)
                if mask.any():
                    found.append(mask)
            if found and len(found) >= min(CONTEXT_AGREEMENT, len(phrasings)):
                masks[target] = np.logical_or.reduce(found)
        session._findings = findings_context(session.volume, masks, session._body, MIN_PART_SLICES)
    return session._findings


def grounded(found: "SegmentedFindings | None", question: str) -> str:
    """``question`` after the findings sentence of ``found`` (``segmented_findings``), or as it is when None."""
    from ..report.context import with_context

    return question if found is None else with_context(found.sentence, question)


def region_mask(session: "Session", context: dict | None) -> np.ndarray | None:
    """The region ``context`` ({"object": id} or {"box": (i0, j0, k0, i1, j1, k1)}) names, as a [K, J, I] mask."""
    if context and "object" in context:
        mask = session._get(int(context["object"])).mask
        if not mask.any():
            raise InputError("this segment is empty; segment something before asking about it")
        return mask
    if context and "box" in context:
        box = tuple(int(v) for v in context["box"])
        shape = session.volume.shape
        if len(box) != 6 or not all(0 <= box[a] <= box[a + 3] < n for a, n in enumerate(shape[::-1])):
            raise InputError(f"a context box is (i0, j0, k0, i1, j1, k1) inside the volume {shape[::-1]} "
                             f"(i, j, k); got {box}")
        mask = np.zeros(shape, np.uint8)
        mask[box[2]:box[5] + 1, box[1]:box[4] + 1, box[0]:box[3] + 1] = 1
        return mask
    return None


def ask(session: "Session", question: str, context: dict | None, cancel: CancelToken | None) -> Iterator[str]:
    """``Session.ask``: the question about the whole volume, or about the region ``context`` names; a question about the
    spleen's size is answered from the measured spleen (``report.context.measured_answer``)."""
    model, volume = session.model, session.volume
    region = region_mask(session, context)
    if region is None:
        from ..report.context import measured_answer

        found = segmented_findings(session, cancel)
        measured = measured_answer(question, found) if found else None
        stream = iter([measured]) if measured else model.stream_text(session.visual_tokens(), grounded(found, question),
                                                                     cancel=cancel)
    else:
        if not getattr(model, "supports_region_input", False):
            raise CapabilityError("this model cannot take a region as input; load a bundle with region input (e.g. one "
                                  "trained with configs/train/demo_stage2_region_cpu.yaml) or ask without a region")
        if not getattr(model, "region_trained", False):
            raise CapabilityError("this bundle's region encoder was never trained, so its answers about a region would "
                                  "be guesses; ask without a region, or load a bundle trained with questions about a "
                                  "region (configs/train/demo_stage2_region_cpu.yaml)")
        from ..io.encoder_input import to_encoder_tensor

        images, _ = to_encoder_tensor(volume, model.vision_input_size, model.vision_window)
        encoded = model.encode_region(images.to(next(model.parameters()).device), region, volume.spacing)
        stream = model.stream_text(session.visual_tokens(), question, cancel=cancel, region=encoded)
    closed = ClosedQA.from_prompt(question)
    return _lettered(closed, stream) if closed else stream


def _lettered(closed: ClosedQA, stream: Iterator[str]) -> Iterator[str]:
    """A closed question's answer in one piece, its letter that of the choice its content names (ClosedQA.with_letter)."""
    yield closed.with_letter("".join(stream))
