"""Undo through Slicer's segmentation history: one model interaction is one Segment Editor undo step.

``SegmentationUndo`` drives a ``vtkSlicerSegmentEditorLogic`` (the logic behind the Segment Editor's undo
and redo buttons, Slicer >= 5.9) bound to the panel's segmentation node. Inside Slicer the panel hands in
the Segment Editor's own logic when it edits the same segmentation, so the editor's undo button and the
panel's undo walk the same history.
"""

from __future__ import annotations

from typing import Any

SINGLETON_TAG = "MedVLSAM2Slicer"
MAX_UNDO_STATES = 20  # Slicer keeps full copies of changed labelmaps per state; the editor's default is 10


def new_editor_logic(scene, segmentation_node) -> Any:
    """A segment editor logic with its own editor node (a singleton of this module) on ``segmentation_node``."""
    import slicer

    node = scene.GetSingletonNode(SINGLETON_TAG, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = slicer.vtkMRMLSegmentEditorNode()
        node.SetSingletonTag(SINGLETON_TAG)
        node = scene.AddNode(node)
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(scene)
    app = getattr(slicer, "app", None)
    if app is not None and hasattr(app, "applicationLogic"):
        logic.SetMRMLApplicationLogic(app.applicationLogic())
    logic.SetSegmentEditorNode(node)
    logic.SetSegmentationNode(segmentation_node)
    logic.SetMaximumNumberOfUndoStates(MAX_UNDO_STATES)
    return logic


class SegmentationUndo:
    """Save-before-write and undo on one segmentation node's history, remembering which segment each step wrote."""

    def __init__(self, editor_logic) -> None:
        self.logic = editor_logic
        self.steps: list[str] = []  # segment id written by each saved step, oldest first

    def save(self, segment_id: str) -> None:
        """Called once before an interaction changes ``segment_id``."""
        self.logic.SaveStateForUndo()
        self.steps = (self.steps + [segment_id])[-MAX_UNDO_STATES:]

    @property
    def can_undo(self) -> bool:
        return bool(self.steps)

    def undo(self) -> str:
        """Restore the segmentation as it was before the last step; returns the segment that step wrote."""
        segment_id = self.steps.pop()
        self.logic.Undo()
        return segment_id

    def clear(self) -> None:
        self.steps.clear()
        self.logic.ClearUndoState()
