"""What a Session keeps per object: its mask, SAM2 state, prompts and undo steps."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from ..plausibility.agreement import prompt_warnings
from ..results import BBox, SegmentationResult


@dataclass
class Prompt:
    k: int
    points: list[list[float]] | None = None  # (x=i, y=j) on slice k
    labels: list[int] | None = None  # SAM2 labels: 1 positive, 0 negative
    box: list[float] | None = None  # (i0, j0, i1, j1)
    mask: np.ndarray | None = None  # bool [j, i] on slice k (a lasso), SAM2's mask input

    @property
    def drawn(self) -> bool:
        """A click, box or mask (not the [SEG] tokens of a text prompt)."""
        return self.points is not None or self.box is not None or self.mask is not None


@dataclass(eq=False)
class Step:
    """One undo step: the mask inside the changed box before the call, and the prompts and bound then."""

    bbox: BBox | None
    before: np.ndarray
    prompts: list[Prompt] | int  # the previous list, or its length when the call only appended
    bound: tuple[int, int] | None

    @property
    def nbytes(self) -> int:
        return self.before.nbytes + 8 * (len(self.prompts) if isinstance(self.prompts, list) else 1) + 64


@dataclass(eq=False)
class Undone:
    """An undone step with what it had made (mask inside its box, prompts, bound), so redo restores it exactly."""

    step: Step
    after: np.ndarray
    prompts: list[Prompt]
    bound: tuple[int, int] | None

    @property
    def nbytes(self) -> int:
        return self.step.nbytes + self.after.nbytes


@dataclass
class ObjectState:
    name: str
    state: dict
    mask: np.ndarray
    tokens: torch.Tensor | None = None  # [SEG] prompt tokens of a text-prompted object
    prompts: list[Prompt] = field(default_factory=list)
    bound: tuple[int, int] | None = None  # (k0, k1) of a 3D box: the object lives only there
    # slices prompted since the last propagation -> each one's mask before those prompts (None: not known, after undo)
    dirty: dict[int, np.ndarray | None] = field(default_factory=dict)
    extent: BBox | None = None  # union of every box written: holds all of the mask
    history: deque[Step] = field(default_factory=deque)
    dropped: int = 0  # oldest steps dropped to stay within the history budget
    undone: list[Undone] = field(default_factory=list)  # redo stack, most recently undone last

    def before(self, k: int) -> np.ndarray | None:
        """Slice ``k``'s mask before the prompts since the last propagation (None: not known), as the chain
        compares it."""
        return self.dirty[k] if k in self.dirty else self.mask[k] > 0

    def result(self, obj: int, bbox: BBox | None, scores: dict[int, float | None] | None = None) -> SegmentationResult:
        """What a call returns: the mask inside ``bbox``, the per-slice scores SAM2 gave, and where the mask
        disagrees with the object's clicks or 3D box (``plausibility.agreement``)."""
        return SegmentationResult(obj, self.name, bbox, crop(self.mask, bbox).copy(),
                                  {k: v for k, v in (scores or {}).items() if v is not None},
                                  prompt_warnings(self.mask, self.prompts, self.bound))


def crop(mask: np.ndarray, bbox: BBox | None) -> np.ndarray:
    if bbox is None:
        return np.zeros((0, 0, 0), mask.dtype)
    k0, k1, j0, j1, i0, i1 = bbox
    return mask[k0:k1, j0:j1, i0:i1]
