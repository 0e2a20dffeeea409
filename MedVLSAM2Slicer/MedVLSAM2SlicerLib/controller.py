"""Runs the panel's actions: model calls on the worker thread, MRML writes on the main thread.

Works with any object that has the Session's method names (local ``medvlsam2.session.Session`` or
``medvlsam2.client.RemoteSession``). A failed or cancelled call changes no segment. Each write that changes
a segment is one step of Slicer's segmentation undo history (``undo.SegmentationUndo``); keeping the session
in step with Slicer's undo, redo and hand edits is this class's ``undo.SessionUndoSync`` part. After the server
forgot a remote session (``SessionExpired``), the segments the panel wrote are given to the new one.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from medvlsam2.api import SessionAPI
from medvlsam2.errors import Cancelled, InputError
from medvlsam2.protocol import SessionExpired

from . import outcome, report_node, segments
from .panel_state import PanelState
from .signals import Signal
from .undo import SegmentationUndo, SessionUndoSync, Track
from .worker import Job, ModelWorker


class Controller(SessionUndoSync):
    """Glue between the panel state, one session, the worker and the segmentation node."""

    def __init__(self, worker: ModelWorker, state: PanelState | None = None) -> None:
        self.worker = worker
        self.state = state or PanelState()
        self.session: SessionAPI | None = None
        self.volume_node = None
        self.segmentation_node = None
        self.objects: dict[str, int] = {}  # segment id -> session object id
        self.undo_history: SegmentationUndo | None = None
        self.terminology_logic = None  # Slicer's terminology logic (names, codes, colours of text-prompt segments)
        self._tracks: dict[str, Track] = {}  # segment id -> the states it went through under its session object
        self._changed: set[str] = set()  # segments modified since the last sync
        self._writing = False  # our own write: its modification events are not an undo
        self._observed: list[tuple] = []  # (VTK object, observer tag)
        # schedules ``sync`` after a segmentation event (the module: on the Qt event loop, after the burst of
        # events an undo makes); without it, ``sync`` runs when this module's undo history reports a change
        self.defer: Callable[[Callable[[], None]], None] | None = None
        self._sync_pending = False
        self.answer_chunk = Signal()   # (text) streamed answer / report pieces
        self.answer_done = Signal()    # (job name, full text)
        self.segments_written = Signal()  # (list of segment ids)
        self.message = Signal()        # (text) informative status lines
        self._text_queue: list[str] = []
        self._force = False  # the queued text lines are delivered even when implausible ("X (unverified)")
        self.doubts: list[str] = []  # this session's text-result warnings and withheld targets, for the report
        self.model_info = None  # the served model's ``description`` and ``provenance`` (the report's "Made by")
        self.current_segment: str | None = None  # the segment selected in the panel

    # ----- setup (main thread)
    def attach(self, session, volume_node, segmentation_node, undo_history: SegmentationUndo | None = None) -> None:
        """Use ``session`` (opened on ``volume_node``'s voxels) and write into ``segmentation_node``.

        The previous session is closed (on the worker thread, after any running call), so switching volumes
        leaves one live session on the server. ``undo_history`` records one undo step per write.
        """
        previous = self.session
        if previous is not None and previous is not session:
            self.close_session(previous)
        self.session, self.volume_node, self.segmentation_node = session, volume_node, segmentation_node
        self.undo_history = undo_history
        self.objects.clear()
        self._tracks.clear()
        self._changed.clear()
        self._text_queue.clear()
        self.doubts.clear()
        self._observe(segmentation_node, undo_history)
        if segmentation_node is not None and volume_node is not None:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        self.state.update(session_open=session is not None, volume_selected=volume_node is not None,
                          segmentation_selected=segmentation_node is not None)
        self._update_selection()  # a new session knows none of the segments yet

    def close_session(self, session, wait: bool = False) -> None:
        """Close ``session`` on the worker thread (a server call); errors are ignored (the server may be gone)."""
        close = getattr(session, "close", None)
        if close is None:
            return

        def run(job: Job) -> None:
            close()
        if self.worker.alive:
            self.worker.submit(Job("close", run, on_error=lambda exc: None))
            if wait:
                self.worker.wait_all(timeout=30)
        else:
            try:
                close()
            except Exception:
                pass

    def select_segment(self, segment_id: str | None) -> None:
        self.current_segment = segment_id or None
        self._update_selection()

    def _update_selection(self) -> None:
        self.state.update(segment_selected=self.current_segment is not None,
                          segment_has_object=self.current_segment in self.objects, can_undo=self.can_undo,
                          can_redo=self.can_redo)

    # ----- helpers
    def _start(self, name: str, run: Callable[[Job], Any], on_done: Callable[[Any], None],
               on_partial: Callable[[Any], None] | None = None) -> Job | None:
        if self.session is None:
            raise InputError("no model session: start the server (or connect) and select a CT volume first")
        if not self.state.begin(name):
            self.message.emit(f"busy with {self.state.busy_job}; wait or press Cancel")
            return None
        if self._changed:
            self.sync()  # a hand edit not synced yet reaches the session before this call
        job = Job(name, run, on_done=on_done, on_error=self._failed, on_partial=on_partial,
                  on_progress=self.state.set_progress)
        return self.worker.submit(job)

    def _failed(self, exc: BaseException) -> None:
        self._text_queue.clear()
        if isinstance(exc, Cancelled):
            self.state.finish()
            self.message.emit("Cancelled; the segmentation is unchanged")
        elif isinstance(exc, SessionExpired):
            self.state.finish()
            self._reopened(exc)
        else:
            self.state.finish(error=str(exc) or type(exc).__name__)

    def _reopened(self, exc: BaseException) -> bool:
        """After ``SessionExpired`` (the client has opened a new, empty session): give the new session each
        segment this panel wrote, as mask prompts on the slices it covers, so the next prompt refines what the
        user sees. The segmentation is not touched. Returns whether ``exc`` was that."""
        if not isinstance(exc, SessionExpired):
            return False
        self._text_queue.clear()
        node, session = self.segmentation_node, self.session
        kept = {sid: (self._segment_name(sid), segments.segment_array(node, sid, self.volume_node),
                      segments.content_key(node, sid))
                for sid in self.objects if node is not None and node.GetSegmentation().GetSegment(sid) is not None}
        self.objects.clear()
        self._tracks.clear()  # the old session's steps are gone; Slicer's older states are now outside edits
        self._changed.clear()
        seed = hasattr(session, "add_mask")

        def run(job: Job) -> dict[str, int]:
            objects = {}
            for sid, (name, mask, _) in kept.items():
                ks = segments.covered_slices(mask)
                if not ks or not seed:
                    continue  # an empty segment gets its object with its next prompt
                objects[sid] = obj = session.add_object(name)
                for k in ks:
                    session.add_mask(obj, k, mask[k])
            return objects

        began = self.state.begin("re-open", cancellable=False)  # False: a background sync's call expired mid-job

        def done(objects: dict[str, int]) -> None:
            if began:
                self.state.finish()
            if self.session is not session or self.segmentation_node is not node:
                return  # another volume or segmentation was chosen meanwhile: its own session and objects
            for sid, obj in objects.items():
                if node.GetSegmentation().GetSegment(sid) is not None:
                    self.objects[sid] = obj
                    self._tracks[sid] = Track.starting_at(obj, kept[sid][2], seeded=True)  # what the session got
                    if segments.content_key(node, sid) != kept[sid][2]:
                        self._changed.add(sid)  # edited while the objects were re-created: send that edit too
            if self._changed:
                self.sync()
            self._update_selection()
            self.message.emit("Session expired, re-opened, your segments are kept"
                              + ("" if seed else " (this server takes no mask prompts: the next prompt starts afresh)"))

        def failed(err: BaseException) -> None:
            error = f"the model session expired and could not be re-created ({err}); select the volume again"
            self.state.finish(error=error) if began else self.state.set_error(error)
        self.worker.submit(Job("re-open", run, on_done=done, on_error=failed))
        self._update_selection()
        return True

    def _object_for(self, segment_id: str, name: str) -> int:
        """Session object for a segment, created on first use (runs on the worker thread)."""
        if segment_id not in self.objects:
            self.objects[segment_id] = self.session.add_object(name)
        return self.objects[segment_id]

    def _segment_name(self, segment_id: str) -> str:
        return self.segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()

    def _write(self, segment_id: str, result) -> None:
        """Write ``result`` into the segment as one undo step (none when nothing changed) and track its state."""
        if self._changed:
            self.sync(absorb=False)  # an outside edit not seen yet is a state of its own, before this write
        node, obj = self.segmentation_node, result.object_id
        track = self._tracks.get(segment_id)
        before = track.keys[track.pos] if track is not None and track.obj == obj else segments.content_key(node, segment_id)
        if track is None or track.obj != obj:
            track = self._tracks[segment_id] = Track.starting_at(obj, before)
        save = self.undo_history.save if self.undo_history is not None else None
        self._writing = True
        try:
            changed = segments.write_result(node, segment_id, self.volume_node, result, save)
        finally:
            self._writing = False
        after = before
        if changed:
            grid = segments.on_volume_grid(node, segment_id, self.volume_node)
            after = segments.content_key(node, segment_id, before, result.bbox[:2] if grid else None)
        track.wrote(before, after)

    def _written(self, segment_id: str) -> Callable[[Any], None]:
        def done(result) -> None:
            try:
                self._write(segment_id, result)
            except Exception as exc:
                self.state.finish(error=str(exc))
                return
            self.state.finish()
            self._update_selection()
            self.segments_written.emit([segment_id])
            line = outcome.status_line([result])
            if line:
                self.message.emit(line)  # a click outside its mask, a box too small...
        return done

    # ----- interactive prompts
    def add_points(self, segment_id: str, points_ijk, labels) -> Job | None:
        """Positive/negative clicks (voxel (i, j, k), labels +1/-1) on one segment."""
        segments._check_segment(self.segmentation_node, segment_id)
        points, labels = np.asarray(points_ijk, dtype=np.int64).reshape(-1, 3), np.asarray(labels, dtype=np.int64)
        name = self._segment_name(segment_id)
        return self._start("points", lambda job: self.session.add_points(self._object_for(segment_id, name), points, labels),
                           self._written(segment_id))

    def add_box(self, segment_id: str, box) -> Job | None:
        """A 3D box (i0, j0, k0, i1, j1, k1) inclusive, e.g. from an ROI."""
        segments._check_segment(self.segmentation_node, segment_id)
        name = self._segment_name(segment_id)
        box = tuple(int(v) for v in box)
        return self._start("box", lambda job: self.session.add_box(self._object_for(segment_id, name), box),
                           self._written(segment_id))

    def add_mask(self, segment_id: str, k: int, mask2d) -> Job | None:
        """A lasso: a filled 2D mask [j, i] on axial slice ``k``, given to SAM2 as a mask prompt."""
        segments._check_segment(self.segmentation_node, segment_id)
        if not hasattr(self.session, "add_mask"):
            raise InputError("this model server does not take lasso (mask) prompts; update MedVLSAM2 on the server")
        mask2d = np.asarray(mask2d, dtype=np.uint8)
        if not mask2d.any():
            raise InputError("the lasso encloses no voxel; draw a larger closed curve")
        name = self._segment_name(segment_id)
        return self._start("lasso", lambda job: self.session.add_mask(self._object_for(segment_id, name), int(k), mask2d),
                           self._written(segment_id))

    def propagate(self, segment_id: str, k_range: tuple[int, int] | None = None, direction: str = "both") -> Job | None:
        obj = self._known(segment_id)
        return self._start("propagate", lambda job: self.session.propagate(obj, k_range, direction, cancel=job.cancel,
                                                                           progress=job.progress),
                           self._written(segment_id))

    def reset(self, segment_id: str) -> Job | None:
        obj = self._known(segment_id)
        return self._start("reset", lambda job: self.session.reset(obj), self._written(segment_id))

    def _known(self, segment_id: str) -> int:
        if segment_id not in self.objects:
            raise InputError("this segment has no model prompts yet; place a point or a box first")
        return self.objects[segment_id]

    def cancel(self) -> None:
        """Stop the running call at its next slice/token; nothing is written for it."""
        self._text_queue.clear()
        self.worker.cancel_current()

    # ----- text prompts: one job per line, each line its own segment(s)
    def segment_text(self, text: str, force: bool = False) -> Job | None:
        """One job per line. ``force`` ("Deliver anyway (unverified)") delivers a result the engine's plausibility
        checks would withhold, named "X (unverified)" with the reason in its warnings."""
        lines = segments.prompt_lines(text)
        if not lines:
            raise InputError("type a structure to segment, one per line (e.g. 'liver')")
        if self.segmentation_node is None:
            raise InputError("select or create a segmentation first")
        job = self._text_job(lines[0], bool(force))
        if job is not None:  # callbacks run on this thread later, so the queue is set in time
            self._text_queue, self._force = lines[1:], bool(force)
        return job

    def _text_job(self, prompt: str, force: bool) -> Job | None:
        return self._start("text", lambda job: self.session.segment_text(prompt, cancel=job.cancel, progress=job.progress,
                                                                         force=force),
                           lambda results: self._text_done(prompt, results))

    def _text_done(self, prompt: str, text) -> None:
        ids, results = [], text.found
        try:
            for result in results:
                phrase = result.name if len(results) > 1 and result.name else prompt
                phrase = phrase.removesuffix(segments.doubt_suffix(phrase)).strip()  # the terminology of "X", not "X (unverified)"
                segment_id = segments.add_prompt_segment(
                    self.segmentation_node, segments.segment_name_for(prompt, result.name, len(results)), phrase,
                    self.terminology_logic)
                self.objects[segment_id] = result.object_id
                self._write(segment_id, result)
                ids.append(segment_id)
        except Exception as exc:
            self._text_queue.clear()
            self.state.finish(error=str(exc))
            return
        self.doubts = list(dict.fromkeys(self.doubts + outcome.warnings_of(results) + outcome.not_delivered(text.not_found)))
        line = outcome.status_line(results, text.not_found)
        if line:
            self.message.emit(line)
        self.state.finish()
        self.segments_written.emit(ids)
        if self._text_queue:
            self._text_job(self._text_queue.pop(0), self._force)

    # ----- language
    def ask(self, question: str, context: dict | None = None) -> Job | None:
        if not question.strip():
            raise InputError("type a question first")
        return self._stream("ask", lambda job: self.session.ask(question, context, cancel=job.cancel), lambda text: None)

    def report(self) -> Job | None:
        """Stream the model's report; the report node then holds the one report writer's draft of it
        (``medvlsam2.report.writer.draft_report``): what model made it, every doubt that fired (out-of-domain CT,
        targets withheld, unverified results), the text, and measurements of the panel's model segments. The
        segments are read here (main thread); the draft is written on the worker thread (seconds on a large CT)."""
        draft = self.report_drafter() if self.session is not None else None

        def done(text: str) -> None:
            node = report_node.report_text_node(self.volume_node.GetScene())
            report_node.set_report_text(node, text)
            self.state.update(report_text=text)
        return self._stream("report", lambda job: self.session.report(cancel=job.cancel), done, draft)

    def report_drafter(self) -> Callable[[str], str]:
        """``text -> draft`` as ``medvlsam2 report`` writes it, for this panel's volume, model, doubts and the
        non-empty segments it wrote, read now (main thread); the returned function reads no MRML."""
        from medvlsam2.report.writer import draft_report

        from .geometry import volume_from_node

        volume = volume_from_node(self.volume_node)
        node = self.segmentation_node
        masks = {}
        for sid in self.objects:
            if node is not None and node.GetSegmentation().GetSegment(sid) is not None:
                mask = segments.segment_array(node, sid, self.volume_node) > 0
                if mask.any():
                    masks[self._segment_name(sid)] = mask
        model, warnings = self.model_info, list(self.doubts)
        return lambda text: draft_report(text, volume, masks, model=model, warnings=warnings)

    def _stream(self, name: str, make_iter: Callable[[Job], Any], on_text: Callable[[str], None],
                finish: Callable[[str], str] | None = None) -> Job | None:
        """Stream ``make_iter``'s pieces; ``finish`` turns the whole text into what is delivered (worker thread)."""
        def run(job: Job) -> str:
            pieces = []
            for piece in make_iter(job):
                job.cancel.raise_if_cancelled()  # also stops remote streams between tokens
                pieces.append(piece)
                job.emit(piece)
            return finish("".join(pieces)) if finish else "".join(pieces)

        def done(text: str) -> None:
            on_text(text)
            self.state.finish()
            self.answer_done.emit(name, text)
        return self._start(name, run, done, on_partial=self.answer_chunk.emit)
