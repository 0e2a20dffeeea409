"""The module's logic without Slicer's base class: worker thread, controller and server connection.

``MedVLSAM2SlicerLogic`` in the module file adds ``ScriptedLoadableModuleLogic`` and the parameter node
on top; everything else lives here so it can be used from scripts and tested with pytest.
"""

from __future__ import annotations

import logging
from typing import Callable

from .connection import NAMED_CONFIGS, Connection, ServerOptions, demo_weights
from .controller import Controller
from .worker import Job, ModelWorker


class MedVLSAM2Logic:
    """Owns the worker thread, the controller and the server connection (usable without the widget)."""

    def __init__(self) -> None:
        if getattr(self, "controller", None) is not None:
            return  # Slicer's ScriptedLoadableModuleLogic calls super().__init__() too: one worker only
        self.controller = Controller(ModelWorker())
        self.connection = Connection()

    @staticmethod
    def model_names() -> list[str]:
        """Models the local server can load: the shipped demo weights (when present), then the random configs."""
        names = ["demo"] if demo_weights() is not None else []
        return names + list(NAMED_CONFIGS)

    @staticmethod
    def weights_ready(name: str) -> bool:
        """True when ``name`` needs no download (demo bundle present, a named config, or a cached manifest file)."""
        if name == "demo":
            return demo_weights() is not None
        if name in NAMED_CONFIGS:
            return True
        from medvlsam2 import weights

        try:
            return weights.weight_path(name).is_file()
        except Exception as exc:  # a broken manifest must not break the panel
            logging.warning("MedVLSAM2: cannot read the weights manifest: %s", exc)
            return False

    @staticmethod
    def download_weights(name: str, progress: Callable[[int, int | None], None], cancel):
        """Download manifest weights ``name`` into the cache (verified; resumes a partial file)."""
        from medvlsam2 import weights

        return weights.download(name, progress=progress, cancel=cancel)

    @staticmethod
    def import_weights(name: str, path: str):
        """Offline sites: verify and copy a manifest weights file obtained elsewhere into the cache."""
        from medvlsam2 import weights

        return weights.import_file(name, path)

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

        def done(info):
            state.update(connection="connected")
            state.set_device(*info)
            if on_ready:
                on_ready()

        def failed(exc):
            state.update(connection="error")
            state.set_error(f"{exc} {self.connection.last_log_lines(5)}".strip())

        self.controller.worker.submit(Job("connect", run, on_done=done, on_error=failed))

    def open_session(self, volumeNode, segmentationNode) -> None:
        """Upload the volume (worker thread) and attach the session to the segmentation (main thread)."""
        from .geometry import volume_from_node

        volume = volume_from_node(volumeNode)  # read MRML here, on the main thread
        state = self.controller.state
        if not state.begin("upload", cancellable=False):
            state.set_error(f"busy with {state.busy_job}; open the volume again when it has finished")
            return

        def done(session):
            state.finish()
            self.controller.attach(session, volumeNode, segmentationNode)

        self.controller.worker.submit(Job("upload", lambda job: self.connection.open_session(volume),
                                          on_done=done, on_error=lambda exc: state.finish(error=str(exc))))

    def use_session(self, session, volumeNode, segmentationNode) -> None:
        """Use an in-process session (self-test, scripting) instead of a server."""
        self.controller.attach(session, volumeNode, segmentationNode)
        self.controller.state.update(connection="connected", session_open=True)

    def stop(self) -> None:
        """Cancel the running job, detach the session and stop the local server (a remote one keeps running)."""
        self.controller.cancel()
        self.controller.attach(None, self.controller.volume_node, self.controller.segmentation_node)
        self.connection.stop()
        self.controller.state.update(connection="disconnected")

    def shutdown(self) -> None:
        """Module closing: cancel, end the worker thread and stop the local server."""
        self.controller.cancel()
        self.controller.worker.stop()
        self.connection.stop()
