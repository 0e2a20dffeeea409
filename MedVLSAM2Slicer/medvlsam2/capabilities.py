"""What a loaded model can do, and the one message that says what to load when it cannot (torch-free).

Every model the factory returns has ``.capabilities`` (a frozenset of the names below), ``.provenance``
(one of ``PROVENANCES``) and ``.description``; callers check with ``require`` before doing any work.
"""

from __future__ import annotations

from .errors import CapabilityError

INTERACTIVE = "interactive"  # points, boxes, propagation
TEXT_SEGMENTATION = "text_segmentation"  # needs a trained MedVL-SAM2 bridge ([SEG] -> SAM2 prompt)
LANGUAGE = "language"  # ask, report
ALL = frozenset({INTERACTIVE, TEXT_SEGMENTATION, LANGUAGE})

PROVENANCES = ("random", "phantom-trained", "trained", "released")

# What a user should load to get each capability.
LOAD_INSTEAD = {
    INTERACTIVE: "a SAM2.1/MedSAM2 checkpoint (e.g. --model medsam2-latest, or a MedSAM2_latest.pt file) "
                 "or a MedVL-SAM2 bundle",
    TEXT_SEGMENTATION: "a released text segmenter (--model voxtell, segvol or m3d-lamed-phi3-4b, or a recipe with a "
                       "`text_segmenter:` part) or a MedVL-SAM2 bundle trained for text prompts (the demo bundle); "
                       "SAM2/MedSAM2 and Med3DVLM cannot segment from text",
    LANGUAGE: "a Med3DVLM folder (--model med3dvlm-qwen2.5-7b), a recipe with a `language:` part, "
              "or a MedVL-SAM2 bundle",
}
ACTIONS = {INTERACTIVE: "segment from clicks or boxes", TEXT_SEGMENTATION: "segment from a text prompt",
           LANGUAGE: "answer questions or write reports"}


def capabilities_of(model) -> frozenset[str]:
    return frozenset(getattr(model, "capabilities", ALL))


def require(model, capability: str) -> None:
    """Raise ``CapabilityError`` naming the missing ``capability`` and what to load instead."""
    if capability not in capabilities_of(model):
        what = getattr(model, "description", type(model).__name__)
        raise CapabilityError(f"this model ({what}) cannot {ACTIONS[capability]}: it lacks the '{capability}' "
                              f"capability. Load {LOAD_INSTEAD[capability]}")
