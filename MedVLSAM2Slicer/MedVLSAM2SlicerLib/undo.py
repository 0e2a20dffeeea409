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

import numpy as np

from medvlsam2.errors import InputError

from . import segments
from .worker import Job

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


class SessionUndoSync:
    """The controller's half that keeps the session in step with the segmentation (a mixin of
    ``controller.Controller``, which owns the attributes used here: session, worker, state, the segment
    ``_tracks`` and ``_changed`` set, ``defer``, ``message``).

    Whoever undoes or redoes a write (this panel, the Segment Editor's buttons and keys), the segment's
    restored content is matched to the session steps that made it (``Track``) and the session undoes or redoes
    them too. A segment painted or erased by hand is sent to the session as mask prompts on the slices where
    it differs from the session's mask, found from the tracks' fingerprints (no mask download).
    """

    def _observe(self, segmentation_node, undo_history: SegmentationUndo | None) -> None:
        """Watch the segmentation for changes made by anyone else (Slicer's undo/redo, the Segment Editor).

        A restore modifies a segment several times (it is empty in between), so the content is read only
        once the burst is over: on the deferred call, or when the undo history says it has restored.
        """
        for obj, tag in self._observed:
            obj.RemoveObserver(tag)
        self._observed.clear()
        if segmentation_node is None:
            return
        import slicer
        import vtk

        @vtk.calldata_type(vtk.VTK_STRING)
        def modified(caller, event, segment_id) -> None:
            if not self._writing and segment_id in self._tracks:
                self._changed.add(segment_id)
                if self.defer is not None and not self._sync_pending:
                    self._sync_pending = True
                    self.defer(self.sync)
        segmentation = segmentation_node.GetSegmentation()
        self._observed.append((segmentation, segmentation.AddObserver(slicer.vtkSegmentation.SegmentModified, modified)))
        if undo_history is not None:
            self._observed.append(undo_history.observe(lambda *_: self._changed and self.sync()))

    def sync(self, absorb: bool = True) -> None:
        """Match each changed segment to the state it now shows and undo/redo the session's steps to it.

        Runs on the main thread; the session calls queue on the worker, so a prompt given after an undo
        refines the restored mask. A content no state had (an edit outside this module) leaves the session
        as it is, with a message.
        """
        self._sync_pending = False
        changed, self._changed = self._changed, set()
        for segment_id in sorted(changed):
            track = self._tracks.get(segment_id)
            if track is None:
                continue
            if self.segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
                del self._tracks[segment_id]  # the segment is gone; its session object stays unused
                continue
            delta = track.moved(segments.content_key(self.segmentation_node, segment_id))
            if delta:
                self._move_session(track.obj, delta)
            elif not track.in_step:
                self._edited_by_hand(segment_id, track, absorb)
        self._update_selection()

    def _edited_by_hand(self, segment_id: str, track: Track, absorb: bool) -> None:
        """Give the session each axial slice where the hand-edited segment differs from its mask, as a mask
        prompt (SAM2 keeps a prompted slice's mask through propagation); these session steps belong to the
        edited state, so undoing the edit in Slicer undoes them too. Not when a newer result is arriving
        (``absorb`` False): the session has moved on from the edited state."""
        session, obj, state = self.session, track.obj, track.pos
        if session is None or not hasattr(session, "add_mask") or not absorb:
            self.message.emit(f"'{self._segment_name(segment_id)}' was edited outside MedVLSAM2: the model keeps its "
                              "own mask, and its next result replaces the box it changes (Reset to start over)")
            return
        # the session's mask is the content of the last state its steps reached: compare fingerprints, so a
        # sync asks the server for nothing (RemoteSession keeps no mask; ``mask`` is a full-volume download)
        # and reads only the edited slices of the segment (main thread: MRML)
        node, volume = self.segmentation_node, self.volume_node
        reference = track.session_key()
        known = None if reference is None else segments.differing_slices(node, volume, track.keys[track.pos], reference)
        if known is not None:
            painted = segments.segment_slices(node, segment_id, volume, known)
        else:
            whole = segments.segment_array(node, segment_id, volume)
            painted = dict(enumerate(whole))

        def run(job: Job) -> int:
            ks = known
            if ks is None:  # the fingerprints cannot tell (history dropped, another grid): one mask download
                current = session.mask(obj)
                ks = [k for k in range(len(current)) if not np.array_equal(current[k], painted[k])]
            for k in ks:
                job.cancel.raise_if_cancelled()
                session.add_mask(obj, k, painted[k])
            return len(ks)

        def done(steps: int) -> None:
            if track.pos == state and len(track.steps) > state:
                track.steps[state] = steps  # the edit is now a state the session can undo and redo
            if steps:
                self.message.emit(f"Hand edit of '{self._segment_name(segment_id)}' sent to the model as {steps} "
                                  "slice prompt(s); the next propagation keeps it")
            self._update_selection()

        def failed(exc: BaseException) -> None:
            if not self._reopened(exc):
                self.state.set_error(f"the model did not take the hand edit ({exc}); Reset this segment to start over")
        self.worker.submit(Job("hand edit", run, on_done=done, on_error=failed))

    def _move_session(self, obj: int, delta: int) -> None:
        """Undo (delta < 0) or redo (delta > 0) ``abs(delta)`` session steps of ``obj`` on the worker thread."""
        session = self.session
        if session is None:
            return
        step = session.undo if delta < 0 else session.redo

        def run(job: Job) -> None:
            for _ in range(abs(delta)):
                step(obj)

        def failed(exc: BaseException) -> None:
            if self._reopened(exc):
                return
            self.state.set_error(f"the model could not {'undo' if delta < 0 else 'redo'} with Slicer: {exc}; "
                                 "prompt again or Reset this segment")
        self.worker.submit(Job("undo" if delta < 0 else "redo", run, on_done=lambda _: self._update_selection(),
                               on_error=failed))


    @property
    def can_undo(self) -> bool:
        return self.undo_history is not None and any(t.undoable for t in self._tracks.values())

    @property
    def can_redo(self) -> bool:
        return self.undo_history is not None and any(t.redoable for t in self._tracks.values())

    def undo(self) -> None:
        """Undo the last write in Slicer's history (as the Segment Editor's Undo does); ``sync`` then undoes the
        session's matching steps."""
        self._walk("undo", self.can_undo)

    def redo(self) -> None:
        """Redo in Slicer's history (as the Segment Editor's Redo does); ``sync`` then redoes the session's steps."""
        self._walk("redo", self.can_redo)

    def _walk(self, direction: str, possible: bool) -> None:
        if self.session is None:
            raise InputError("no model session: start the server (or connect) and select a CT volume first")
        if not possible:
            raise InputError(f"nothing to {direction}")
        if self.state.busy:
            self.message.emit(f"busy with {self.state.busy_job}; wait or press Cancel")
            return
        getattr(self.undo_history, direction)()  # main thread: MRML; the segmentation's events start ``sync``
