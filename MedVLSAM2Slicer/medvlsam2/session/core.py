"""Session: one loaded volume, one model; objects prompted by clicks, boxes or text; streamed answers.

Every call that changes a mask returns a ``SegmentationResult`` holding only the changed region. A
cancelled or failed call leaves the object's mask as it was; ``undo`` restores the exact previous mask.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Iterator

import numpy as np
import torch

from ..capabilities import INTERACTIVE, LANGUAGE, TEXT_SEGMENTATION, capabilities_of, require
from ..errors import InputError, UnknownObjectError
from ..io.slices import volume_to_frames
from ..io.volume import Volume
from ..modeling.feature_cache import FeatureCache
from ..modeling.prompting import REPORT_QUESTION, split_targets
from ..report.context import grounded_stream
from ..plausibility.vet import vet_text_result
from ..results import NotFound, SegmentationResult, TextResult, changed_region, union_box
from ..utils.cancel import CancelToken
from ..utils.device import autocast, autocast_dtype, translate_oom
from .box_chain import BoxChain
from .history import History
from .language import ask, grounded, segment_target, segmented_findings
from .text_masks import seed_from_text, text_segmenter_of
from .prefetch import prefetch as prefetch_slices
from .prompts import box_prompts, mask_prompt, point_prompts, slice_range, widened
from .propagation import Progress, Run, memory_passes
from .slice_rules import refine
from .state import ObjectState, Prompt, Step, crop

HISTORY_MB = 256.0  # default undo budget of one Session (all objects together)


def _foreground(method):
    """Run a model call under the predictor's gate (background encoding yields to it between batches) and
    at the predictor's precision."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.predictor is None:
            return method(self, *args, **kwargs)
        with self.predictor.gate.foreground(), autocast(self.predictor.device, self.autocast_dtype):
            return method(self, *args, **kwargs)
    return wrapper


def _check_megabytes(**budgets: float | None) -> None:
    for name, value in budgets.items():
        if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise InputError(f"{name} must be a positive number of megabytes, got {value}")


