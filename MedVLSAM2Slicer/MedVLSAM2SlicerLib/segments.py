"""Write a ``SegmentationResult`` into exactly one segment, and make named, coloured text-prompt segments.

Only the result's changed box is replaced inside the chosen segment; every other segment keeps its
voxels (segments may overlap; Slicer moves the written segment to its own layer where needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from medvlsam2.errors import InputError

from . import terminology


@dataclass
class UndoRecord:
    """What one interaction replaced, so it can be put back exactly."""

    segment_id: str
    bbox: tuple[int, int, int, int, int, int]
    previous: np.ndarray  # the segment's voxels inside bbox before the write


def _check_segment(segmentation_node, segment_id: str) -> None:
    if segmentation_node is None or segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(f"segment {segment_id!r} does not exist; select a segment in the segment list")


def segment_array(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment's mask [k, j, i] in the volume's voxel grid (uint8 0/1)."""
    import slicer

    _check_segment(segmentation_node, segment_id)
    array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
    if array is None:  # an empty segment may have no labelmap yet
        dims = volume_node.GetImageData().GetDimensions()
        return np.zeros(dims[::-1], np.uint8)
    return (np.asarray(array) > 0).astype(np.uint8)


def write_patch(segmentation_node, segment_id: str, volume_node, bbox, patch: np.ndarray,
                before_write: Callable[[], None] | None = None) -> UndoRecord | None:
    """Replace the segment's voxels inside ``bbox`` (k0, k1, j0, j1, i0, i1, half-open) with ``patch``.

    ``before_write`` is called once, only when something changes (e.g. the Segment Editor's
    ``saveStateForUndo``), so one interaction is one undo step. Returns what was replaced, or None.
    """
    import slicer

    if bbox is None:
        return None
    current = segment_array(segmentation_node, segment_id, volume_node)
    k0, k1, j0, j1, i0, i1 = (int(v) for v in bbox)
    if not (0 <= k0 < k1 <= current.shape[0] and 0 <= j0 < j1 <= current.shape[1] and 0 <= i0 < i1 <= current.shape[2]):
        raise InputError(f"result box {tuple(bbox)} lies outside the volume {current.shape}; the session is on another volume")
    patch = (np.asarray(patch) > 0).astype(np.uint8)
    if patch.shape != (k1 - k0, j1 - j0, i1 - i0):
        raise InputError(f"result patch shape {patch.shape} does not match its box {tuple(bbox)}")
    previous = current[k0:k1, j0:j1, i0:i1].copy()
    if np.array_equal(previous, patch):
        return None
    if before_write is not None:
        before_write()
    current[k0:k1, j0:j1, i0:i1] = patch
    slicer.util.updateSegmentBinaryLabelmapFromArray(current, segmentation_node, segment_id, volume_node)
    return UndoRecord(segment_id, (k0, k1, j0, j1, i0, i1), previous)


def write_result(segmentation_node, segment_id: str, volume_node, result,
                 before_write: Callable[[], None] | None = None) -> UndoRecord | None:
    """Write a ``SegmentationResult`` (bbox + patch) into one segment; see ``write_patch``."""
    return write_patch(segmentation_node, segment_id, volume_node, result.bbox, result.patch, before_write)


def restore(segmentation_node, volume_node, record: UndoRecord) -> None:
    """Put back what ``record`` replaced."""
    write_patch(segmentation_node, record.segment_id, volume_node, record.bbox, record.previous)


def add_prompt_segment(segmentation_node, name: str, phrase: str | None = None) -> str:
    """A new empty segment named ``name`` with a colour and, where ``phrase`` (default: the name)
    matches a known structure, its terminology entry."""
    import slicer

    phrase = phrase or name
    segmentation = segmentation_node.GetSegmentation()
    index = segmentation.GetNumberOfSegments()
    segment_id = segmentation.AddEmptySegment("", name, terminology.color_for(phrase, index))
    entry = terminology.terminology_entry(phrase)
    if entry:
        segmentation.GetSegment(segment_id).SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
    return segment_id


def segment_name_for(prompt: str, result_name: str, count: int) -> str:
    """Segment name for a text prompt: the prompt itself, or "prompt: phrase" when it gave several objects."""
    prompt = prompt.strip()
    if count <= 1 or not result_name or result_name.strip().lower() == prompt.lower():
        return prompt
    return f"{prompt}: {result_name.strip()}"


def prompt_lines(text: str) -> list[str]:
    """One prompt per non-empty line, whitespace trimmed, duplicates kept once (in order)."""
    seen: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line and line not in seen:
            seen.append(line)
    return seen
