"""Undo and redo of every object of one Session within one byte budget (the oldest steps of any object go first)."""

from __future__ import annotations

from collections import deque

from ..errors import InputError
from ..results import BBox
from .state import ObjectState, Step, Undone, crop


class History:
    def __init__(self, objects: dict[int, ObjectState], budget_bytes: int) -> None:
        self.objects = objects  # the Session's own dict: dropping a step reaches its owner
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self._steps: deque[tuple[int, Step]] = deque()  # every object's steps, oldest first

    def record(self, obj: int, step: Step) -> None:
        """Keep ``step``; drop the oldest steps of any object while the history exceeds its budget."""
        self.objects[obj].history.append(step)
        self._steps.append((obj, step))
        self.nbytes += step.nbytes
        while self.nbytes > self.budget_bytes and self._steps:
            owner, oldest = self._steps.popleft()
            self.objects[owner].history.popleft()
            self.objects[owner].dropped += 1
            self.nbytes -= oldest.nbytes

    def forget_undone(self, o: ObjectState) -> None:
        """A new step ends what redo could bring back."""
        self.nbytes -= sum(u.nbytes for u in o.undone)
        o.undone.clear()

    def forget(self, obj: int) -> None:
        """Drop every step of ``obj`` (it is being removed)."""
        o = self.objects[obj]
        self.nbytes -= sum(step.nbytes for step in o.history) + sum(u.nbytes for u in o.undone)
        self._steps = deque((i, step) for i, step in self._steps if i != obj)

    def undo(self, obj: int) -> BBox | None:
        """Restore ``obj``'s mask, prompts and bound from before its last step; returns the box it changed.
        SAM2's state is the caller's to rebuild."""
        o = self.objects[obj]
        if not o.history:
            if o.dropped:
                raise InputError(f"cannot undo further: the {o.dropped} oldest step(s) of this object were dropped to keep "
                                 f"the undo history within {self.budget_bytes / 2**20:g} MB (Session history_mb)")
            raise InputError("nothing to undo for this object")
        step = o.history.pop()
        self._steps.remove((obj, step))  # Step compares by identity
        undone = Undone(step, crop(o.mask, step.bbox).copy(), o.prompts, o.bound)
        o.undone.append(undone)
        self.nbytes += undone.nbytes - step.nbytes
        if step.bbox is not None:
            k0, k1, j0, j1, i0, i1 = step.bbox
            o.mask[k0:k1, j0:j1, i0:i1] = step.before
        o.prompts = o.prompts[:step.prompts] if isinstance(step.prompts, int) else step.prompts
        o.bound = step.bound
        while self.nbytes > self.budget_bytes and len(o.undone) > 1:
            self.nbytes -= o.undone.pop(0).nbytes  # the furthest redo goes first
        return step.bbox

    def redo(self, obj: int) -> BBox | None:
        """Take the last undone step of ``obj`` again, exactly as it was (mask, prompts, bound)."""
        o = self.objects[obj]
        if not o.undone:
            raise InputError("nothing to redo for this object")
        undone = o.undone.pop()
        self.nbytes -= undone.nbytes
        step = undone.step
        if step.bbox is not None:
            k0, k1, j0, j1, i0, i1 = step.bbox
            o.mask[k0:k1, j0:j1, i0:i1] = undone.after
        o.prompts, o.bound = undone.prompts, undone.bound
        self.record(obj, step)
        return step.bbox
