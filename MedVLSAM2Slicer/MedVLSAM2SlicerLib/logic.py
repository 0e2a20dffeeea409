"""The module's logic without Slicer's base class: worker thread, controller, server connection and the MRML
nodes the panel works with (segmentation, prompt markups), so the widget only wires widgets to it.

``MedVLSAM2SlicerLogic`` in the module file adds ``ScriptedLoadableModuleLogic`` and the parameter node
on top; everything here can be used from scripts and is tested with pytest on slicer-core.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Callable

from medvlsam2.errors import InputError

from . import markups, model_list, segments, undo
from .connection import NAMED_CONFIGS, Connection, ServerInfo, ServerOptions, demo_weights, installed
from .controller import Controller
from .model_list import Choice
from .worker import Job, ModelWorker

PROMPT_ATTRIBUTE = "MedVLSAM2.prompt"
# prompt kind -> (markups class, name, colour)
PROMPT_NODES = {
    "point": ("vtkMRMLMarkupsFiducialNode", "MedVLSAM2 point", (0.1, 0.8, 0.1)),
    "box": ("vtkMRMLMarkupsROINode", "MedVLSAM2 box", (1.0, 0.8, 0.0)),
    "lasso": ("vtkMRMLMarkupsClosedCurveNode", "MedVLSAM2 lasso", (0.2, 0.6, 1.0)),
    "scribble": ("vtkMRMLMarkupsCurveNode", "MedVLSAM2 scribble", (0.9, 0.3, 0.9)),
}
MiB = 1 << 20


class MedVLSAM2Logic:
    """Owns the worker thread, the controller and the server connection (usable without the widget)."""

    def __init__(self) -> None:
        if getattr(self, "controller", None) is not None:
            return  # Slicer's ScriptedLoadableModuleLogic calls super().__init__() too: one worker only
        self.controller = Controller(ModelWorker())
        self.connection = Connection()
        try:
            from .terminology import slicer_logic

            self.controller.terminology_logic = slicer_logic()
        except ImportError:  # no slicer at all (scripts, plain pytest)
            pass
        try:
            import qt

            # one sync per burst of segmentation events (an undo modifies each segment), after the burst
            self.controller.defer = lambda fn: qt.QTimer.singleShot(0, fn)
        except ImportError:  # slicer-core without Qt: sync right away
            pass
        self.server_info: ServerInfo | None = None

    # ----- models ---------------------------------------------------------------------------------
    @staticmethod
    def model_choices() -> list[Choice]:
        """(value, label, details) of the model list (``model_list.choices``)."""
        return model_list.choices()

    @staticmethod
    def weights_ready(name: str) -> bool:
        """True when ``name`` needs no download (demo bundle, a named config, a file or folder, an installed entry)."""
        from pathlib import Path

        if name == "demo":
            return demo_weights() is not None
        if name in NAMED_CONFIGS or Path(name).expanduser().exists():
            return True
        try:
            return installed(name)
        except Exception as exc:
            logging.warning("MedVLSAM2: cannot read the weights manifest: %s", exc)
            return False

    def download_weights(self, name: str, on_done: Callable[[], None] | None = None) -> Job | None:
        """Download manifest weights ``name`` on the worker thread (progress in MiB, Cancel keeps the partial file)."""
        from medvlsam2 import weights

        state = self.controller.state
        if not state.begin("download"):
            state.set_error(f"busy with {state.busy_job}; wait or press Cancel")
            return None

        def run(job: Job):
            def progress(done: int, total: int | None) -> None:
                job.cancel.raise_if_cancelled()
                if total:
                    job.progress(done // MiB, max(1, total // MiB))
            return weights.download(name, progress=progress, cancel=job.cancel)

        def done(path) -> None:
            state.finish()
            if on_done:
                on_done()
        return self.controller.worker.submit(Job("download", run, on_done=done, on_error=self.controller._failed,
                                                 on_progress=state.set_progress))

    @staticmethod
    def import_weights(name: str, path: str):
        """Offline sites: validate a weights file for manifest entry ``name`` and install it into the cache.

        ``weights.import_file`` loads the file into the entry's architecture first, so a wrong or corrupt
        file is refused with the mismatch named and nothing is installed.
        """
        from medvlsam2 import weights

        if name not in weights.load_manifest():
            raise InputError(f"{name!r} is not a weights entry; choose one of {', '.join(weights.load_manifest())}")
        return weights.import_file(name, path)

    # ----- server ---------------------------------------------------------------------------------
    def start(self, model: str, device: str, remoteUrl: str, token: str, python: str,
              on_ready: Callable[[], None] | None = None) -> None:
        """Start the local server (or connect to ``remoteUrl``) on the worker thread."""
        state = self.controller.state

        def run(job):
            if remoteUrl:
                self.connection.connect_remote(remoteUrl, token)
            else:
                self.connection.start_local(ServerOptions(model=model, device=device, python=python))
            return self.connection.device_info()

        def done(info: ServerInfo):
            self.server_info = info
            self.controller.model_info = SimpleNamespace(description=info.description or info.model,
                                                         provenance=info.provenance or "unknown")
            state.update(connection="connected")
            state.set_device(info.device, info.memory_gb, info.capabilities)
            if on_ready:
                on_ready()

        def failed(exc):
            state.update(connection="error")
            state.set_error(f"{exc} {self.connection.last_log_lines(5)}".strip())

        self.controller.worker.submit(Job("connect", run, on_done=done, on_error=failed))

    def open_session(self, volumeNode, segmentationNode) -> None:
        """Upload the volume (worker thread) and attach the session to the segmentation (main thread).

        The previous session is closed; a CT unlike a phantom-trained model's data is warned about once.
        """
        from .geometry import volume_from_node

        volume = volume_from_node(volumeNode)  # read MRML here, on the main thread
        state = self.controller.state
        if not state.begin("upload", cancellable=False):
            state.set_error(f"busy with {state.busy_job}; open the volume again when it has finished")
            return

        def done(session):
            state.finish()
            self.controller.attach(session, volumeNode, segmentationNode, self.undo_history(segmentationNode))
            state.update(warning=self.domain_warning(volume))

        self.controller.worker.submit(Job("upload", lambda job: self.connection.open_session(volume),
                                          on_done=done, on_error=lambda exc: state.finish(error=str(exc))))

    def domain_warning(self, volume) -> str:
        """The engine's real-CT warning for the served model (from its provenance), or ""."""
        if self.server_info is None:
            return ""
        from medvlsam2.domain import domain_warning

        return domain_warning(SimpleNamespace(provenance=self.server_info.provenance), volume) or ""

    def use_session(self, session, volumeNode, segmentationNode) -> None:
        """Use an in-process session (self-test, scripting) instead of a server."""
        self.controller.attach(session, volumeNode, segmentationNode, self.undo_history(segmentationNode))
        self.controller.state.update(connection="connected", session_open=True)
        model = getattr(session, "model", None)  # a local Session's model says what it is
        if model is not None:
            self.controller.model_info = model

    def stop(self) -> None:
        """Cancel the running job, close the session and stop the local server (a remote one keeps running)."""
        self.controller.cancel()
        self.controller.attach(None, self.controller.volume_node, self.controller.segmentation_node)
        self.controller.worker.wait_all(timeout=30)  # the session's close() runs before the server stops
        self.connection.stop()
        self.server_info = None
        self.controller.model_info = None
        self.controller.state.update(connection="disconnected")

    def shutdown(self) -> None:
        """Module closing: cancel, close the session, end the worker thread and stop the local server."""
        self.controller.cancel()
        if self.controller.session is not None:
            self.controller.attach(None, self.controller.volume_node, self.controller.segmentation_node)
            try:
                self.controller.worker.wait_all(timeout=30)
            except TimeoutError:
                logging.warning("MedVLSAM2: the model session did not close within 30 s")
        self.controller.worker.stop()
        self.connection.stop()

    # ----- MRML the panel works with --------------------------------------------------------------
    @staticmethod
    def undo_history(segmentationNode) -> undo.SegmentationUndo | None:
        if segmentationNode is None:
            return None
        return undo.SegmentationUndo(segmentationNode, undo.new_editor_logic(segmentationNode.GetScene(), segmentationNode))

    @staticmethod
    def ensure_segmentation(scene, volumeNode, segmentationNode=None) -> tuple[object, str]:
        """The segmentation to write into (created for ``volumeNode`` when None) and a segment id in it."""
        if volumeNode is None:
            raise InputError("select a CT volume first")
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volumeNode.GetName()} MedVLSAM2")
            segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetNumberOfSegments() == 0:
            return segmentationNode, segmentation.AddEmptySegment("", "Segment 1")
        return segmentationNode, segmentation.GetNthSegmentID(0)

    @staticmethod
    def next_segment(segmentationNode, current: str) -> str:
        """The segment after ``current``, or a new empty one after the last."""
        seg = segmentationNode.GetSegmentation()
        ids = [seg.GetNthSegmentID(n) for n in range(seg.GetNumberOfSegments())]
        if current in ids and ids.index(current) + 1 < len(ids):
            return ids[ids.index(current) + 1]
        return seg.AddEmptySegment("", f"Segment {len(ids) + 1}")

    @staticmethod
    def prompt_node(scene, kind: str):
        """The scene's markups node for prompt ``kind`` (point, box, lasso, scribble), created on first use."""
        class_name, name, color = PROMPT_NODES[kind]
        for n in range(scene.GetNumberOfNodesByClass(class_name)):
            node = scene.GetNthNodeByClass(n, class_name)
            if node.GetAttribute(PROMPT_ATTRIBUTE) == kind:
                return node
        node = scene.AddNewNodeByClass(class_name, name)
        node.SetAttribute(PROMPT_ATTRIBUTE, kind)
        node.SetSaveWithScene(False)  # prompts live in the session, not in the scene file
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(*color)
        if kind in ("lasso", "scribble"):
            node.SetCurveTypeToLinear()  # what was drawn, not a spline through it
        return node

    def submit_drawn_prompt(self, kind: str, node, segment_id: str, negative: bool) -> Job | None:
        """Send a placed point, lasso or scribble to the model and clear it from the view. Boxes go through
        ``markups.RoiBoxTracker`` (they run when complete and again when adjusted)."""
        c = self.controller
        volume = c.volume_node
        if not segment_id:
            raise InputError("select or add a segment first")
        try:
            if kind == "point":
                point = markups.points_to_voxels(node, volume)[-1:]
                return c.add_points(segment_id, point, [-1 if negative else 1])
            if kind == "scribble":
                points = markups.scribble_to_points(node, volume)
                return c.add_points(segment_id, points, [-1 if negative else 1] * len(points))
            if kind == "lasso" and markups.lasso_axis(node, volume) != markups.AXIAL:
                points = markups.lasso_to_points(node, volume)  # one click per stretch inside it, per axial slice
                return c.add_points(segment_id, points, [-1 if negative else 1] * len(points))
            if kind == "lasso":
                k, mask = markups.lasso_to_mask(node, volume)
                if negative:  # remove the enclosed voxels from what the segment has on that slice
                    mask = segments.segment_array(c.segmentation_node, segment_id, volume)[k] & (1 - mask)
                return c.add_mask(segment_id, k, mask)
            raise InputError(f"unknown prompt kind {kind!r}")
        finally:
            node.RemoveAllControlPoints()
