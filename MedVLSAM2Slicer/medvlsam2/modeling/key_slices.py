"""The one rule that picks key slices for text-only prompts.

A text prompt gives ``[SEG]`` tokens but no position. We decode those tokens, without memory, on
every ``stride``-th slice (automatic stride: about 16 probes per volume), score each probe with
SAM2's object-score logit, and condition propagation on the ``count`` best-scoring probes that are
not neighbours (at least ``stride`` apart). Propagation then runs both ways from them.
"""

from __future__ import annotations

from typing import Callable

from ..errors import InputError


def probe_slices(num_slices: int, stride: int = 0) -> list[int]:
    if num_slices < 1:
        raise InputError("the volume has no slices")
    stride = stride if stride > 0 else max(1, num_slices // 16)
    start = (num_slices - 1) % stride // 2  # centre the probes
    return list(range(start, num_slices, stride))


def choose_key_slices(score_fn: Callable[[int], float], num_slices: int, stride: int = 0, count: int = 1
                      ) -> tuple[list[int], dict[int, float]]:
    """Return (key slices sorted by score, all probe scores)."""
    probes = probe_slices(num_slices, stride)
    gap = probes[1] - probes[0] if len(probes) > 1 else 1
    scores = {k: float(score_fn(k)) for k in probes}
    chosen: list[int] = []
    for k in sorted(scores, key=scores.get, reverse=True):
        if all(abs(k - c) >= max(gap, 2) for c in chosen):
            chosen.append(k)
        if len(chosen) == count:
            break
    return chosen, scores