class Session:
    def __init__(self, model, volume: Volume, cache_mb: float | None = None, history_mb: float | None = None,
                 prefetch: bool = False) -> None:
        """One volume and one model.

        ``cache_mb`` bounds this Session's per-slice feature cache (default: the segmenter's ``cache_mb``),
        ``history_mb`` its undo history; ``prefetch`` encodes every slice in the background (see ``close``).
        A model without a segmenter (e.g. Med3DVLM) serves only ``ask``/``report``; calls it cannot serve raise
        ``CapabilityError`` naming what to load instead (see ``self.capabilities``).
        """
        self.model, self.volume = model, volume
        self.capabilities = capabilities_of(model)
        _check_megabytes(cache_mb=cache_mb, history_mb=history_mb)
        self.predictor = getattr(model, "segmenter", None)
        self.text_segmenter = text_segmenter_of(model)  # a released one (VoxTell...): its masks seed objects
        self.frames = self.hw = self.feature_cache = self.autocast_dtype = self.box_chain = None
        if self.predictor is not None:
            self.autocast_dtype = autocast_dtype(self.predictor.device, self.predictor.precision)  # None: fp32
            self.feature_cache = FeatureCache(cache_mb if cache_mb is not None else self.predictor.cache_mb)
            self.frames, self.hw = volume_to_frames(volume, self.predictor.image_size, model.segmenter_window)
            self.box_chain = BoxChain(self.predictor, volume)
        self._objects: dict[int, ObjectState] = {}
        self.history = History(self._objects, int((history_mb if history_mb is not None else HISTORY_MB) * 2**20))
        self._next_id = 1
        self._visual: torch.Tensor | None = None
        self._findings = None  # report.context.SegmentedFindings, once computed (``language.segmented_findings``)
        self._stop = threading.Event()
        weakref.finalize(self, self._stop.set)
        self._prefetcher: threading.Thread | None = None
        if prefetch and self.predictor is not None:
            self._prefetcher = threading.Thread(
                target=prefetch_slices, name="medvlsam2-prefetch", daemon=True,
                args=(self.predictor, {"images": self.frames, "device": self.predictor.device,
                                       "feature_cache": self.feature_cache},
                      max(1, int(self.predictor.config.prefetch_batch)), self._stop, self.autocast_dtype))
            self._prefetcher.start()

    history_bytes = property(lambda self: self.history.nbytes, doc="bytes the undo history holds")
    history_bytes_budget = property(lambda self: self.history.budget_bytes, doc="the undo history's budget")

    def close(self) -> None:
        """Stop background encoding (it finishes at most the batch in flight) and drop cached features."""
        self._stop.set()
        if self._prefetcher is not None and self._prefetcher is not threading.current_thread():
            self._prefetcher.join()
        if self.predictor is not None:
            with self.predictor.gate.foreground():
                self.feature_cache.clear()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def held_bytes(self) -> int:
        """Bytes this Session holds: masks, undo history, SAM2 frames and cached features."""
        total = sum(o.mask.nbytes for o in self._objects.values()) + self.history_bytes
        if self.predictor is not None:
            total += self.frames.numel() * self.frames.element_size() + self.feature_cache.nbytes
        return total

    # ----- objects ----------------------------------------------------------------------------
    def add_object(self, name: str | None = None) -> int:
        if self.predictor is None:
            require(self.model, INTERACTIVE)
        obj_id = self._next_id
        self._next_id += 1
        state = self.predictor.init_volume_state(self.frames, self.hw, self.feature_cache)
        self._objects[obj_id] = ObjectState(name or f"Segment_{obj_id}", state, np.zeros(self.volume.shape, np.uint8))
        return obj_id

    def objects(self) -> dict[int, str]:
        return {i: o.name for i, o in self._objects.items()}

    def mask(self, obj: int) -> np.ndarray:
        return self._get(obj).mask.copy()

    def bound(self, obj: int) -> tuple[int, int] | None:
        """(k0, k1) the object is bounded to by a 3D box, or None."""
        return self._get(obj).bound

    def remove(self, obj: int) -> None:
        self._get(obj)
        self.history.forget(obj)
        del self._objects[obj]

    def _result(self, obj: int, bbox, scores=None) -> SegmentationResult:
        return self._get(obj).result(obj, bbox, scores)

    def _get(self, obj: int) -> ObjectState:
        if obj not in self._objects:
            raise UnknownObjectError(f"unknown object {obj}; existing objects: {sorted(self._objects) or 'none'}")
        return self._objects[obj]

    # ----- prompts ----------------------------------------------------------------------------
    @translate_oom
    @_foreground
    def add_points(self, obj: int, points_ijk, labels) -> SegmentationResult:
        """Clicks at voxel (i, j, k) with labels +1 (object) or -1 (background); grouped per slice.

        A click refines its slice from the current mask: +1 adds SAM2's component holding it, -1
        changes only the blob (8-connected component of the current mask) it lands in.
        """
        require(self.model, INTERACTIVE)
        prompts = point_prompts(self.volume.shape, points_ijk, labels)
        positive = [p.k for p in prompts if 1 in p.labels]
        return self._prompt(obj, prompts, widened(self._get(obj).bound, positive))

    @translate_oom
    @_foreground
    def add_box(self, obj: int, box, k: int | None = None, ends: bool = False) -> SegmentationResult:
        """A 2D box (i0, j0, i1, j1) on slice ``k``, or a 3D box (i0, j0, k0, i1, j1, k1).

        A 3D box is prompted on its middle slice (``ends``: also on k0 and k1) and bounds the object to
        k0..k1. As in SAM2, a box replaces earlier clicks on its slice; later clicks refine it.
        """
        require(self.model, INTERACTIVE)
        prompts, bound = box_prompts(self.volume.shape, box, k, ends, self._get(obj).bound)
        return self._prompt(obj, prompts, bound)

    @translate_oom
    @_foreground
    def add_mask(self, obj: int, k: int, mask2d) -> SegmentationResult:
        """A mask prompt [j, i] on slice ``k`` (e.g. a lasso), SAM2's ``add_new_mask``: it replaces earlier
        clicks on its slice; later clicks refine it."""
        require(self.model, INTERACTIVE)
        p = mask_prompt(self.volume.shape, k, mask2d)
        return self._prompt(obj, [p], widened(self._get(obj).bound, [p.k]))

    def _add(self, o: ObjectState, p: Prompt):
        """Give prompt ``p`` to SAM2; returns its logits on slice ``p.k``."""
        if p.mask is not None:
            return self.predictor.add_new_mask(o.state, p.k, 1, torch.from_numpy(p.mask))[2]
        return self.predictor.add_new_points_or_box(o.state, p.k, 1, points=p.points, labels=p.labels, box=p.box,
                                                    clear_old_points=p.box is not None)[2]

    def _prompt(self, obj: int, prompts: list[Prompt], bound: tuple[int, int] | None) -> SegmentationResult:
        o = self._get(obj)
        writes = {}
        for p in prompts:
            old = writes.get(p.k, o.mask[p.k])
            with self.predictor.extra_prompt_tokens(o.tokens), \
                    self.predictor.seed_slice_mask(o.state, p.k, torch.from_numpy(old > 0)):
                logits = self._add(o, p)
            pred = (logits[0, 0] > 0).cpu().numpy()
            if self.predictor.config.propagation == "box" and o.tokens is None and p.points is not None:
                near = old > 0
                if not near.any():  # a click next to the object extends it: decode it in its neighbours' box
                    near = (o.mask[max(p.k - 1, 0)] > 0) | (o.mask[min(p.k + 1, len(o.mask) - 1)] > 0)
                pred = self.box_chain.clicks(o, p, near)
            new = refine(old > 0, pred, p, [o.mask[z] for z in (p.k - 1, p.k + 1) if 0 <= z < len(o.mask)])
            self.predictor.set_slice_mask(o.state, p.k, torch.from_numpy(new))
            writes[p.k] = new.astype(np.uint8)
            o.dirty.setdefault(p.k, old > 0)
        scores = {p.k: self.predictor.object_score(o.state, p.k) for p in prompts}
        return self._commit(obj, writes, o.prompts + prompts, scores, bound)

    def _commit(self, obj: int, writes: dict[int, np.ndarray], prompts: list[Prompt], scores: dict[int, float],
                bound: tuple[int, int] | None) -> SegmentationResult:
        """Write whole slices ``writes`` {k: [H, W]} and keep what they replace as one undo step."""
        o = self._get(obj)
        bbox = None
        for k, new in writes.items():
            bbox = union_box(bbox, changed_region(o.mask[k:k + 1], new[None], offset=(k, 0, 0)))
        before = crop(o.mask, bbox).copy()
        appended = len(prompts) >= len(o.prompts) and all(a is b for a, b in zip(prompts, o.prompts))
        self.history.forget_undone(o)  # a new step ends what redo could bring back
        self.history.record(obj, Step(bbox, before, len(o.prompts) if appended else o.prompts, o.bound))
        for k, new in writes.items():
            o.mask[k] = new
        o.extent = union_box(o.extent, bbox)
        o.prompts, o.bound = prompts, bound
        return self._result(obj, bbox, scores)

    # ----- propagation ------------------------------------------------------------------------
    @translate_oom
    @_foreground
    def propagate(self, obj: int, k_range: tuple[int, int] | None = None, direction: str = "both",
                  cancel: CancelToken | None = None, progress: Progress | None = None) -> SegmentationResult:
        """Carry the object from its prompted slices through ``k_range`` (inclusive; SAM2 runs only there).

        Within a 3D box's slices only. Outside one, a pass stops once the object has ended (see
        ``SegmenterConfig.stop_after_slices``) and clears the range beyond; past the slices prompted
        since the last propagation, a pass stops once ``settle_slices`` slices in a row did not change.
        """
        o = self._get(obj)
        if self.predictor is None:
            require(self.model, INTERACTIVE)
        if not o.prompts:
            raise InputError("this object has no prompt yet: click, draw a box or give a text prompt first")
        n = self.volume.shape[0]
        a, b = (0, n - 1) if k_range is None else slice_range(n, k_range)
        if o.bound is not None:
            a, b = max(a, o.bound[0]), min(b, o.bound[1])
            if a > b:
                raise InputError(f"the slice range {k_range} does not overlap the object's box slices {o.bound}")
        if direction not in ("forward", "backward", "both"):
            raise InputError(f"direction must be one of backward, both, forward; got {direction!r}")
        cfg = self.predictor.config
        run = Run.plan(o, (a, b), direction, cancel, progress)
        if cfg.propagation not in ("memory", "box"):
            raise InputError(f"segmenter propagation must be 'memory' or 'box', got {cfg.propagation!r}")
        if cfg.propagation == "box" and o.tokens is None:
            self.box_chain.run(run)
        else:
            memory_passes(self.predictor, run)
        if progress and run.planned:
            progress(len(run.planned), len(run.planned))
        o.dirty.clear()
        return self._commit(obj, run.writes, o.prompts, run.scores, o.bound)

    # ----- history ----------------------------------------------------------------------------
    @_foreground
    def undo(self, obj: int) -> SegmentationResult:
        return self._history_step(obj, self.history.undo)

    @_foreground
    def redo(self, obj: int) -> SegmentationResult:
        """Take the last undone step of ``obj`` again, exactly as it was (mask, prompts, bound); a new prompt,
        propagation or reset after an undo ends what can be redone."""
        return self._history_step(obj, self.history.redo)

    def _history_step(self, obj: int, step) -> SegmentationResult:
        self._get(obj)
        bbox = step(obj)
        self._replay(self._objects[obj])
        return self._result(obj, bbox)

    @functools.cached_property
    def _body(self) -> np.ndarray:
        """The patient's voxels (``plausibility.body_mask``), computed once per CT for the text-result checks."""
        from ..plausibility import body_mask

        return body_mask(self.volume)

    @_foreground
    def reset(self, obj: int) -> SegmentationResult:
        o = self._get(obj)
        if self.predictor is not None:
            self.predictor.reset_state(o.state)
        o.dirty.clear()
        ks = range(o.extent[0], o.extent[1]) if o.extent else range(0)
        return self._commit(obj, {k: np.zeros_like(o.mask[k]) for k in ks if o.mask[k].any()}, [], {}, None)

    def _replay(self, o: ObjectState) -> None:
        """Rebuild SAM2's state from the kept prompts (features are cached, so this is cheap).

        SAM2's logits on the prompted slices are then made to agree with the kept mask, and every prompted
        slice counts as new for the next propagation.
        """
        if self.predictor is None:  # an object seeded by a text segmenter alone: its mask is all there is
            return
        self.predictor.reset_state(o.state)
        with self.predictor.extra_prompt_tokens(o.tokens):
            for p in o.prompts:
                if not p.drawn:
                    self.predictor.add_prompt_tokens(o.state, p.k, 1, o.tokens)
                else:
                    self._add(o, p)
        o.dirty = {p.k: None for p in o.prompts}
        for k in o.dirty:
            self.predictor.set_slice_mask(o.state, k, torch.from_numpy(o.mask[k] > 0))

    # ----- language ---------------------------------------------------------------------------
    def visual_tokens(self) -> torch.Tensor:
        if self._visual is None:
            from ..io.encoder_input import to_encoder_tensor

            images, _ = to_encoder_tensor(self.volume, self.model.vision_input_size, self.model.vision_window)
            with torch.inference_mode():
                self._visual = self.model.encode_volume(images.to(next(self.model.parameters()).device))
        return self._visual

    @translate_oom
    @_foreground
    def segment_text(self, prompt: str, cancel: CancelToken | None = None, progress: Progress | None = None,
                     force: bool = False) -> TextResult:
        """Semantic or referring segmentation, one request per target the prompt names ("liver and spleen",
        one per line: ``split_targets``), one new object per [SEG] the model emits. A target the model says
        is not there ("There is no X."), or whose [SEG] tokens score below the segmenter's gate (``stop_score``) on
        every probe slice, gives no object and a ``NotFound`` with the reason. ``force`` segments it anyway
        (named "X (forced)"; for random-weight plumbing, never the default). A model with a released text
        segmenter answers each target with its mask instead (``text_masks.seed_from_text``). Every result is then
        vetted (``plausibility.vet_text_result``): an implausible one is withheld as ``NotFound``, or with ``force``
        delivered as "X (unverified)" with the reason in its ``warnings``."""
        require(self.model, TEXT_SEGMENTATION)
        targets = split_targets(prompt)
        if not targets:
            raise InputError("the text prompt is empty; type what to segment, e.g. 'liver'")
        out = TextResult()
        try:
            for target in targets:
                found, reason = (seed_from_text(self, self.text_segmenter, target, cancel) if self.text_segmenter
                                 else segment_target(self, target, cancel, progress, force))
                if not found:
                    out.not_found.append(NotFound(target, reason))
                out.found += found
            out = vet_text_result(self, out, force)  # priors, calibrated presence, domain notice: the one check
            for r in out.found:  # a forced doubtful result is renamed "X (unverified)"
                self._get(r.object_id).name = r.name
        except BaseException:
            for r in out.found:  # a cancelled or failed prompt leaves no objects behind
                if r.object_id in self._objects:
                    self.remove(r.object_id)
            raise
        return out

    def ask(self, question: str, context: dict | None = None, cancel: CancelToken | None = None) -> Iterator[str]:
        """Stream an answer; ``context`` {"object": id} or {"box": (i0, j0, k0, i1, j1, k1)} says what "this" is.
        The region reaches the model as input (``MedVLSAM2.encode_region``), not as words."""
        require(self.model, LANGUAGE)
        return ask(self, question, context, cancel)

    def report(self, cancel: CancelToken | None = None) -> Iterator[str]:
        """The generated findings report, streamed; with a findings sentence (``llm.findings_context``) it is streamed
        sentence by sentence and states the measured lesion and cyst sizes and the spleen's size class
        (``report.context.grounded_stream``)."""
        require(self.model, LANGUAGE)
        found = segmented_findings(self, cancel)
        stream = self.model.stream_text(self.visual_tokens(), grounded(found, REPORT_QUESTION), cancel=cancel)
        return stream if found is None else grounded_stream(stream, found)
