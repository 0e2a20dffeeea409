"""Session: one loaded volume, one model; objects prompted by clicks, boxes or text; streamed answers.

Every call that changes a mask returns a ``SegmentationResult`` holding only the changed region. A
cancelled or failed call leaves the object's mask as it was; ``undo`` restores the exact previous mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from .capabilities import INTERACTIVE, LANGUAGE, TEXT_SEGMENTATION, capabilities_of, require
from .errors import InputError, UnknownObjectError
from .io.slices import volume_to_frames
from .io.volume import Volume
from .modeling.key_slices import choose_key_slices
from .modeling.prompting import REPORT_QUESTION
from .results import SegmentationResult, changed_region
from .utils.cancel import CancelToken
from .utils.device import translate_oom

Progress = Callable[[int, int], None]


@dataclass
class _Prompt:
    k: int
    points: list[list[float]] | None = None  # (x=i, y=j) on slice k
    labels: list[int] | None = None  # SAM2 labels: 1 positive, 0 negative
    box: list[float] | None = None  # (i0, j0, i1, j1)
    mask: np.ndarray | None = None  # bool [j, i] on slice k (a lasso), SAM2's mask input


@dataclass
class _Object:
    name: str
    state: dict
    mask: np.ndarray
    tokens: torch.Tensor | None = None  # [SEG] prompt tokens of a text-prompted object
    prompts: list[_Prompt] = field(default_factory=list)
    history: list[tuple[np.ndarray, list[_Prompt]]] = field(default_factory=list)


class Session:
    def __init__(self, model, volume: Volume, cache_mb: float | None = None) -> None:
        """One volume and one model; ``cache_mb`` bounds the per-slice feature cache (default: the segmenter's).

        A model without a segmenter (e.g. Med3DVLM) serves only ``ask``/``report``; calls it cannot serve raise
        ``CapabilityError`` naming what to load instead (see ``self.capabilities``).
        """
        self.model, self.volume = model, volume
        self.capabilities = capabilities_of(model)
        if cache_mb is not None and cache_mb <= 0:
            raise InputError(f"cache_mb must be positive, got {cache_mb}")
        self.predictor = getattr(model, "segmenter", None)
        self.frames = self.hw = None
        if self.predictor is not None:
            if cache_mb is not None:
                self.predictor.cache_mb = cache_mb
            self.predictor.clear_feature_cache()
            self.frames, self.hw = volume_to_frames(volume, self.predictor.image_size, model.segmenter_window)
        self._objects: dict[int, _Object] = {}
        self._next_id = 1
        self._visual: torch.Tensor | None = None

    # ----- objects ----------------------------------------------------------------------------
    def add_object(self, name: str | None = None) -> int:
        if self.predictor is None:
            require(self.model, INTERACTIVE)
        obj_id = self._next_id
        self._next_id += 1
        state = self.predictor.init_volume_state(self.frames, self.hw)
        self._objects[obj_id] = _Object(name or f"Segment_{obj_id}", state, np.zeros(self.volume.shape, np.uint8))
        return obj_id

    def objects(self) -> dict[int, str]:
        return {i: o.name for i, o in self._objects.items()}

    def mask(self, obj: int) -> np.ndarray:
        return self._get(obj).mask.copy()

    def remove(self, obj: int) -> None:
        self._get(obj)
        del self._objects[obj]

    def _get(self, obj: int) -> _Object:
        if obj not in self._objects:
            raise UnknownObjectError(f"unknown object {obj}; existing objects: {sorted(self._objects) or 'none'}")
        return self._objects[obj]

    # ----- prompts ----------------------------------------------------------------------------
    @translate_oom
    def add_points(self, obj: int, points_ijk, labels) -> SegmentationResult:
        """Clicks at voxel (i, j, k) with labels +1 (object) or -1 (background); grouped per slice."""
        require(self.model, INTERACTIVE)
        pts = np.asarray(points_ijk, dtype=np.float64).reshape(-1, 3) if np.size(points_ijk) else np.zeros((0, 3))
        lab = np.asarray(labels).reshape(-1)
        if len(pts) == 0 or len(pts) != len(lab):
            raise InputError(f"give one label per point and at least one point (got {len(pts)} points, {len(lab)} labels)")
        if not np.all(np.isfinite(pts)):
            raise InputError("point coordinates must be finite numbers")
        size = np.array(self.volume.shape[::-1])  # (i, j, k) extents
        outside = np.any((pts < 0) | (pts > size - 1), axis=1)
        if outside.any():
            raise InputError(f"point {pts[outside][0].tolist()} is outside the volume; i, j, k must lie in "
                             f"[0, {size[0] - 1}] x [0, {size[1] - 1}] x [0, {size[2] - 1}]")
        if not set(lab.tolist()) <= {1, -1}:
            raise InputError("point labels must be +1 (include) or -1 (exclude)")
        prompts = [_Prompt(int(k), pts[pts[:, 2].round() == k][:, :2].tolist(),
                           [1 if v > 0 else 0 for v in lab[pts[:, 2].round() == k]]) for k in np.unique(pts[:, 2].round())]
        return self._prompt(obj, prompts)

    @translate_oom
    def add_box(self, obj: int, box, k: int | None = None) -> SegmentationResult:
        """A 2D box (i0, j0, i1, j1) on slice ``k``, or a 3D box (i0, j0, k0, i1, j1, k1) prompted on its middle slice.

        As in SAM2, a box replaces earlier clicks on its slice; later clicks refine it.
        """
        require(self.model, INTERACTIVE)
        b = [float(v) for v in box]
        if len(b) == 6:
            i0, j0, k0, i1, j1, k1 = b
            if k1 < k0:
                raise InputError("3D box must have k1 >= k0")
            k = int(round((k0 + k1) / 2))
            b = [i0, j0, i1, j1]
        if len(b) != 4 or k is None:
            raise InputError("a box is (i0, j0, i1, j1) with its slice k, or (i0, j0, k0, i1, j1, k1)")
        i0, j0, i1, j1 = b
        if not np.all(np.isfinite(b)) or i1 <= i0 or j1 <= j0:
            raise InputError(f"the box {b} is empty: it needs i1 > i0 and j1 > j0 (nonzero width and height)")
        kk, jj, ii = self.volume.shape
        if not (0 <= k < kk) or i0 < 0 or j0 < 0 or i1 > ii - 1 or j1 > jj - 1:
            raise InputError(f"the box lies outside the volume (i < {ii}, j < {jj}, k < {kk})")
        return self._prompt(obj, [_Prompt(int(k), box=b)])

    @translate_oom
    def add_mask(self, obj: int, k: int, mask2d) -> SegmentationResult:
        """A mask prompt [j, i] on slice ``k`` (e.g. a lasso), SAM2's ``add_new_mask``: it replaces earlier
        clicks on its slice; later clicks refine it."""
        require(self.model, INTERACTIVE)
        m = np.asarray(mask2d)
        kk, jj, ii = self.volume.shape
        if m.shape != (jj, ii):
            raise InputError(f"a mask prompt is one slice of shape (j, i) = ({jj}, {ii}), got {m.shape}")
        if isinstance(k, bool) or int(k) != k or not 0 <= int(k) < kk:
            raise InputError(f"the mask prompt's slice k must be an integer in [0, {kk - 1}], got {k!r}")
        return self._prompt(obj, [_Prompt(int(k), mask=m > 0)])

    def _add(self, o: _Object, p: _Prompt):
        """Give prompt ``p`` to SAM2; returns its logits on slice ``p.k``."""
        if p.mask is not None:
            return self.predictor.add_new_mask(o.state, p.k, 1, torch.from_numpy(p.mask))[2]
        return self.predictor.add_new_points_or_box(o.state, p.k, 1, points=p.points, labels=p.labels, box=p.box,
                                                    clear_old_points=p.box is not None)[2]

    def _prompt(self, obj: int, prompts: list[_Prompt]) -> SegmentationResult:
        o = self._get(obj)
        new = o.mask.copy()
        for p in prompts:
            with self.predictor.extra_prompt_tokens(o.tokens):
                logits = self._add(o, p)
            new[p.k] = (logits[0, 0] > 0).cpu().numpy().astype(np.uint8)
        scores = {p.k: self.predictor.object_score(o.state, p.k) for p in prompts}
        return self._commit(obj, new, o.prompts + prompts, scores)

    def _commit(self, obj: int, new: np.ndarray, prompts: list[_Prompt], scores: dict[int, float]) -> SegmentationResult:
        o = self._get(obj)
        o.history.append((o.mask, o.prompts))
        bbox = changed_region(o.mask, new)
        o.mask, o.prompts = new, prompts
        return self._result(obj, bbox, scores)

    def _result(self, obj: int, bbox, scores=None) -> SegmentationResult:
        o = self._get(obj)
        patch = o.mask[bbox[0]:bbox[1], bbox[2]:bbox[3], bbox[4]:bbox[5]].copy() if bbox else np.zeros((0, 0, 0), np.uint8)
        return SegmentationResult(obj, o.name, bbox, patch, {k: v for k, v in (scores or {}).items() if v is not None})

    # ----- propagation ------------------------------------------------------------------------
    @translate_oom
    def propagate(self, obj: int, k_range: tuple[int, int] | None = None, direction: str = "both",
                  cancel: CancelToken | None = None, progress: Progress | None = None) -> SegmentationResult:
        """Carry the object through slices (within ``k_range`` inclusive) from its prompted slices."""
        o = self._get(obj)
        if not o.prompts:
            raise InputError("this object has no prompt yet: click, draw a box or give a text prompt first")
        k0, k1 = k_range if k_range is not None else (0, self.volume.shape[0] - 1)
        if not 0 <= k0 <= k1 < self.volume.shape[0]:
            raise InputError(f"slice range must satisfy 0 <= k0 <= k1 < {self.volume.shape[0]}, got {k_range}")
        new, scores, done = o.mask.copy(), {}, 0
        total = k1 - k0 + 1
        with self.predictor.extra_prompt_tokens(o.tokens):
            for k, logits in self.predictor.propagate(o.state, None, direction, cancel=cancel):
                if k0 <= k <= k1:
                    new[k] = (logits > 0).cpu().numpy().astype(np.uint8)
                    scores[k] = self.predictor.object_score(o.state, k)
                    done += 1
                    if progress:
                        progress(min(done, total), total)
        return self._commit(obj, new, o.prompts, scores)

    # ----- history ----------------------------------------------------------------------------
    def undo(self, obj: int) -> SegmentationResult:
        o = self._get(obj)
        if not o.history:
            raise InputError("nothing to undo for this object")
        previous_mask, previous_prompts = o.history.pop()
        bbox = changed_region(o.mask, previous_mask)
        o.mask, o.prompts = previous_mask, previous_prompts
        self._replay(o)
        return self._result(obj, bbox)

    def reset(self, obj: int) -> SegmentationResult:
        o = self._get(obj)
        self.predictor.reset_state(o.state)
        return self._commit(obj, np.zeros_like(o.mask), [], {})

    def _replay(self, o: _Object) -> None:
        """Rebuild SAM2's state from the kept prompts (features are cached, so this is cheap)."""
        self.predictor.reset_state(o.state)
        with self.predictor.extra_prompt_tokens(o.tokens):
            for p in o.prompts:
                if p.points is None and p.box is None and p.mask is None:
                    self.predictor.add_prompt_tokens(o.state, p.k, 1, o.tokens)
                else:
                    self._add(o, p)

    # ----- language ---------------------------------------------------------------------------
    def visual_tokens(self) -> torch.Tensor:
        if self._visual is None:
            from .io.encoder_input import to_encoder_tensor

            images, _ = to_encoder_tensor(self.volume, self.model.vision_input_size, self.model.vision_window)
            with torch.inference_mode():
                self._visual = self.model.encode_volume(images.to(next(self.model.parameters()).device))
        return self._visual

    @translate_oom
    def segment_text(self, prompt: str, cancel: CancelToken | None = None,
                     progress: Progress | None = None) -> list[SegmentationResult]:
        """Semantic or referring segmentation: one new object per [SEG] the model emits."""
        require(self.model, TEXT_SEGMENTATION)
        results = []
        for name, tokens in self.model.text_to_seg_prompts(self.visual_tokens(), prompt, cancel=cancel):
            obj = self.add_object(name)
            o = self._objects[obj]
            o.tokens = tokens
            with self.predictor.extra_prompt_tokens(tokens):
                keys, _ = choose_key_slices(lambda k: self.predictor.object_score_without_memory(o.state, k),
                                            self.volume.shape[0], self.model.config.segmenter.key_slice_stride,
                                            self.model.config.segmenter.num_key_slices)
            for k in keys:
                self.predictor.add_prompt_tokens(o.state, k, 1, tokens)
            o.prompts = [_Prompt(k) for k in keys]
            try:
                results.append(self.propagate(obj, cancel=cancel, progress=progress))
            except BaseException:
                self.remove(obj)  # a cancelled text prompt leaves no half-made object
                raise
        return results

    def ask(self, question: str, context: dict | None = None, cancel: CancelToken | None = None) -> Iterator[str]:
        """Stream an answer; ``context`` {"object": id} or {"box": (i0, j0, k0, i1, j1, k1)} says what "this" is."""
        require(self.model, LANGUAGE)
        if context and "object" in context:
            o = self._get(int(context["object"]))
            where = np.argwhere(o.mask)
            region = f"the {o.name}" + (f" (slices {where[:, 0].min()}-{where[:, 0].max()})" if len(where) else "")
            question = f"About {region}: {question}"
        elif context and "box" in context:
            box = tuple(int(v) for v in context["box"])
            if len(box) != 6 or not all(0 <= box[a] <= box[a + 3] < n for a, n in enumerate(self.volume.shape[::-1])):
                raise InputError(f"a context box is (i0, j0, k0, i1, j1, k1) inside the volume {self.volume.shape[::-1]} "
                                 f"(i, j, k); got {box}")
            question = f"About the region {box}: {question}"
        return self.model.stream_text(self.visual_tokens(), question, cancel=cancel)

    def report(self, cancel: CancelToken | None = None) -> Iterator[str]:
        require(self.model, LANGUAGE)
        return self.model.stream_text(self.visual_tokens(), REPORT_QUESTION, cancel=cancel)
