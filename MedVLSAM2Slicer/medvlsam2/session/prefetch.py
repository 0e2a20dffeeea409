"""Background encoding of every slice while the feature budget has room."""

from __future__ import annotations

import threading

import torch

from ..modeling.feature_cache import FeatureCache
from ..utils.device import autocast


def prefetch(predictor, state: dict, batch: int, stop: threading.Event, dtype: torch.dtype | None) -> None:
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
