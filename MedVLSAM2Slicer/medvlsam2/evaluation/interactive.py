"""The interactive segmentation protocol (CVPR 2025 interactive 3D CT challenge style) on a ``Session``.

Step 0: a box. Its in-plane extent is the reference's 2D bounding box on the reference's middle slice;
its z-range is the reference's slice range. It is given as the 3D box ``(i0, j0, k0, i1, j1, k1)``
(the Session prompts the middle slice) and propagated within the z-range.
With ``start="click"`` step 0 is instead one positive click at the innermost voxel of the reference on
that middle slice, and every propagation runs over the whole volume (nothing bounds the object, so
how propagation ends an object is scored too).
Steps 1..N (N = 5 by default): one simulated click at the largest error region: the largest
6-connected component of the false negatives (click +1) or of the false positives (click -1), at its
innermost voxel (the voxel farthest, in mm, from the component's boundary, so the click lies inside
the region even when the component is not convex), then propagation again.
After each step Dice and NSD are recorded with the step's wall time; AUC is the trapezoidal area
under the per-step curve with unit spacing between steps (0..N, so at most N).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..utils.masks import innermost
from .seg_metrics import NSD_TOLERANCE_MM, dice, nsd

DEFAULT_CLICKS = 5


@dataclass
class Step:
    """One interaction: what was given (box or click), the scores after it, and how long it took."""

    kind: str  # "box" or "click" ("none": no error left to click)
    prompt: list[int]  # box (i0, j0, k0, i1, j1, k1) or click (i, j, k)
    label: int  # +1 / -1 for clicks, +1 for the box
    dice: float
    nsd: float
    seconds: float


@dataclass
class InteractiveResult:
    steps: list[Step] = field(default_factory=list)

    @property
    def dice_curve(self) -> list[float]:
        return [s.dice for s in self.steps]

    @property
    def nsd_curve(self) -> list[float]:
        return [s.nsd for s in self.steps]

    def to_dict(self) -> dict:
        return {
            "steps": [vars(s) for s in self.steps],
            "dice_auc": auc(self.dice_curve), "nsd_auc": auc(self.nsd_curve),
            "final_dice": self.dice_curve[-1], "final_nsd": self.nsd_curve[-1],
            "seconds": sum(s.seconds for s in self.steps),
        }


def auc(values: Sequence[float]) -> float:
    """Trapezoidal area under ``values`` taken at steps 0, 1, 2, ... (0 for fewer than 2 points)."""
    v = np.asarray(values, dtype=np.float64)
    return float(((v[1:] + v[:-1]) / 2).sum()) if len(v) > 1 else 0.0


def initial_box(ref: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """(i0, j0, k0, i1, j1, k1): the 2D box of ``ref`` on its middle slice, with ``ref``'s slice range.

    The middle slice is the one the Session prompts for a 3D box (round((k0 + k1) / 2)); where the
    reference is empty there (a non-convex shape), the nearest non-empty slice's box is used. A box
    one voxel wide is widened by one voxel, since a box needs nonzero width and height.
    """
    ref = np.asarray(ref) > 0
    k0, k_box, k1 = _prompt_slices(ref)
    jj, ii = np.nonzero(ref[k_box])
    i0, i1 = _widen(int(ii.min()), int(ii.max()), ref.shape[2])
    j0, j1 = _widen(int(jj.min()), int(jj.max()), ref.shape[1])
    return i0, j0, k0, i1, j1, k1


def _prompt_slices(ref: np.ndarray) -> tuple[int, int, int]:
    """(first, prompted, last) slice of ``ref``: the prompted one is the non-empty slice nearest the middle."""
    slices = np.flatnonzero(ref.any(axis=(1, 2)))
    if len(slices) == 0:
        raise InputError("the reference mask is empty; the interactive protocol needs a structure to segment")
    k0, k1 = int(slices[0]), int(slices[-1])
    return k0, int(slices[np.argmin(np.abs(slices - int(round((k0 + k1) / 2))))]), k1


def _widen(lo: int, hi: int, size: int) -> tuple[int, int]:
    if hi > lo:
        return lo, hi
    return (lo, hi + 1) if hi + 1 < size else (lo - 1, hi)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    labels, n = ndimage.label(mask)  # default structure: 6-connected in 3D
    return labels, int(n)


def next_click(pred: np.ndarray, ref: np.ndarray, spacing_ijk: Sequence[float] = (1.0, 1.0, 1.0)
               ) -> tuple[tuple[int, int, int], int] | None:
    """The simulated correction: ``((i, j, k), +1 or -1)`` at the largest error component, or None if no error.

    False negatives (missed reference voxels) give a +1 click, false positives a -1 click; the larger
    component (voxel count) wins, false negatives on a tie.
    """
    pred, ref = np.asarray(pred) > 0, np.asarray(ref) > 0
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    best: tuple[int, np.ndarray, int] | None = None  # (size, component, label)
    for error, label in ((ref & ~pred, 1), (pred & ~ref, -1)):
        if not error.any():
            continue
        comps, n = _components(error)
        sizes = np.bincount(comps.ravel(), minlength=n + 1)[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), comps == largest, label)
    if best is None:
        return None
    k, j, i = innermost(best[1], spacing_ijk)
    return (i, j, k), best[2]


def initial_click(ref: np.ndarray, spacing_ijk: Sequence[float]) -> tuple[int, int, int]:
    """(i, j, k): on the slice ``initial_box`` prompts, the voxel of ``ref`` farthest (mm, in-plane) from its
    outline."""
    ref = np.asarray(ref) > 0
    k = _prompt_slices(ref)[1]
    j, i = innermost(ref[k], spacing_ijk)
    return i, j, k


STARTS = ("box", "click")


def run_interactive(session, ref: np.ndarray, name: str = "target", clicks: int = DEFAULT_CLICKS,
                    tolerance_mm: float = NSD_TOLERANCE_MM, start: str = "box") -> InteractiveResult:
    """Run the protocol for one structure on ``session`` (a ``medvlsam2.session.Session``) and score it.

    The object it creates is removed afterwards, so the session can be reused for the next structure.
    Once the prediction equals the reference, remaining steps repeat the last scores (no click is needed).
    """
    ref = np.asarray(ref) > 0
    spacing = session.volume.spacing
    if ref.shape != tuple(session.volume.shape):
        raise InputError(f"reference shape {ref.shape} differs from the volume's {session.volume.shape}")
    if start not in STARTS:
        raise InputError(f"the interactive protocol starts with one of {', '.join(STARTS)}, got {start!r}")
    box = initial_box(ref)
    z_range = (box[2], box[5]) if start == "box" else None
    result = InteractiveResult()
    obj = session.add_object(name)
    try:
        t0 = time.perf_counter()
        if start == "box":
            session.add_box(obj, box)
            first = list(box)
        else:
            first = list(initial_click(ref, spacing))
            session.add_points(obj, [first], [1])
        session.propagate(obj, k_range=z_range)
        pred = session.mask(obj)
        result.steps.append(Step(start, first, 1, dice(pred, ref), nsd(pred, ref, spacing, tolerance_mm),
                                 time.perf_counter() - t0))
        for _ in range(clicks):
            click = next_click(pred, ref, spacing)
            if click is None:
                last = result.steps[-1]
                result.steps.append(Step("none", [], 0, last.dice, last.nsd, 0.0))
                continue
            t0 = time.perf_counter()
            point, label = click
            session.add_points(obj, [point], [label])
            session.propagate(obj, k_range=z_range)
            pred = session.mask(obj)
            result.steps.append(Step("click", list(point), label, dice(pred, ref),
                                     nsd(pred, ref, spacing, tolerance_mm), time.perf_counter() - t0))
    finally:
        session.remove(obj)
    return result
