"""Session: one loaded volume, one model; objects prompted by clicks, boxes or text; streamed answers.

Every call that changes a mask returns a ``SegmentationResult`` holding only the changed region. A
cancelled or failed call leaves the object's mask as it was; ``undo`` restores the exact previous mask.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from .capabilities import INTERACTIVE, LANGUAGE, TEXT_SEGMENTATION, capabilities_of, require
from .errors import CapabilityError, InputError, UnknownObjectError
from .io.slices import volume_to_frames
from .io.volume import Volume
from .modeling.feature_cache import FeatureCache
from .modeling.key_slices import choose_key_slices
from .modeling.prompting import FORCED, REPORT_QUESTION, split_targets
from .results import BBox, NotFound, SegmentationResult, TextResult, changed_region, union_box
from .utils.cancel import CancelToken, check
from .utils.device import autocast, autocast_dtype, translate_oom
from .utils.masks import innermost

Progress = Callable[[int, int], None]
HISTORY_MB = 256.0  # default undo budget of one Session (all objects together)
SETTLE_TOLERANCE = 0.02  # a re-propagated slice "did not change" when it differs in <= 2% of its voxels
_BLOB = np.ones((3, 3), bool)  # 8-connected components on a slice


@dataclass
class _Prompt:
    k: int
    points: list[list[float]] | None = None  # (x=i, y=j) on slice k
    labels: list[int] | None = None  # SAM2 labels: 1 positive, 0 negative
    box: list[float] | None = None  # (i0, j0, i1, j1)
    mask: np.ndarray | None = None  # bool [j, i] on slice k (a lasso), SAM2's mask input


@dataclass(eq=False)
class _Step:
    """One undo step: the mask inside the changed box before the call, and the prompts and bound then."""

    bbox: BBox | None
    before: np.ndarray
    prompts: list[_Prompt] | int  # the previous list, or its length when the call only appended
    bound: tuple[int, int] | None

    @property
    def nbytes(self) -> int:
        return self.before.nbytes + 8 * (len(self.prompts) if isinstance(self.prompts, list) else 1) + 64


@dataclass(eq=False)
class _Undone:
    """An undone step with what it had made (mask inside its box, prompts, bound), so redo restores it exactly."""

    step: _Step
    after: np.ndarray
    prompts: list[_Prompt]
    bound: tuple[int, int] | None

    @property
    def nbytes(self) -> int:
        return self.step.nbytes + self.after.nbytes


@dataclass
class _Object:
    name: str
    state: dict
    mask: np.ndarray
    tokens: torch.Tensor | None = None  # [SEG] prompt tokens of a text-prompted object
    prompts: list[_Prompt] = field(default_factory=list)
    bound: tuple[int, int] | None = None  # (k0, k1) of a 3D box: the object lives only there
    # slices prompted since the last propagation -> each one's mask before those prompts (None: not known, after undo)
    dirty: dict[int, np.ndarray | None] = field(default_factory=dict)
    extent: BBox | None = None  # union of every box written: holds all of the mask
    history: deque[_Step] = field(default_factory=deque)
    dropped: int = 0  # oldest steps dropped to stay within the history budget
    undone: list[_Undone] = field(default_factory=list)  # redo stack, most recently undone last


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
        for name, value in (("cache_mb", cache_mb), ("history_mb", history_mb)):
            if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number of megabytes, got {value}")
        self.predictor = getattr(model, "segmenter", None)
        self.frames = self.hw = self.feature_cache = self.autocast_dtype = None
        if self.predictor is not None:
            self.autocast_dtype = autocast_dtype(self.predictor.device, self.predictor.precision)  # None: fp32
            self.feature_cache = FeatureCache(cache_mb if cache_mb is not None else self.predictor.cache_mb)
            self.frames, self.hw = volume_to_frames(volume, self.predictor.image_size, model.segmenter_window)
        self.history_bytes_budget = int((history_mb if history_mb is not None else HISTORY_MB) * 2**20)
        self.history_bytes = 0
        self._steps: deque[tuple[int, _Step]] = deque()  # every object's steps, oldest first
        self._objects: dict[int, _Object] = {}
        self._next_id = 1
        self._visual: torch.Tensor | None = None
        self._stop = threading.Event()
        weakref.finalize(self, self._stop.set)
        self._prefetcher: threading.Thread | None = None
        if prefetch and self.predictor is not None:
            self._prefetcher = threading.Thread(
                target=_prefetch, name="medvlsam2-prefetch", daemon=True,
                args=(self.predictor, {"images": self.frames, "device": self.predictor.device,
                                       "feature_cache": self.feature_cache},
                      max(1, int(self.predictor.config.prefetch_batch)), self._stop, self.autocast_dtype))
            self._prefetcher.start()

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
        self._objects[obj_id] = _Object(name or f"Segment_{obj_id}", state, np.zeros(self.volume.shape, np.uint8))
        return obj_id

    def objects(self) -> dict[int, str]:
        return {i: o.name for i, o in self._objects.items()}

    def mask(self, obj: int) -> np.ndarray:
        return self._get(obj).mask.copy()

    def bound(self, obj: int) -> tuple[int, int] | None:
        """(k0, k1) the object is bounded to by a 3D box, or None."""
        return self._get(obj).bound

    def remove(self, obj: int) -> None:
        o = self._get(obj)
        self.history_bytes -= sum(step.nbytes for step in o.history) + sum(u.nbytes for u in o.undone)
        self._steps = deque((i, step) for i, step in self._steps if i != obj)
        del self._objects[obj]

    def _get(self, obj: int) -> _Object:
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
        positive = [p.k for p in prompts if 1 in p.labels]
        return self._prompt(obj, prompts, self._widened(self._get(obj).bound, positive))

    @translate_oom
    @_foreground
    def add_box(self, obj: int, box, k: int | None = None, ends: bool = False) -> SegmentationResult:
        """A 2D box (i0, j0, i1, j1) on slice ``k``, or a 3D box (i0, j0, k0, i1, j1, k1).

        A 3D box is prompted on its middle slice (``ends``: also on k0 and k1) and bounds the object to
        k0..k1. As in SAM2, a box replaces earlier clicks on its slice; later clicks refine it.
        """
        require(self.model, INTERACTIVE)
        b = [float(v) for v in box]
        bound = self._get(obj).bound
        if len(b) == 6:
            i0, j0, k0, i1, j1, k1 = b
            if not np.all(np.isfinite(b)) or k1 < k0:
                raise InputError("a 3D box needs finite numbers and k1 >= k0")
            if not (0 <= k0 and k1 < self.volume.shape[0]):
                raise InputError(f"the box's slices {k0:g}..{k1:g} lie outside the volume (0 <= k < {self.volume.shape[0]})")
            bound = (int(round(k0)), int(round(k1)))
            k = int(round((k0 + k1) / 2))
            slices = sorted({bound[0], k, bound[1]}) if ends else [k]
            b = [i0, j0, i1, j1]
        elif len(b) == 4 and k is not None:
            if not (isinstance(k, (int, np.integer)) or float(k).is_integer()):
                raise InputError(f"the slice k of a 2D box must be an integer, got {k}")
            slices = [int(k)]
        else:
            raise InputError("a box is (i0, j0, i1, j1) with its slice k, or (i0, j0, k0, i1, j1, k1)")
        i0, j0, i1, j1 = b
        if not np.all(np.isfinite(b)) or i1 <= i0 or j1 <= j0:
            raise InputError(f"the box {b} is empty: it needs i1 > i0 and j1 > j0 (nonzero width and height)")
        kk, jj, ii = self.volume.shape
        if not all(0 <= s < kk for s in slices) or i0 < 0 or j0 < 0 or i1 > ii - 1 or j1 > jj - 1:
            raise InputError(f"the box lies outside the volume (i < {ii}, j < {jj}, k < {kk})")
        if len(box) == 4:
            bound = self._widened(bound, slices)
        return self._prompt(obj, [_Prompt(s, box=b) for s in slices], bound)

    @translate_oom
    @_foreground
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
        return self._prompt(obj, [_Prompt(int(k), mask=m > 0)], self._widened(self._get(obj).bound, [int(k)]))

    def _add(self, o: _Object, p: _Prompt):
        """Give prompt ``p`` to SAM2; returns its logits on slice ``p.k``."""
        if p.mask is not None:
            return self.predictor.add_new_mask(o.state, p.k, 1, torch.from_numpy(p.mask))[2]
        return self.predictor.add_new_points_or_box(o.state, p.k, 1, points=p.points, labels=p.labels, box=p.box,
                                                    clear_old_points=p.box is not None)[2]

    @staticmethod
    def _widened(bound: tuple[int, int] | None, ks: list[int]) -> tuple[int, int] | None:
        """A positive prompt outside a 3D box's slices says the object is there too: widen the bound."""
        if bound is None or not ks:
            return bound
        return min(bound[0], *ks), max(bound[1], *ks)

    def _prompt(self, obj: int, prompts: list[_Prompt], bound: tuple[int, int] | None) -> SegmentationResult:
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
                pred = self._clicks_in_box(o, p, near) if near.any() else self._first_clicks(o, p)
            new = _refine(old > 0, pred, p)
            self.predictor.set_slice_mask(o.state, p.k, torch.from_numpy(new))
            writes[p.k] = new.astype(np.uint8)
            o.dirty.setdefault(p.k, old > 0)
        scores = {p.k: self.predictor.object_score(o.state, p.k) for p in prompts}
        return self._commit(obj, writes, o.prompts + prompts, scores, bound)

    def _commit(self, obj: int, writes: dict[int, np.ndarray], prompts: list[_Prompt], scores: dict[int, float],
                bound: tuple[int, int] | None) -> SegmentationResult:
        """Write whole slices ``writes`` {k: [H, W]} and keep what they replace as one undo step."""
        o = self._get(obj)
        bbox = None
        for k, new in writes.items():
            bbox = union_box(bbox, changed_region(o.mask[k:k + 1], new[None], offset=(k, 0, 0)))
        before = _crop(o.mask, bbox).copy()
        appended = len(prompts) >= len(o.prompts) and all(a is b for a, b in zip(prompts, o.prompts))
        self._forget_undone(o)  # a new step ends what redo could bring back
        self._record(obj, _Step(bbox, before, len(o.prompts) if appended else o.prompts, o.bound))
        for k, new in writes.items():
            o.mask[k] = new
        o.extent = union_box(o.extent, bbox)
        o.prompts, o.bound = prompts, bound
        return self._result(obj, bbox, scores)

    def _record(self, obj: int, step: _Step) -> None:
        """Keep ``step``; drop the oldest steps of any object while the history exceeds its budget."""
        o = self._get(obj)
        o.history.append(step)
        self._steps.append((obj, step))
        self.history_bytes += step.nbytes
        while self.history_bytes > self.history_bytes_budget and self._steps:
            owner, oldest = self._steps.popleft()
            self._objects[owner].history.popleft()
            self._objects[owner].dropped += 1
            self.history_bytes -= oldest.nbytes

    def _result(self, obj: int, bbox, scores=None) -> SegmentationResult:
        o = self._get(obj)
        patch = _crop(o.mask, bbox).copy() if bbox else np.zeros((0, 0, 0), np.uint8)
        return SegmentationResult(obj, o.name, bbox, patch, {k: v for k, v in (scores or {}).items() if v is not None})

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
        if not o.prompts:
            raise InputError("this object has no prompt yet: click, draw a box or give a text prompt first")
        n = self.volume.shape[0]
        a, b = (0, n - 1) if k_range is None else self._slice_range(k_range)
        if o.bound is not None:
            a, b = max(a, o.bound[0]), min(b, o.bound[1])
            if a > b:
                raise InputError(f"the slice range {k_range} does not overlap the object's box slices {o.bound}")
        if direction not in ("forward", "backward", "both"):
            raise InputError(f"direction must be one of backward, both, forward; got {direction!r}")
        cfg = self.predictor.config
        prompted = sorted({p.k for p in o.prompts})
        clicked = {p.k for p in o.prompts if p.points is not None or p.box is not None or p.mask is not None}
        inside = [k for k in prompted if a <= k <= b]
        dirty = sorted(o.dirty) or prompted
        s = dirty[0]
        passes = []  # (reverse, start, slices after start, last prompt in this direction, last dirty slice)
        if direction != "backward" and s <= b:
            start = max(s, a)
            passes.append((False, start, b - start, max(inside, default=start), dirty[-1]))
        if direction != "forward" and s >= a:
            start = min(s, b)
            passes.append((True, start, start - a, min(inside, default=start), dirty[0]))
        planned = set().union(*(range(st, st + m + 1) if not rev else range(st - m, st + 1) for rev, st, m, _, _ in passes))
        writes: dict[int, np.ndarray] = {}
        scores: dict[int, float] = {}
        if cfg.propagation not in ("memory", "box"):
            raise InputError(f"segmenter propagation must be 'memory' or 'box', got {cfg.propagation!r}")
        if cfg.propagation == "box" and o.tokens is None:
            held = o.mask > 0  # what the object is made of so far, for the chain's end rule outside a 3D box
            object_hu = (float(np.median(self.volume.array[held])) if o.bound is None and cfg.end_hu_change > 0
                         and held.any() else None)
            for reverse, start, count, _, last_dirty in passes:
                self._box_chain(o, start, -1 if reverse else 1, count, last_dirty, clicked, object_hu, writes, scores,
                                cancel)
                if progress:
                    progress(len(set(writes) | clicked & planned), len(planned))
        else:
            self._memory_passes(o, passes, (a, b), clicked, planned, writes, scores, progress, cancel)
        if progress and planned:
            progress(len(planned), len(planned))
        o.dirty.clear()
        return self._commit(obj, writes, o.prompts, scores, o.bound)

    def _memory_passes(self, o: _Object, passes: list, span: tuple[int, int], clicked: set[int], planned: set[int],
                       writes: dict[int, np.ndarray], scores: dict[int, float], progress: Progress | None,
                       cancel: CancelToken | None) -> None:
        """SAM2's own propagation (memory attention, the object's tokens on every slice) over ``passes``, with the
        early stop outside a 3D box and the settle rule of ``propagate``."""
        cfg = self.predictor.config
        a, b = span
        seen: set[int] = set()
        with self.predictor.extra_prompt_tokens(o.tokens):
            for reverse, start, count, last_prompt, last_dirty in passes:
                ended = settled = 0
                for k, logits in self.predictor.propagate(o.state, start, "backward" if reverse else "forward",
                                                          max_frames=count, cancel=cancel):
                    new = (logits > 0).cpu().numpy().astype(np.uint8)
                    scores[k] = self.predictor.object_score(o.state, k)
                    if k in clicked:  # SAM2 replays the slice's prompt output: keep what the prompt left
                        new = o.mask[k]
                    else:
                        writes[k] = new
                    seen.add(k)
                    if progress:
                        progress(len(seen), len(planned))
                    past_prompts = k < last_prompt if reverse else k > last_prompt
                    if o.bound is None and past_prompts:
                        ended = ended + 1 if scores[k] is not None and scores[k] < cfg.stop_score else 0
                        if ended >= max(1, cfg.stop_after_slices):
                            rest = range(a, k) if reverse else range(k + 1, b + 1)
                            self.predictor.forget_slices(o.state, rest)
                            writes.update({r: np.zeros_like(new) for r in rest if o.mask[r].any() or r in writes})
                            break
                    if cfg.settle_slices > 0 and (k < last_dirty if reverse else k > last_dirty):
                        settled = _settle_count(settled, o.mask[k], new)
                        if settled >= cfg.settle_slices:
                            break

    def _grown_box(self, mask: np.ndarray, points=()) -> tuple[float, float, float, float]:
        """(i0, j0, i1, j1) around ``mask`` [H, W] and ``points`` (i, j), grown by ``box_margin`` of its size."""
        jj, ii = np.nonzero(mask)
        ii = np.concatenate([ii, [p[0] for p in points]])
        jj = np.concatenate([jj, [p[1] for p in points]])
        m = self.predictor.config.box_margin
        gi, gj = m * (ii.max() - ii.min() + 1) + 1, m * (jj.max() - jj.min() + 1) + 1
        h, w = self.volume.shape[1:]
        return (max(0.0, ii.min() - gi), max(0.0, jj.min() - gj), min(w - 1.0, ii.max() + gi), min(h - 1.0, jj.max() + gj))

    def _clicks_in_box(self, o: _Object, p: _Prompt, old: np.ndarray) -> np.ndarray:
        """``propagation == "box"``: SAM2's answer to clicks on a slice that holds a mask ``old`` (or, when it holds
        none, next to slices that do: their masks), decoded with the box around that mask (and the positive
        clicks) plus the clicks (with a negative click, plus a positive anchor at ``old``'s innermost pixel, so
        SAM2 removes the clicked part rather than the object); of its candidates, the one that obeys the most
        clicks, then overlaps ``old`` most."""
        positive = [pt for pt, label in zip(p.points, p.labels) if label == 1]
        box = self._grown_box(old, positive)
        points, labels = list(p.points), list(p.labels)
        if 0 in labels:  # anchor the object with a positive point at the mask's innermost pixel, away from the clicks
            j, i = innermost(old)
            if min(np.hypot(x - i, y - j) for x, y in p.points) > ANCHOR_CLEARANCE_PX:
                points, labels = points + [[float(i), float(j)]], labels + [1]
        candidates, _, _ = self.predictor.decode_without_memory(o.state, p.k, box, points, labels)
        masks = (candidates > 0).cpu().numpy()
        return max(masks, key=lambda m: (_obeyed(m, p), _iou(m, old)))

    def _first_clicks(self, o: _Object, p: _Prompt) -> np.ndarray:
        """``propagation == "box"``: SAM2's answer to clicks on a slice with no mask yet. Of its three candidates
        (often part of the organ, the organ, the organ with a neighbour), weakly trained IoU heads rank poorly, so
        keep the one that obeys the most clicks, then scores best on SAM's stability score (the IoU of the mask
        at logit thresholds -1 and +1) times how well SAM2 gives it back when asked with its own box and the
        clicks (measured on phantoms 20400-20409 in Testing/Benchmarks/RESULTS.md)."""
        from sam2.utils.amg import calculate_stability_score

        candidates, _, _ = self.predictor.decode_without_memory(o.state, p.k, None, p.points, p.labels)
        stability = torch.nan_to_num(calculate_stability_score(candidates.float(), 0.0, 1.0)).tolist()
        masks = (candidates > 0).cpu().numpy()
        positive = [pt for pt, label in zip(p.points, p.labels) if label == 1]

        def returned(m: np.ndarray) -> float:
            if not m.any():
                return 0.0
            again, _, _ = self.predictor.decode_without_memory(o.state, p.k, self._grown_box(m, positive), p.points,
                                                               p.labels)
            return max(_iou(a, m) for a in (again > 0).cpu().numpy())

        return max(zip(masks, stability), key=lambda ms: (_obeyed(ms[0], p), ms[1] * returned(ms[0])))[0]

    def _box_chain(self, o: _Object, start: int, step: int, count: int, last_dirty: int, clicked: set[int],
                   object_hu: float | None, writes: dict[int, np.ndarray], scores: dict[int, float],
                   cancel: CancelToken | None) -> None:
        """``SegmenterConfig.propagation == "box"``: from ``start``, ``count`` slices in direction ``step``, each
        slice decoded from a box around the previous slice's mask; a prompted slice keeps its own mask and
        restarts the chain. Outside a 3D box, only the parts of SAM2's candidates touching the previous mask count,
        and only candidates whose median HU lies within ``end_hu_change`` of ``object_hu`` (the object's before this
        propagation; None: no such rule): none left means the object has ended. After an empty slice a slice keeps the mask it has
        (so a first propagation ends there, and a correction that empties a slice does not erase its
        neighbours). A slice with a mask keeps it when the previous slice's change (a correction, or the chain's
        own rewrite) leaves the mask overlapping it at least as well as before: a correction changes its
        neighbours only as far as it implies. Stops once ``settle_slices`` slices past the last changed slice
        come out unchanged."""
        from scipy import ndimage

        cfg = self.predictor.config
        h, w = self.volume.shape[1:]
        hu = self.volume.array
        prev = writes.get(start, o.mask[start]) > 0
        settled = 0
        for k in range(start + step, start + step * (count + 1), step):
            check(cancel)
            if k in clicked:
                prev = writes.get(k, o.mask[k]) > 0
                continue
            old = o.mask[k] > 0
            new = np.zeros((h, w), bool)
            if not prev.any():  # emptiness does not spread: a slice after an empty one keeps its mask
                new = old
            elif old.any() and (before := _before(o, k - step)) is not None and _iou(old, prev) >= _iou(old, before):
                new = old  # the neighbour's change leaves this slice continuing it as well as before: nothing implied
            else:
                box = self._grown_box(prev)
                candidates, _, scores[k] = self.predictor.decode_without_memory(o.state, k, box)
                if scores[k] >= cfg.stop_score:
                    i0, j0, i1, j1 = (int(round(v)) for v in box)
                    inside = np.zeros((h, w), bool)
                    inside[j0:j1 + 1, i0:i1 + 1] = True
                    masks = list((candidates > 0).cpu().numpy() & inside)
                    if o.bound is None:  # the object continues from the previous slice, in its own density, or has ended
                        grown = ndimage.binary_dilation(prev, structure=_BLOB)
                        masks = [_touching(m, grown) for m in masks]
                        if object_hu is not None:
                            masks = [m for m in masks if m.any() and abs(np.median(hu[k][m]) - object_hu)
                                     <= cfg.end_hu_change]
                    # a large box is ambiguous (liver or liver + stomach): take the candidate that best continues
                    # the previous slice's mask rather than SAM2's own IoU choice; on a re-propagation the slice's
                    # mask competes too, so a correction changes a neighbour only where a decode continues it better
                    new = max(masks + ([old] if old.any() else []), key=lambda m: _iou(m, prev), default=new)
            if new.any() or old.any() or k in writes:
                writes[k] = new.astype(np.uint8)
            if cfg.settle_slices > 0 and (k > last_dirty if step > 0 else k < last_dirty):
                settled = _settle_count(settled, old, new)
                if settled >= cfg.settle_slices:
                    break
            prev = new

    def _slice_range(self, k_range) -> tuple[int, int]:
        n = self.volume.shape[0]
        try:
            k0, k1 = (float(v) for v in k_range)
        except (TypeError, ValueError):
            raise InputError(f"a slice range is two slice indices (k0, k1), got {k_range!r}") from None
        if not (np.isfinite(k0) and np.isfinite(k1) and k0.is_integer() and k1.is_integer() and 0 <= k0 <= k1 < n):
            raise InputError(f"slice range must be integers with 0 <= k0 <= k1 < {n}, got {k_range}")
        return int(k0), int(k1)

    # ----- history ----------------------------------------------------------------------------
    @_foreground
    def undo(self, obj: int) -> SegmentationResult:
        o = self._get(obj)
        if not o.history:
            if o.dropped:
                raise InputError(f"cannot undo further: the {o.dropped} oldest step(s) of this object were dropped to keep "
                                 f"the undo history within {self.history_bytes_budget / 2**20:g} MB (Session history_mb)")
            raise InputError("nothing to undo for this object")
        step = o.history.pop()
        self._steps.remove((obj, step))  # _Step compares by identity
        undone = _Undone(step, _crop(o.mask, step.bbox).copy() if step.bbox else np.zeros((0, 0, 0), np.uint8),
                         o.prompts, o.bound)
        o.undone.append(undone)
        self.history_bytes += undone.nbytes - step.nbytes
        if step.bbox is not None:
            k0, k1, j0, j1, i0, i1 = step.bbox
            o.mask[k0:k1, j0:j1, i0:i1] = step.before
        o.prompts = o.prompts[:step.prompts] if isinstance(step.prompts, int) else step.prompts
        o.bound = step.bound
        self._replay(o)
        while self.history_bytes > self.history_bytes_budget and len(o.undone) > 1:
            self.history_bytes -= o.undone.pop(0).nbytes  # the furthest redo goes first
        return self._result(obj, step.bbox)

    @_foreground
    def redo(self, obj: int) -> SegmentationResult:
        """Take the last undone step of ``obj`` again, exactly as it was (mask, prompts, bound); a new prompt,
        propagation or reset after an undo ends what can be redone."""
        o = self._get(obj)
        if not o.undone:
            raise InputError("nothing to redo for this object")
        undone = o.undone.pop()
        self.history_bytes -= undone.nbytes
        step = undone.step
        if step.bbox is not None:
            k0, k1, j0, j1, i0, i1 = step.bbox
            o.mask[k0:k1, j0:j1, i0:i1] = undone.after
        o.prompts, o.bound = undone.prompts, undone.bound
        self._record(obj, step)
        self._replay(o)
        return self._result(obj, step.bbox)

    def _forget_undone(self, o: _Object) -> None:
        self.history_bytes -= sum(u.nbytes for u in o.undone)
        o.undone.clear()

    @_foreground
    def reset(self, obj: int) -> SegmentationResult:
        o = self._get(obj)
        self.predictor.reset_state(o.state)
        o.dirty.clear()
        ks = range(o.extent[0], o.extent[1]) if o.extent else range(0)
        return self._commit(obj, {k: np.zeros_like(o.mask[k]) for k in ks if o.mask[k].any()}, [], {}, None)

    def _replay(self, o: _Object) -> None:
        """Rebuild SAM2's state from the kept prompts (features are cached, so this is cheap).

        SAM2's logits on the prompted slices are then made to agree with the kept mask, and every prompted
        slice counts as new for the next propagation.
        """
        self.predictor.reset_state(o.state)
        with self.predictor.extra_prompt_tokens(o.tokens):
            for p in o.prompts:
                if p.points is None and p.box is None and p.mask is None:
                    self.predictor.add_prompt_tokens(o.state, p.k, 1, o.tokens)
                else:
                    self._add(o, p)
        o.dirty = {p.k: None for p in o.prompts}
        for k in o.dirty:
            self.predictor.set_slice_mask(o.state, k, torch.from_numpy(o.mask[k] > 0))

    # ----- language ---------------------------------------------------------------------------
    def visual_tokens(self) -> torch.Tensor:
        if self._visual is None:
            from .io.encoder_input import to_encoder_tensor

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
        (named "X (forced)"; for random-weight plumbing, never the default)."""
        require(self.model, TEXT_SEGMENTATION)
        targets = split_targets(prompt)
        if not targets:
            raise InputError("the text prompt is empty; type what to segment, e.g. 'liver'")
        out = TextResult()
        try:
            for target in targets:
                found, reason = self._segment_target(target, cancel, progress, force)
                if not found:
                    out.not_found.append(NotFound(target, reason))
                out.found += found
        except BaseException:
            for r in out.found:  # a cancelled or failed prompt leaves no objects behind
                self.remove(r.object_id)
            raise
        return out

    def _segment_target(self, prompt: str, cancel: CancelToken | None, progress: Progress | None, force: bool
                        ) -> tuple[list[SegmentationResult], str]:
        """The target's results, and why there are none (empty when there are)."""
        results = []
        cfg = self.model.config.segmenter
        prompts = self.model.text_to_seg_prompts(self.visual_tokens(), prompt, cancel=cancel, force=force)
        if not prompts:
            return [], f"the model answered that there is no {prompt}"
        for name, tokens in prompts:
            obj = self.add_object(name)
            o = self._objects[obj]
            o.tokens = tokens
            try:
                with self.predictor.extra_prompt_tokens(tokens):
                    keys, scores = choose_key_slices(lambda k: self.predictor.object_score_without_memory(o.state, k),
                                                     self.volume.shape[0], cfg.key_slice_stride, cfg.num_key_slices)
                # The segmenter sees the image at full resolution: no probe slice scoring above the gate means
                # the target is not there, whatever the language model answered (``force`` draws it anyway).
                if max(scores.values()) < cfg.stop_score:
                    if not force:
                        self.remove(obj)
                        continue
                    o.name = name if name.endswith(FORCED) else f"{name} {FORCED}"
                for k in keys:
                    self.predictor.add_prompt_tokens(o.state, k, 1, tokens)
                o.prompts = [_Prompt(k) for k in keys]
                results.append(self.propagate(obj, cancel=cancel, progress=progress))
            except BaseException:
                self.remove(obj)  # a cancelled text prompt leaves no half-made object
                raise
        reason = "" if results else (f"the segmenter found no {prompt}: no slice scored above its presence "
                                     f"gate ({cfg.stop_score:g})")
        return results, reason

    def ask(self, question: str, context: dict | None = None, cancel: CancelToken | None = None) -> Iterator[str]:
        """Stream an answer; ``context`` {"object": id} or {"box": (i0, j0, k0, i1, j1, k1)} says what "this" is.
        The region reaches the model as input (``MedVLSAM2.encode_region``), not as words."""
        require(self.model, LANGUAGE)
        region_mask = None
        if context and "object" in context:
            region_mask = self._get(int(context["object"])).mask
            if not region_mask.any():
                raise InputError("this segment is empty; segment something before asking about it")
        elif context and "box" in context:
            box = tuple(int(v) for v in context["box"])
            if len(box) != 6 or not all(0 <= box[a] <= box[a + 3] < n for a, n in enumerate(self.volume.shape[::-1])):
                raise InputError(f"a context box is (i0, j0, k0, i1, j1, k1) inside the volume {self.volume.shape[::-1]} "
                                 f"(i, j, k); got {box}")
            region_mask = np.zeros(self.volume.shape, np.uint8)
            region_mask[box[2]:box[5] + 1, box[1]:box[4] + 1, box[0]:box[3] + 1] = 1
        if region_mask is None:
            return self.model.stream_text(self.visual_tokens(), question, cancel=cancel)
        if not getattr(self.model, "supports_region_input", False):
            raise CapabilityError("this model cannot take a region as input; load a bundle with region input "
                              "(e.g. one trained with configs/train/demo_language_cpu.yaml) or ask without a region")
        from .io.encoder_input import to_encoder_tensor

        images, _ = to_encoder_tensor(self.volume, self.model.vision_input_size, self.model.vision_window)
        region = self.model.encode_region(images.to(next(self.model.parameters()).device), region_mask,
                                          self.volume.spacing)
        return self.model.stream_text(self.visual_tokens(), question, cancel=cancel, region=region)

    def report(self, cancel: CancelToken | None = None) -> Iterator[str]:
        require(self.model, LANGUAGE)
        return self.model.stream_text(self.visual_tokens(), REPORT_QUESTION, cancel=cancel)


