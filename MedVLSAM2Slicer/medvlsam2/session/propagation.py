"""One propagation's plan and SAM2's own strategy (memory attention); the box chain is in ``box_chain``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..utils.cancel import CancelToken
from .slice_rules import settle_count
from .state import ObjectState

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Pass:
    """One direction of a propagation: ``count`` slices after ``start``."""
    reverse: bool
    start: int
    count: int
    last_prompt: int  # the last prompted slice in this direction
    last_dirty: int  # the last slice prompted since the previous propagation

    @property
    def step(self) -> int:
        return -1 if self.reverse else 1

    def past(self, k: int, edge: int) -> bool:
        """Whether slice ``k`` lies beyond slice ``edge`` in this pass's direction."""
        return k < edge if self.reverse else k > edge


@dataclass
class Run:
    """What one ``propagate`` call shares between its passes: the slices written and their scores."""
    o: ObjectState
    span: tuple[int, int]  # (a, b) inclusive
    passes: list[Pass]
    clicked: set[int]  # slices with a drawn prompt: they keep what the prompt left
    planned: set[int]
    cancel: CancelToken | None = None
    progress: Progress | None = None
    writes: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)

    @classmethod
    def plan(cls, o: ObjectState, span: tuple[int, int], direction: str, cancel: CancelToken | None,
             progress: Progress | None) -> "Run":
        """Passes from the first slice prompted since the last propagation (or the first prompted one) towards
        each end of ``span`` that ``direction`` allows."""
        a, b = span
        prompted = sorted({p.k for p in o.prompts})
        clicked = {p.k for p in o.prompts if p.drawn}
        inside = [k for k in prompted if a <= k <= b]
        dirty = sorted(o.dirty) or prompted
        s = dirty[0]
        passes = []
        if direction != "backward" and s <= b:
            start = max(s, a)
            passes.append(Pass(False, start, b - start, max(inside, default=start), dirty[-1]))
        if direction != "forward" and s >= a:
            start = min(s, b)
            passes.append(Pass(True, start, start - a, min(inside, default=start), dirty[0]))
        planned = set().union(*(range(p.start, p.start + p.count + 1) if not p.reverse
                                else range(p.start - p.count, p.start + 1) for p in passes))
        return cls(o, span, passes, clicked, planned, cancel, progress)


def memory_passes(predictor, run: Run) -> None:
    """SAM2's own propagation (memory attention, the object's tokens on every slice) over ``run.passes``, with the
    early stop outside a 3D box and the settle rule of ``Session.propagate``."""
    cfg = predictor.config
    o, (a, b), writes, scores = run.o, run.span, run.writes, run.scores
    seen: set[int] = set()
    with predictor.extra_prompt_tokens(o.tokens):
        for ps in run.passes:
            ended = settled = 0
            for k, logits in predictor.propagate(o.state, ps.start, "backward" if ps.reverse else "forward",
                                                 max_frames=ps.count, cancel=run.cancel):
                new = (logits > 0).cpu().numpy().astype(np.uint8)
                scores[k] = predictor.object_score(o.state, k)
                if k in run.clicked:  # SAM2 replays the slice's prompt output: keep what the prompt left
                    new = o.mask[k]
                else:
                    writes[k] = new
                seen.add(k)
                if run.progress:
                    run.progress(len(seen), len(run.planned))
                if o.bound is None and ps.past(k, ps.last_prompt):
                    ended = ended + 1 if scores[k] is not None and scores[k] < cfg.stop_score else 0
                    if ended >= max(1, cfg.stop_after_slices):
                        rest = range(a, k) if ps.reverse else range(k + 1, b + 1)
                        predictor.forget_slices(o.state, rest)
                        writes.update({r: np.zeros_like(new) for r in rest if o.mask[r].any() or r in writes})
                        break
                if cfg.settle_slices > 0 and ps.past(k, ps.last_dirty):
                    settled = settle_count(settled, o.mask[k], new)
                    if settled >= cfg.settle_slices:
                        break
