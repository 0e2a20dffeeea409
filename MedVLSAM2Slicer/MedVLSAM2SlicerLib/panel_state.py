"""Qt-free state of the panel: what is enabled when, busy / connected / error states, status text.

The widget mirrors ``enabled()`` onto the buttons whenever ``changed`` fires; tests drive it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from .signals import Signal

CONNECTION_STATES = ("disconnected", "starting", "connected", "error")
STREAMING_JOBS = ("ask", "report")
# capability names of medvlsam2.capabilities (kept as strings: this module imports nothing of the engine)
INTERACTIVE, TEXT_SEGMENTATION, LANGUAGE = "interactive", "text_segmentation", "language"
CAPABILITY_HINTS = {
    INTERACTIVE: "The loaded model cannot segment from points, boxes, lassos or scribbles; load the demo bundle, "
                 "a MedSAM2/SAM2.1 checkpoint or a recipe with a segmenter.",
    TEXT_SEGMENTATION: "The loaded model cannot segment from text; load a released text segmenter (voxtell, "
                       "segvol or m3d-lamed-phi3-4b), a recipe with a text segmenter, or a trained MedVL-SAM2 "
                       "bundle (the demo bundle).",
    LANGUAGE: "The loaded model cannot answer questions or write reports; load the demo bundle, a Med3DVLM folder "
              "(med3dvlm-qwen2.5-7b), M3D-LaMed (m3d-lamed-phi3-4b) or a recipe with a language part.",
}

# Every control whose enabled state the panel computes (objectNames in the .ui file).
CONTROLS = (
    "startServerButton", "stopServerButton", "pointButton", "boxButton", "lassoButton", "scribbleButton",
    "negativeButton", "runTextButton", "propagateButton", "undoButton", "redoButton", "resetButton", "nextSegmentButton",
    "cancelButton",
    "askButton", "stopAnswerButton", "reportButton", "copyReportButton", "saveReportButton",
)

NEEDS_CAPABILITY = {
    **{c: INTERACTIVE for c in ("pointButton", "boxButton", "lassoButton", "scribbleButton", "negativeButton",
                                "propagateButton", "resetButton")},
    "runTextButton": TEXT_SEGMENTATION,
    **{c: LANGUAGE for c in ("askButton", "reportButton")},
}


@dataclass
class DeviceStatus:
    name: str = ""
    memory_gb: float | None = None

    @property
    def on_cpu(self) -> bool:
        return self.name.lower().startswith("cpu")


class PanelState:
    """Inputs of the enable rules plus the busy/error state; every setter emits ``changed``."""

    def __init__(self) -> None:
        self.changed = Signal()
        self.volume_selected = False
        self.segmentation_selected = False
        self.segment_selected = False
        self.segment_has_object = False  # the selected segment is known to the session
        self.can_undo = False  # the segmentation history holds a step this panel wrote
        self.can_redo = False  # ... and one undone that can be taken again
        self.text_prompt = ""
        self.question = ""
        self.report_text = ""
        self.connection = "disconnected"
        self.session_open = False
        self.busy_job: str | None = None
        self.cancellable = False
        self.error = ""
        self.device = DeviceStatus()
        self.capabilities: frozenset[str] | None = None  # what the served model can do; None: not reported
        self.warning = ""  # shown once per volume (e.g. a CT unlike the model's training data)
        self.progress: tuple[int, int] | None = None

    # ----- inputs
    def update(self, **values) -> None:
        """Set several inputs at once (names are attributes of this class) and emit ``changed`` once."""
        for name, value in values.items():
            if name.startswith("_") or not hasattr(self, name) or name == "changed":
                raise AttributeError(f"PanelState has no input {name!r}")
            setattr(self, name, value)
        if "connection" in values and self.connection not in CONNECTION_STATES:
            raise ValueError(f"connection must be one of {CONNECTION_STATES}, got {self.connection!r}")
        if self.connection != "connected":
            self.session_open = False
            self.capabilities = None
        self.changed.emit()

    def set_device(self, name: str, memory_gb: float | None = None, capabilities=None) -> None:
        self.device = DeviceStatus(name, memory_gb)
        self.capabilities = frozenset(capabilities) if capabilities is not None else None
        self.changed.emit()

    def set_error(self, message: str) -> None:
        """Show an error; it stays until the next successful action."""
        self.error = message
        self.changed.emit()

    # ----- busy handling: one model call at a time
    @property
    def busy(self) -> bool:
        return self.busy_job is not None

    def begin(self, job: str, cancellable: bool = True) -> bool:
        """Mark ``job`` as running; False (and nothing changes) when another job is still running."""
        if self.busy:
            return False
        self.busy_job, self.cancellable, self.progress, self.error = job, cancellable, None, ""
        self.changed.emit()
        return True

    def set_progress(self, done: int, total: int) -> None:
        if self.busy:
            self.progress = (done, total)
            self.changed.emit()

    def finish(self, error: str = "") -> None:
        """End the running job; ``error`` (if any) is shown."""
        self.busy_job, self.cancellable, self.progress, self.error = None, False, None, error
        self.changed.emit()

    # ----- rules
    @property
    def ready(self) -> bool:
        """A session on the selected volume is open."""
        return self.connection == "connected" and self.session_open and self.volume_selected

    def enabled(self, control: str) -> bool:
        """Whether ``control`` (an objectName in ``CONTROLS``) is enabled now."""
        idle = not self.busy
        prompt_ready = self.ready and idle and self.segmentation_selected and self.segment_selected
        rules = {
            "startServerButton": idle and self.connection in ("disconnected", "error"),
            "stopServerButton": self.connection in ("starting", "connected") and idle,
            "pointButton": prompt_ready,
            "boxButton": prompt_ready,
            "lassoButton": prompt_ready,
            "scribbleButton": prompt_ready,
            "negativeButton": prompt_ready,
            "runTextButton": self.ready and idle and self.segmentation_selected and bool(self.text_prompt.strip()),
            "propagateButton": prompt_ready and self.segment_has_object,
            "undoButton": self.ready and idle and self.can_undo,
            "redoButton": self.ready and idle and self.can_redo,
            "resetButton": prompt_ready and self.segment_has_object,
            "nextSegmentButton": idle and self.segmentation_selected,
            "cancelButton": self.busy and self.cancellable and self.busy_job not in STREAMING_JOBS,
            "askButton": self.ready and idle and bool(self.question.strip()),
            "stopAnswerButton": self.busy and self.cancellable and self.busy_job in STREAMING_JOBS,
            "reportButton": self.ready and idle,
            "copyReportButton": bool(self.report_text.strip()),
            "saveReportButton": bool(self.report_text.strip()),
        }
        if control not in rules:
            raise KeyError(f"unknown control {control!r}; known: {', '.join(CONTROLS)}")
        return rules[control] and not self.missing_capability(control)

    def missing_capability(self, control: str) -> str:
        """Why the loaded model cannot serve ``control`` (its tooltip), or "" when it can."""
        needed = NEEDS_CAPABILITY.get(control)
        if needed is None or self.capabilities is None or needed in self.capabilities:
            return ""
        return CAPABILITY_HINTS[needed]

    def enabled_map(self) -> dict[str, bool]:
        return {c: self.enabled(c) for c in CONTROLS}

    def status_text(self) -> str:
        """One line for the status label: error first, then the running job, then the connection."""
        if self.error:
            return f"Error: {self.error}"
        if self.busy:
            if self.progress:
                done, total = self.progress
                return f"Running {self.busy_job}: {done}/{total}"
            return f"Running {self.busy_job}..."
        if self.connection == "connected":
            text = f"Connected ({self.device.name or 'unknown device'}"
            if self.device.memory_gb is not None:
                text += f", {self.device.memory_gb:.1f} GB"
            return text + ")"
        return {"disconnected": "Not connected: start the local server or set a remote URL",
                "starting": "Starting the model server...",
                "error": "Server stopped"}[self.connection]

    def cpu_warning(self) -> str:
        """Warning shown when the model runs on the CPU (slow)."""
        if self.connection == "connected" and self.device.on_cpu:
            return "Running on CPU: each click and propagation will be slow. Use a CUDA or Apple GPU if you can."
        return ""
