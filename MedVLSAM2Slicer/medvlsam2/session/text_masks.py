"""Typed prompts answered by a released text segmenter (VoxTell, SegVol, M3D-LaMed): each mask becomes one object.

The object's mask is the text segmenter's, written as one undo step. Where the model also has a SAM2 segmenter,
the object's SAM2 state holds mask prompts on key slices of that mask, so clicks and boxes refine it as any
object's and undo replays them; without one the object is delivered as is and takes no clicks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import CheckpointError
from ..results import SegmentationResult
from ..utils.cancel import CancelToken
from .state import ObjectState, Prompt

if TYPE_CHECKING:
    from .core import Session

KEY_SLICES = 3  # mask prompts given to SAM2 per typed object (its first, middle and last slices)


def text_segmenter_of(model):
    """The model's released text segmenter: a recipe's ``text_segmenter`` part, or the model itself (None: none)."""
    part = getattr(model, "text_segmenter", None)
    return part if part is not None else (model if hasattr(model, "segment_target") else None)


def key_slices(mask: np.ndarray, count: int = KEY_SLICES) -> list[int]:
    """``count`` slices spread evenly over the slices that hold ``mask`` [K, J, I]."""
    held = np.flatnonzero(mask.any(axis=(1, 2)))
    return sorted({int(held[i]) for i in np.linspace(0, len(held) - 1, min(count, len(held))).round().astype(int)})


def seed_from_text(session: "Session", segmenter, target: str, cancel: CancelToken | None
                   ) -> tuple[list[SegmentationResult], str]:
    """The target's object (or none), and why there is none (empty when there is one)."""
    answer = segmenter.segment_target(session.volume, target, cancel=cancel)
    if answer.mask is None:
        return [], answer.reason or f"the model found no {target}"
    mask = np.asarray(answer.mask) > 0
    if mask.shape != session.volume.shape:
        raise CheckpointError(f"{segmenter.description} returned a mask of shape {mask.shape} for a volume of shape "
                              f"{session.volume.shape}; its loader is broken")
    name = answer.name or target
    obj = session.add_object(name) if session.predictor is not None else _plain_object(session, name)
    o = session._objects[obj]
    try:
        prompts = [Prompt(k, mask=mask[k]) for k in (key_slices(mask) if session.predictor is not None else [])]
        for p in prompts:
            session._add(o, p)
        writes = {int(k): mask[k].astype(np.uint8) for k in np.flatnonzero(mask.any(axis=(1, 2)))}
        return [session._commit(obj, writes, prompts, {}, None)], ""
    except BaseException:
        session.remove(obj)  # a cancelled or failed seed leaves no half-made object
        raise


def _plain_object(session: "Session", name: str) -> int:
    """An object with no SAM2 state, for a model without a segmenter: it holds a mask and its undo history."""
    obj = session._next_id
    session._next_id += 1
    session._objects[obj] = ObjectState(name, {}, np.zeros(session.volume.shape, np.uint8))
    return obj
