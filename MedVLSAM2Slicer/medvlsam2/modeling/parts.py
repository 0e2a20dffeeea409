"""Models made of parts: a released SAM2 segmenter alone, or a segmenter and a language model together.

Both implement the protocols of docs/ARCHITECTURE.md (segmenter side: ``.segmenter``, ``.segmenter_window``;
language side: ``vision_input_size``, ``vision_window``, ``encode_volume``, ``stream_text``). Nothing here
builds weights the user did not give: a segmenter-only model has no encoder and no LLM.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..capabilities import INTERACTIVE, LANGUAGE, PROVENANCES
from .segmenter import SAM2VolumePredictor


class SegmenterModel(nn.Module):
    """A released SAM2.1 / MedSAM2 checkpoint: clicks, boxes and propagation, nothing else."""

    capabilities = frozenset({INTERACTIVE})

    def __init__(self, segmenter: SAM2VolumePredictor, window: str, description: str,
                 provenance: str = "released") -> None:
        super().__init__()
        self.segmenter, self.segmenter_window = segmenter, window
        self.description, self.provenance = description, provenance


class RecipeModel(nn.Module):
    """A segmenter part and a language part (recipe YAML): clicks from one, answers from the other."""

    def __init__(self, segmenter_part: nn.Module, language_part: nn.Module, description: str) -> None:
        super().__init__()
        self.segmenter_part, self.language_part = segmenter_part, language_part
        self.segmenter = segmenter_part.segmenter
        self.segmenter_window = segmenter_part.segmenter_window
        # Text segmentation needs the [SEG] bridge and the LLM of one bundle: parts never combine into it.
        self.capabilities = (frozenset(segmenter_part.capabilities) & {INTERACTIVE}) | \
            (frozenset(language_part.capabilities) & {LANGUAGE})
        # The least trustworthy part decides: a random part makes the whole answer random.
        self.provenance = min((segmenter_part.provenance, language_part.provenance), key=PROVENANCES.index)
        self.description = description

    @property
    def vision_input_size(self) -> tuple[int, int, int]:
        return self.language_part.vision_input_size

    @property
    def vision_window(self) -> str:
        return self.language_part.vision_window

    def encode_volume(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, D, H, W] in [0, 1] -> visual tokens [B, T, C] of the language part."""
        return self.language_part.encode_volume(images)

    def stream_text(self, visual_tokens: torch.Tensor, question: str, cancel=None,
                    max_new_tokens: int | None = None) -> Iterator[str]:
        return self.language_part.stream_text(visual_tokens, question, cancel=cancel, max_new_tokens=max_new_tokens)
