"""``SegmenterConfig.propagation == "box"``: each slice decoded without memory from a box around its neighbour's
mask, and clicks decoded in a box around the mask they refine."""

from __future__ import annotations

import numpy as np
import torch

from ..io.volume import Volume
from ..utils.cancel import check
from ..utils.masks import innermost
from .propagation import Pass, Run
from .slice_rules import BLOB, iou, obeyed, settle_count, touching
from .state import ObjectState, Prompt

ANCHOR_CLEARANCE_PX = 3  # a negative click closer than this to the mask's innermost pixel gets no anchor


class BoxChain:
    def __init__(self, predictor, volume: Volume) -> None:
        self.predictor, self.volume = predictor, volume

    def grown_box(self, mask: np.ndarray, points=()) -> tuple[float, float, float, float]:
        """(i0, j0, i1, j1) around ``mask`` [H, W] and ``points`` (i, j), grown by ``box_margin`` of its size."""
        jj, ii = np.nonzero(mask)
        ii = np.concatenate([ii, [p[0] for p in points]])
        jj = np.concatenate([jj, [p[1] for p in points]])
        m = self.predictor.config.box_margin
        gi, gj = m * (ii.max() - ii.min() + 1) + 1, m * (jj.max() - jj.min() + 1) + 1
        h, w = self.volume.shape[1:]
        return (max(0.0, ii.min() - gi), max(0.0, jj.min() - gj), min(w - 1.0, ii.max() + gi), min(h - 1.0, jj.max() + gj))

    def clicks(self, o: ObjectState, p: Prompt, old: np.ndarray) -> np.ndarray:
        """SAM2's answer to the clicks ``p``: decoded in the box around ``old`` [H, W] (the slice's mask or, when it
        holds none, its neighbours') when there is one, else as a first click on an empty slice."""
        return self.clicks_in_box(o, p, old) if old.any() else self.first_clicks(o, p)

    def clicks_in_box(self, o: ObjectState, p: Prompt, old: np.ndarray) -> np.ndarray:
        """SAM2's answer to clicks on a slice that holds a mask ``old`` (or, when it holds none, next to slices that
        do: their masks), decoded with the box around that mask (and the positive clicks) plus the clicks (with a
        negative click, plus a positive anchor at ``old``'s innermost pixel, so SAM2 removes the clicked part rather
        than the object); of its candidates, the one that obeys the most clicks, then overlaps ``old`` most."""
        positive = [pt for pt, label in zip(p.points, p.labels) if label == 1]
        box = self.grown_box(old, positive)
        points, labels = list(p.points), list(p.labels)
        if 0 in labels:  # anchor the object with a positive point at the mask's innermost pixel, away from the clicks
            j, i = innermost(old)
            if min(np.hypot(x - i, y - j) for x, y in p.points) > ANCHOR_CLEARANCE_PX:
                points, labels = points + [[float(i), float(j)]], labels + [1]
        candidates, _, _ = self.predictor.decode_without_memory(o.state, p.k, box, points, labels)
        masks = (candidates > 0).cpu().numpy()
        return max(masks, key=lambda m: (obeyed(m, p), iou(m, old)))

    def first_clicks(self, o: ObjectState, p: Prompt) -> np.ndarray:
        """SAM2's answer to clicks on a slice with no mask yet. Of its three candidates (often part of the organ, the
        organ, the organ with a neighbour), weakly trained IoU heads rank poorly, so keep the one that obeys the most
        clicks, then scores best on SAM's stability score (the IoU of the mask at logit thresholds -1 and +1) times how
        well SAM2 gives it back when asked with its own box and the clicks (measured on phantoms 20400-20409 in
        Testing/Benchmarks/RESULTS.md)."""
        from sam2.utils.amg import calculate_stability_score

        candidates, _, _ = self.predictor.decode_without_memory(o.state, p.k, None, p.points, p.labels)
        stability = torch.nan_to_num(calculate_stability_score(candidates.float(), 0.0, 1.0)).tolist()
        masks = (candidates > 0).cpu().numpy()
        positive = [pt for pt, label in zip(p.points, p.labels) if label == 1]

        def returned(m: np.ndarray) -> float:
            if not m.any():
                return 0.0
            again, _, _ = self.predictor.decode_without_memory(o.state, p.k, self.grown_box(m, positive), p.points,
                                                               p.labels)
            return max(iou(a, m) for a in (again > 0).cpu().numpy())

        return max(zip(masks, stability), key=lambda ms: (obeyed(ms[0], p), ms[1] * returned(ms[0])))[0]

    def run(self, run: Run) -> None:
        """Every pass of ``run``; the object's median HU so far feeds the end rule outside a 3D box."""
        o, cfg = run.o, self.predictor.config
        held = o.mask > 0  # what the object is made of so far, for the chain's end rule outside a 3D box
        object_hu = (float(np.median(self.volume.array[held])) if o.bound is None and cfg.end_hu_change > 0
                     and held.any() else None)
        for ps in run.passes:
            self.chain(run, ps, object_hu)
            if run.progress:
                run.progress(len(set(run.writes) | run.clicked & run.planned), len(run.planned))

    def chain(self, run: Run, ps: Pass, object_hu: float | None) -> None:
        """From ``ps.start``, ``ps.count`` slices in its direction, each slice decoded from a box around the previous
        slice's mask; a prompted slice keeps its own mask and restarts the chain. Outside a 3D box, only the parts of
        SAM2's candidates touching the previous mask count, and only candidates whose median HU lies within
        ``end_hu_change`` of ``object_hu`` (the object's before this propagation; None: no such rule): none left means
        the object has ended. After an empty slice a slice keeps the mask it has (so a first propagation ends there,
        and a correction that empties a slice does not erase its neighbours). A slice with a mask keeps it when the
        previous slice's change (a correction, or the chain's own rewrite) leaves the mask overlapping it at least as
        well as before: a correction changes its neighbours only as far as it implies. Stops once ``settle_slices``
        slices past the last changed slice come out unchanged."""
        o, writes, step = run.o, run.writes, ps.step
        cfg = self.predictor.config
        h, w = self.volume.shape[1:]
        prev = writes.get(ps.start, o.mask[ps.start]) > 0
        settled = 0
        for k in range(ps.start + step, ps.start + step * (ps.count + 1), step):
            check(run.cancel)
            if k in run.clicked:
                prev = writes.get(k, o.mask[k]) > 0
                continue
            old = o.mask[k] > 0
            new = np.zeros((h, w), bool)
            if not prev.any():  # emptiness does not spread: a slice after an empty one keeps its mask
                new = old
            elif old.any() and (before := o.before(k - step)) is not None and iou(old, prev) >= iou(old, before):
                new = old  # the neighbour's change leaves this slice continuing it as well as before: nothing implied
            else:
                new = self._continued(run, k, prev, old, object_hu, new)
            if new.any() or old.any() or k in writes:
                writes[k] = new.astype(np.uint8)
            if cfg.settle_slices > 0 and ps.past(k, ps.last_dirty):
                settled = settle_count(settled, old, new)
                if settled >= cfg.settle_slices:
                    break
            prev = new

    def _continued(self, run: Run, k: int, prev: np.ndarray, old: np.ndarray, object_hu: float | None,
                   empty: np.ndarray) -> np.ndarray:
        """Slice ``k`` decoded in the box around ``prev`` (the previous slice's mask); ``empty`` when the object ends."""
        from scipy import ndimage

        cfg = self.predictor.config
        h, w = self.volume.shape[1:]
        box = self.grown_box(prev)
        candidates, _, run.scores[k] = self.predictor.decode_without_memory(run.o.state, k, box)
        if run.scores[k] < cfg.stop_score:
            return empty
        i0, j0, i1, j1 = (int(round(v)) for v in box)
        inside = np.zeros((h, w), bool)
        inside[j0:j1 + 1, i0:i1 + 1] = True
        masks = list((candidates > 0).cpu().numpy() & inside)
        if run.o.bound is None:  # the object continues from the previous slice, in its own density, or has ended
            grown = ndimage.binary_dilation(prev, structure=BLOB)
            masks = [touching(m, grown) for m in masks]
            if object_hu is not None:
                masks = [m for m in masks if m.any() and abs(np.median(self.volume.array[k][m]) - object_hu)
                         <= cfg.end_hu_change]
        # a large box is ambiguous (liver or liver + stomach): take the candidate that best continues the previous
        # slice's mask rather than SAM2's own IoU choice; on a re-propagation the slice's mask competes too, so a
        # correction changes a neighbour only where a decode continues it better
        return max(masks + ([old] if old.any() else []), key=lambda m: iou(m, prev), default=empty)
