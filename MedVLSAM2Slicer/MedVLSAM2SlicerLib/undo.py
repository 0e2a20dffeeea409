"""Undo through Slicer's segmentation history, with the model session kept in step.

Each write that changes a segment is saved as one state of the history Slicer's own buttons walk: the
Segment Editor module's (its Undo/Redo buttons and Z/Y, Ctrl+Z/Ctrl+Y) when it edits the same segmentation,
else a ``vtkSlicerSegmentEditorLogic`` of this module's (Slicer >= 5.9). Whoever restores a state, the
controller sees the segment's content change and ``Track`` matches that content to the session steps
that made it, so undo and redo in Slicer undo and redo the session's steps too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


def segment_editor_widget(segmentation_node) -> Any:
    """The Segment Editor module's editor widget when it edits ``segmentation_node`` (Slicer application), else None."""
    try:
        import slicer

        module_widget = getattr(slicer.modules, "SegmentEditorWidget", None)  # set once the module's panel exists
        editor = getattr(module_widget, "editor", None)
        edited = editor.segmentationNode() if editor is not None else None
        return editor if edited is not None and edited.GetID() == segmentation_node.GetID() else None
    except Exception:  # no application or an API change: use this module's own history
        return None


class SegmentationUndo:
    """Save-before-write, undo and redo on the segmentation history Slicer's buttons walk (see module doc)."""

    def __init__(self, segmentation_node, editor_logic) -> None:
        self.node, self.logic = segmentation_node, editor_logic

    def _history(self) -> Any:
        """The Segment Editor's widget when it edits this segmentation, else this module's logic."""
        editor = segment_editor_widget(self.node)
        if editor is not None:
            self.logic.ClearUndoState()  # one history: the editor's
            return editor
        return self.logic

    def save(self) -> None:
        """Called once before an interaction changes a segment."""
        history = self._history()
        (history.saveStateForUndo if history is not self.logic else history.SaveStateForUndo)()

    def undo(self) -> None:
        history = self._history()
        (history.undo if history is not self.logic else history.Undo)()

    def redo(self) -> None:
        history = self._history()
        (history.redo if history is not self.logic else history.Redo)()

    def observe(self, callback) -> tuple:
        """Call ``callback`` when this module's history saves or restores a state; returns (object, tag)."""
        import slicer

        return self.logic, self.logic.AddObserver(slicer.vtkSlicerSegmentEditorLogic.SegmentationHistoryChangedEvent,
                                                  callback)


@dataclass
class Track:
    """The states one segment went through under the session's object ``obj``, to match a restored state.

    ``keys[n]`` is the segment's content fingerprint (``segments.content_key``) at state n (0: before the first
    write); ``steps[n]`` is how many session steps led from state n-1 to n (0 for an edit made outside the
    module, more than 1 when session steps changed no voxel). ``pos`` is the state the segment shows.
    """

    obj: int
    keys: list = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    pos: int = 0
    base: bool = True  # the session's mask is state 0's content (False: it never was, or is unknown)

    @classmethod
    def starting_at(cls, obj: int, key, seeded: bool = False) -> "Track":
        """A track from the segment's content ``key``; ``seeded``: the session object was given that content."""
        return cls(obj, [key], [0], 0, seeded or key == (None, ()))

    @property
    def in_step(self) -> bool:
        """Whether the session's mask is what the segment shows (no outside edit since the last session step)."""
        return self.pos == 0 or self.steps[self.pos] > 0

    def session_key(self):
        """The content fingerprint of the state the session's mask is at (the last state reached by session
        steps at or before ``pos``), so a hand edit is compared with it without asking the session for its
        mask; None when unknown (that state was dropped from the history, or the segment held voxels before the
        session's object existed)."""
        for q in range(self.pos, 0, -1):
            if self.steps[q] > 0:
                return self.keys[q]
        return self.keys[0] if self.base else None

    @property
    def undoable(self) -> bool:
        return self.pos > 0

    @property
    def redoable(self) -> bool:
        return self.pos < len(self.keys) - 1

    def wrote(self, before, after) -> None:
        """The session took one step; ``before``/``after`` = the segment's content around the write (same when
        no voxel changed)."""
        if before != self.keys[self.pos]:
            self._push(before, 0)  # edited outside since the last state: that edit is a state of its own
        if after == before:
            if self.pos > 0:  # a step that changed no voxel is undone together with the visible one before it
                self.steps[self.pos] += 1
        else:
            self._push(after, 1)

    def moved(self, key) -> int:
        """Session steps to undo (< 0) or redo (> 0) now that the segment shows ``key``; 0 when in step.

        A content matching no state (an outside edit) becomes a new state that no session step made.
        """
        if key == self.keys[self.pos]:
            return 0
        for distance in range(1, len(self.keys)):  # the nearest state first, undo before redo
            for q in (self.pos - distance, self.pos + distance):
                if 0 <= q < len(self.keys) and self.keys[q] == key:
                    delta = -sum(self.steps[q + 1:self.pos + 1]) if q < self.pos else sum(self.steps[self.pos + 1:q + 1])
                    self.pos = q
                    return delta
        self._push(key, 0)
        return 0

    def _push(self, key, steps: int) -> None:
        del self.keys[self.pos + 1:], self.steps[self.pos + 1:]  # a new state ends the redo branch, as in Slicer
        self.keys.append(key)
        self.steps.append(steps)
        if len(self.keys) > MAX_UNDO_STATES + 1:  # Slicer dropped its oldest state too
            self.base = self.steps[1] > 0  # the new first state: was it reached by session steps?
            del self.keys[0], self.steps[0]
            self.steps[0] = 0
        self.pos = len(self.keys) - 1