def _before(o: _Object, k: int) -> np.ndarray | None:
    """Slice ``k``'s mask before the prompts since the last propagation (None: not known), as the chain compares it."""
    return o.dirty[k] if k in o.dirty else o.mask[k] > 0


def _crop(mask: np.ndarray, bbox: BBox | None) -> np.ndarray:
    if bbox is None:
        return np.zeros((0, 0, 0), mask.dtype)
    k0, k1, j0, j1, i0, i1 = bbox
    return mask[k0:k1, j0:j1, i0:i1]


ANCHOR_CLEARANCE_PX = 3  # a negative click closer than this to the mask's innermost pixel gets no anchor


def _touching(mask: np.ndarray, near: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``mask`` [H, W] that overlap ``near``."""
    from scipy import ndimage

    parts, _ = ndimage.label(mask, structure=_BLOB)
    hit = np.unique(parts[near & mask])
    return np.isin(parts, hit[hit > 0])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _obeyed(mask: np.ndarray, p: _Prompt) -> int:
    """How many of prompt ``p``'s clicks ``mask`` [j, i] obeys (holds the positive ones, not the negative ones)."""
    return sum(bool(mask[int(round(y)), int(round(x))]) == (label == 1) for (x, y), label in zip(p.points, p.labels))


def _settle_count(count: int, old: np.ndarray, new: np.ndarray) -> int:
    """Slices in a row past the corrected ones whose mask did not change (an empty slice that stays empty is skipped)."""
    if not (old.any() or new.any()):
        return count
    return count + 1 if _unchanged(old, new) else 0


def _unchanged(old: np.ndarray, new: np.ndarray) -> bool:
    union = np.count_nonzero(old | new)
    return np.count_nonzero(old != new) <= SETTLE_TOLERANCE * union


def _refine(old: np.ndarray, pred: np.ndarray, p: _Prompt) -> np.ndarray:
    """The slice mask a prompt leaves: ``old`` current mask, ``pred`` SAM2's answer (both [H, W] bool).

    A box replaces the slice with SAM2's answer inside the box, a mask prompt with SAM2's answer. Negative clicks change only the blobs
    (8-connected components of ``old``) they land in: there SAM2's answer is taken, and a blob that
    is not the slice's largest is removed outright if SAM2 keeps the clicked voxel. Positive clicks
    then add the components of SAM2's answer that hold them (all of it if none does); nothing else changes.
    """
    from scipy import ndimage

    if p.mask is not None:
        return pred  # a mask prompt replaces its slice, as a box does
    if p.box is not None:
        i0, j0, i1, j1 = (int(round(v)) for v in p.box)
        inside = np.zeros_like(pred)
        inside[j0:j1 + 1, i0:i1 + 1] = True
        return pred & inside
    clicks = [(int(round(y)), int(round(x)), label) for (x, y), label in zip(p.points, p.labels)]
    new = old.copy()
    negative = [(j, i) for j, i, label in clicks if label == 0]
    if negative:
        blobs, _ = ndimage.label(old, structure=_BLOB)
        sizes = np.bincount(blobs.ravel())
        largest = int(np.argmax(sizes[1:])) + 1 if len(sizes) > 1 else 0
        for c in sorted({int(blobs[j, i]) for j, i in negative} - {0}):
            blob = blobs == c
            kept = blob & pred
            if c != largest and any(kept[j, i] for j, i in negative):
                kept[:] = False
            new[blob] = kept[blob]
    positive = [(j, i) for j, i, label in clicks if label == 1]
    if positive:
        parts, _ = ndimage.label(pred, structure=_BLOB)
        hit = sorted({int(parts[j, i]) for j, i in positive} - {0})
        # SAM2 answered off the click (weak weights): take its whole answer rather than ignore the click
        new |= (np.isin(parts, hit) & (parts > 0)) if hit else pred
    return new


def _prefetch(predictor, state: dict, batch: int, stop: threading.Event, dtype: torch.dtype | None) -> None:
    """Background thread: encode every slice, middle first, while the feature budget has room.

    Holds no reference to the Session (so it can be collected); each batch runs under the gate and
    yields to foreground calls between batches; ``stop`` ends it before the next batch. Autocast is per
    thread, so the thread enters the Session's own (``dtype``).
    """
    cache: FeatureCache = state["feature_cache"]
    n = len(state["images"])
    order = sorted(range(n), key=lambda k: (abs(k - n // 2), k))
    try:
        with torch.inference_mode(), autocast(state["device"], dtype):
            for first in range(0, n, batch):
                with predictor.gate.background(stop) as go:
                    if not go:
                        return
                    todo = [k for k in order[first:first + batch] if k not in cache]
                    per_slice = cache.per_slice_bytes()
                    if per_slice and not cache.has_room(per_slice * len(todo)):
                        return  # never evict features to make room for prefetched ones
                    if todo:
                        predictor.encode_slices(state, todo)
    except Exception:  # e.g. out of memory: foreground calls encode what they need themselves
        return
