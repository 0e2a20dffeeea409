"""The contract every released text segmenter meets (torch-free, so the factory can describe without torch).

A released segmenter takes a CT ``Volume`` and one target phrase and returns a ``TargetMask`` in the input's
own IJK grid (same shape, same geometry): each family reorients, crops and resizes internally as it was
trained and pastes its mask back, so callers never see the model's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..io.volume import Volume
    from ..utils.cancel import CancelToken

from ..capabilities import LANGUAGE, TEXT_SEGMENTATION

KINDS = ("m3d-lamed", "segvol", "voxtell")
PROVENANCES = ("released", "random")  # "random": a file in the published layout with random weights (tests)
SIZES_FIELD = "medvlsam2_sizes"  # ours, in a test folder's config.json: shrunk modules, random weights
# config.json model_type of a released folder -> (kind, family name, capabilities); read without torch.
FOLDER_MODEL_TYPES = {
    "lamed_phi3": ("m3d-lamed", "M3D-LaMed", frozenset({TEXT_SEGMENTATION, LANGUAGE})),
    "segvol": ("segvol", "SegVol", frozenset({TEXT_SEGMENTATION})),
}


@dataclass
class TargetMask:
    """One target's answer. ``mask`` is uint8 (K, J, I) in the input's IJK grid, ``None`` when not found."""

    name: str
    mask: np.ndarray | None
    reason: str = ""  # one line when not found, e.g. "the model answered: Sorry, there is no spleen."
    answer: str = ""  # the generated text, for families with a language model (empty otherwise)

    @property
    def found(self) -> bool:
        return self.mask is not None


@runtime_checkable
class TextSegmenter(Protocol):
    """What ``factory.load_model`` returns for a released text-segmenter folder.

    ``capabilities`` holds names from ``medvlsam2.capabilities`` (TEXT_SEGMENTATION, and LANGUAGE for a
    family that also answers questions); ``referring`` says whether ``segment_target`` accepts a free
    description (M3D-LaMed) rather than a structure name only.
    """

    capabilities: frozenset[str]
    kind: str  # one of KINDS
    provenance: str  # one of PROVENANCES
    description: str  # one line for messages, e.g. "M3D-LaMed-Phi-3-4B (released)"
    referring: bool

    def segment_target(self, volume: "Volume", target: str, cancel: "CancelToken | None" = None) -> TargetMask:
        """Segment ``target`` (a structure name, or a description where ``referring``) in ``volume``."""
        ...


class LanguageAnswerer(Protocol):
    """Optional, for families with LANGUAGE: stream the answer to a free question about the volume."""

    def ask(self, volume: "Volume", question: str, cancel: "CancelToken | None" = None,
            max_new_tokens: int | None = None) -> Iterator[str]:
        ...


def not_found(name: str, reason: str, answer: str = "") -> TargetMask:
    """The single way a family reports absence (keeps the reason one line)."""
    return TargetMask(name=name, mask=None, reason=" ".join(reason.split()), answer=answer)
