"""Per-slice SAM2 image features of one volume and the gate that orders model work across threads.

A ``FeatureCache`` belongs to one Session (one volume): it is keyed by slice index, so two Sessions on
the same model never evict or reuse each other's features. It is read and written only under the
predictor's ``ComputeGate``, which lets foreground calls (clicks, propagation) pre-empt background
encoding between its batches.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class SliceFeatures:
    """One slice's backbone output: FPN levels stored in ``store_dtype`` ([1, C, h, w] each)."""

    fpn: list[torch.Tensor]
    pos: list[torch.Tensor]  # positional encodings, shared across slices of the same size
    dtype: torch.dtype  # dtype the features are restored to for compute
    nbytes: int


class FeatureCache:
    """LRU of ``SliceFeatures`` by slice index, bounded by ``budget_mb`` (at least one slice is kept)."""

    def __init__(self, budget_mb: float) -> None:
        if not budget_mb > 0:
            raise ValueError(f"budget_mb must be positive, got {budget_mb}")
        self.budget_bytes = int(budget_mb * 2**20)
        self._entries: OrderedDict[int, SliceFeatures] = OrderedDict()
        self.nbytes = 0
        self.encoder_calls = 0  # slices run through the image encoder for this cache

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, k: int) -> bool:
        return k in self._entries

    def get(self, k: int) -> SliceFeatures | None:
        entry = self._entries.get(k)
        if entry is not None:
            self._entries.move_to_end(k)
        return entry

    def put(self, k: int, entry: SliceFeatures) -> None:
        old = self._entries.pop(k, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self._entries[k] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.budget_bytes and len(self._entries) > 1:
            self.nbytes -= self._entries.popitem(last=False)[1].nbytes

    def has_room(self, extra_bytes: int) -> bool:
        return self.nbytes + extra_bytes <= self.budget_bytes

    def per_slice_bytes(self) -> int:
        """Bytes of one cached slice (0 while empty)."""
        return self.nbytes // len(self._entries) if self._entries else 0

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


class ComputeGate:
    """Foreground model calls run one at a time and pre-empt background work between its batches.

    ``foreground()`` is re-entrant (a propagation inside ``segment_text``). ``background(stop)`` waits
    while any foreground call is running or waiting, then holds the gate for one batch; it yields
    False (do nothing) when ``stop`` was set meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._waiting = threading.Condition(threading.Lock())
        self._foreground = 0

    @contextlib.contextmanager
    def foreground(self):
        with self._waiting:
            self._foreground += 1
        try:
            with self._lock:
                yield
        finally:
            with self._waiting:
                self._foreground -= 1
                self._waiting.notify_all()

    @contextlib.contextmanager
    def background(self, stop: threading.Event):
        with self._waiting:
            while self._foreground and not stop.is_set():
                self._waiting.wait(0.5)
        with self._lock:
            yield not stop.is_set()
