"""The module panel (Slicer-only: needs qt and slicer). The module file's Widget delegates to ``MedVLSAM2Panel``.

The panel's rules live in the Qt-free modules next to this one (PanelState, Controller, the logic); this
file only binds the parameter node to the widgets (``connectGui``), copies state onto buttons and turns
clicks and placed markups into logic calls.
"""

from __future__ import annotations

import os

import ctk  # noqa: F401  (registers the ctk widgets the .ui uses)
import qt
import slicer
from slicer.util import VTKObservationMixin

from .widget_language import ASK_CONTEXTS, LanguagePanel
from .widget_tools import TOOLS, DrawingTools

DELIVER_INTERVAL_MS = 50  # how often the main thread picks up worker results


class MedVLSAM2Panel(LanguagePanel, DrawingTools, VTKObservationMixin):
    """Panel: mirrors PanelState onto the buttons, turns clicks into logic calls.

    ``host`` is the module's ScriptedLoadableModuleWidget (layout, resourcePath, parent); ``logic`` is
    injected so scripts and tests can drive the same logic without a panel.
    """

    def __init__(self, host, logic) -> None:
        VTKObservationMixin.__init__(self)
        self.host = host
        self.parent = host.parent
        self.logic = logic
        self._parameterNode = None
        self._guiTag = None
        self._shortcuts = []
        self._timer = None
        self._boxTracker = None
        self._freehand = None  # the scribble tool: strokes painted with the mouse (freehand.FreehandStroke)
        self._activeTool = ""
        self._streamTarget = "transcript"  # where streamed text goes: the Q&A transcript or the report
        self._install = None  # a running PackageInstall

    # ----- lifecycle
    def setup(self) -> None:
        from . import settings as settings_lib

        uiWidget = slicer.util.loadUI(self.host.resourcePath("UI/MedVLSAM2Slicer.ui"))
        self.host.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.settings = settings_lib.Settings(qt.QSettings())
        self.state = self.logic.controller.state
        self.state.changed.connect(self._refresh)
        c = self.logic.controller
        c.answer_chunk.connect(self._onAnswerChunk)
        c.answer_done.connect(self._onAnswerDone)
        c.message.connect(lambda text: slicer.util.showStatusMessage(text, 5000))
        c.segments_written.connect(self._onSegmentsWritten)

        u = self.ui
        from .panel_state import CONTROLS

        self._tooltips = {name: getattr(u, name).toolTip for name in CONTROLS}
        u.askContextSelector.addItems(list(ASK_CONTEXTS))
        u.deviceSelector.addItems(["auto", "cuda", "mps", "cpu"])
        self._fillModels(self.settings.get("model"))
        u.deviceSelector.currentText = self.settings.get("device")
        u.remoteUrlEdit.text = self.settings.get("remoteUrl")
        self._fillServerModes()

        u.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onVolumeChanged)
        u.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onSegmentationChanged)
        u.segmentSelector.connect("currentSegmentChanged(QString)", self._onSegmentChanged)
        u.modelSelector.connect("activated(int)", self._onModelActivated)
        u.modelSelector.connect("currentIndexChanged(int)", self._showModelDetails)
        u.serverModeSelector.connect("currentIndexChanged(int)", lambda _: self._onServerModeChanged())
        u.startServerButton.connect("clicked()", self.onStart)
        u.stopServerButton.connect("clicked()", self.logic.stop)
        u.importWeightsButton.connect("clicked()", self.onImportWeights)
        for name, _ in TOOLS:
            getattr(u, name).connect("toggled(bool)", lambda on, name=name: self._onTool(name, on))
        u.textPromptEdit.connect("textChanged()", lambda: self.state.update(text_prompt=u.textPromptEdit.plainText))
        u.runTextButton.connect("clicked()", lambda: self._run(c.segment_text, u.textPromptEdit.plainText,
                                                                u.deliverUnverifiedCheckBox.checked))
        u.propagateButton.connect("clicked()", self.onPropagate)
        u.cancelButton.connect("clicked()", c.cancel)
        u.stopAnswerButton.connect("clicked()", c.cancel)
        u.undoButton.connect("clicked()", lambda: self._run(c.undo))
        u.redoButton.connect("clicked()", lambda: self._run(c.redo))
        u.resetButton.connect("clicked()", lambda: self._run(c.reset, self._segmentId()))
        u.nextSegmentButton.connect("clicked()", self.onNextSegment)
        u.questionEdit.connect("textChanged(QString)", lambda text: self.state.update(question=text))
        u.askButton.connect("clicked()", self.onAsk)
        u.reportButton.connect("clicked()", self.onReport)
        u.reportEdit.connect("textChanged()", self._onReportEdited)
        u.copyReportButton.connect("clicked()", lambda: qt.QApplication.clipboard().setText(u.reportEdit.plainText))
        u.saveReportButton.connect("clicked()", self.onSaveReport)

        self._timer = qt.QTimer()
        self._timer.setInterval(DELIVER_INTERVAL_MS)
        self._timer.connect("timeout()", c.worker.deliver)
        self._timer.start()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self._refresh()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self) -> None:
        self._removeShortcuts()
        self._stopTools()
        if self._parameterNode and self._guiTag is not None:
            self._parameterNode.disconnectGui(self._guiTag)
            self._guiTag = None

    def cleanup(self) -> None:
        self._removeShortcuts()
        self._stopTools()
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.shutdown()  # closes the session on the server, then stops the local server

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.controller.cancel()
        self._stopTools()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        if not node.inputVolume:
            node.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self.setParameterNode(node)

    def setParameterNode(self, node) -> None:
        """Bind ``node``'s fields to the widgets named by their SlicerParameterName (see the .ui)."""
        if self._parameterNode and self._guiTag is not None:
            self._parameterNode.disconnectGui(self._guiTag)
            self._guiTag = None
        self._parameterNode = node
        if node:
            self._guiTag = node.connectGui(self.ui)

    # ----- shortcuts: module-scoped (module panel and slice views), created on enter, deleted on exit
    def _shortcutHosts(self) -> list:
        hosts = [self.parent]
        layout = slicer.app.layoutManager()
        if layout is not None:
            hosts += [layout.sliceWidget(name).sliceView() for name in layout.sliceViewNames()]
        return hosts

    def _installShortcuts(self) -> None:
        from .shortcuts import SHORTCUTS, button_label, strip_shortcut

        self._removeShortcuts()
        for action, (keys, buttonName) in SHORTCUTS.items():
            button = getattr(self.ui, buttonName)
            for host in self._shortcutHosts():
                shortcut = qt.QShortcut(qt.QKeySequence(keys), host)
                shortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)
                shortcut.connect("activated()", button.click)
                self._shortcuts.append(shortcut)
            button.text = button_label(strip_shortcut(button.text), action)

    def _removeShortcuts(self) -> None:
        from .shortcuts import SHORTCUTS, strip_shortcut

        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []
        for _, buttonName in SHORTCUTS.values():
            button = getattr(self.ui, buttonName)
            button.text = strip_shortcut(button.text)

    # ----- state -> widgets
    def _refresh(self) -> None:
        for name, enabled in self.state.enabled_map().items():
            widget = getattr(self.ui, name)
            widget.enabled = enabled
            widget.toolTip = self.state.missing_capability(name) or self._tooltips[name]  # say why it is off
        self.ui.statusLabel.text = self.state.status_text()
        self.ui.cpuWarningLabel.text = "\n".join(t for t in (self.state.warning, self.state.cpu_warning()) if t)
        self.ui.progressBar.visible = self.state.busy
        if self.state.progress:
            done, total = self.state.progress
            self.ui.progressBar.maximum, self.ui.progressBar.value = total, done
        else:
            self.ui.progressBar.maximum = 0  # busy indicator

    def _run(self, action, *args) -> None:
        """Call a logic action and show input errors in the status line instead of a traceback."""
        from medvlsam2.errors import MedVLSAM2Error

        try:
            action(*args)
        except MedVLSAM2Error as exc:
            self.state.set_error(str(exc))

    # ----- inputs
    def _segmentId(self) -> str:
        return self.ui.segmentSelector.currentSegmentID() or ""

    def _onVolumeChanged(self, node) -> None:
        self.state.update(volume_selected=node is not None, session_open=False, warning="")
        if node is not None and node.GetImageData() is not None:
            lastSlice = node.GetImageData().GetDimensions()[2] - 1
            self.ui.rangeFromSpinBox.maximum = self.ui.rangeToSpinBox.maximum = lastSlice
            if self._parameterNode and self._parameterNode.lastSlice == 0:
                self._parameterNode.lastSlice = lastSlice
        if node is not None and self.logic.connection.connected:
            self._openSession()

    def _onSegmentationChanged(self, node) -> None:
        self.ui.segmentSelector.setCurrentNode(node)
        self.logic.controller.segmentation_node = node
        volume = self.ui.inputVolumeSelector.currentNode()
        if node is not None and volume is not None:
            node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        self.state.update(segmentation_selected=node is not None)
        if node is not None and volume is not None and self.logic.connection.connected:
            self._openSession()  # a new target: its own undo history and segment objects

    def _onSegmentChanged(self, segmentId) -> None:
        self.logic.controller.select_segment(segmentId)

    # ----- models, server, session
    def _fillModels(self, current: str) -> None:
        selector = self.ui.modelSelector
        selector.clear()
        for value, label, details in self.logic.model_choices():
            selector.addItem(label, value)
            selector.setItemData(selector.count - 1, details, qt.Qt.ToolTipRole)  # size, licence, GPU, serves
        if current and selector.findData(current) < 0:  # a file or folder chosen earlier
            from .model_list import spec_details

            selector.insertItem(selector.count - 1, os.path.basename(current.rstrip("/")) or current, current)
            selector.setItemData(selector.count - 2, spec_details(current), qt.Qt.ToolTipRole)
        index = selector.findData(current)
        selector.currentIndex = index if index >= 0 else 0
        self._showModelDetails()

    def _showModelDetails(self, *_) -> None:
        """The selector's own tooltip is the chosen entry's details (the list's entries have theirs)."""
        selector = self.ui.modelSelector
        selector.toolTip = selector.itemData(selector.currentIndex, qt.Qt.ToolTipRole) or "Model served by the local server"

    def _model(self) -> str:
        return self.ui.modelSelector.currentData or ""

    def _onModelActivated(self, index: int) -> None:
        from .model_list import OTHER

        if self.ui.modelSelector.itemData(index) != OTHER:
            return
        path = qt.QFileDialog.getOpenFileName(self.parent, "Model file (a folder: pick its config.json)", "",
                                              "Models (*.pt *.safetensors *.yaml *.yml config.json)")
        if path.endswith("config.json"):
            path = os.path.dirname(path)
        self._fillModels(path or self.settings.get("model"))

    def _fillServerModes(self) -> None:
        """Offer only the modes this Slicer's Python supports; say why another is not offered."""
        import sys

        from . import serving

        modes = serving.server_modes(tuple(sys.version_info), self.settings.get("pythonExecutable"))
        selector = self.ui.serverModeSelector
        selector.clear()
        for mode in modes:
            if mode.available:
                selector.addItem(mode.label, mode.name)
        saved = self.settings.get("serverMode") or (serving.REMOTE if self.settings.get("remoteUrl") else "")
        index = selector.findData(saved)
        selector.currentIndex = index if index >= 0 else 0
        self.ui.serverModeNote.text = "\n".join(m.reason for m in modes if not m.available)
        self._onServerModeChanged()

    def _serverMode(self) -> str:
        return self.ui.serverModeSelector.currentData or ""

    def _onServerModeChanged(self) -> None:
        from .serving import LOCAL, REMOTE

        remote = self._serverMode() == REMOTE
        for widget in (self.ui.remoteUrlEdit, self.ui.remoteTokenEdit):
            widget.enabled = remote
        self.ui.modelSelector.enabled = self.ui.deviceSelector.enabled = self._serverMode() == LOCAL

    def onStart(self) -> None:
        import sys

        from . import dependencies, serving

        model, mode = self._model(), self._serverMode()
        try:  # decided before anything is installed: an unsupported mode downloads nothing
            plan = serving.plan_start(mode, tuple(sys.version_info), self.ui.remoteUrlEdit.text,
                                      self.settings.get("pythonExecutable"))
        except ValueError as exc:
            self.state.set_error(str(exc))
            return
        remote = plan.remote_url
        self.settings.set("model", model)
        self.settings.set("device", self.ui.deviceSelector.currentText)
        self.settings.set("serverMode", plan.mode)
        self.settings.set("remoteUrl", remote or self.settings.get("remoteUrl"))
        needed = dependencies.missing(plan.needs)
        if needed:  # installed in the background; Start goes on when it has finished
            from .widget_install import PackageInstall

            self._install = PackageInstall(self.parent, needed, lambda: self._start(model, remote), self._installFailed)
            if not self._install.start():
                self._install = None
            return
        self._start(model, remote)

    def _installFailed(self, message: str) -> None:
        self._install = None
        self.state.set_error(message)
        if "cancelled" not in message:
            slicer.util.errorDisplay(f"Installing Python packages failed.\n\n{message}", windowTitle="MedVLSAM2")

    def _start(self, model: str, remote: str) -> None:
        self._install = None
        start = lambda: self.logic.start(model, self.ui.deviceSelector.currentText, remote, self.ui.remoteTokenEdit.text,
                                         self.settings.get("pythonExecutable"), on_ready=self._openSession)
        if not remote and not self.logic.weights_ready(model):
            if slicer.util.confirmOkCancelDisplay(
                    f"The model weights '{model}' are not on this computer. Download them now (progress and Cancel "
                    "below)? Use 'Import weights...' instead if this computer is offline.",
                    windowTitle="MedVLSAM2: download weights"):
                self.logic.download_weights(model, on_done=lambda: (self._fillModels(model), start()))
            return
        self.state.update(connection="starting")
        start()

    def onImportWeights(self) -> None:
        from medvlsam2 import weights

        names = list(weights.load_manifest())
        current = self._model()
        entry = qt.QInputDialog.getItem(self.parent, "Import weights", "Which weights is the file?", names,
                                        names.index(current) if current in names else 0, False)
        if not entry:
            return
        path = qt.QFileDialog.getOpenFileName(self.parent, f"Weights file for {entry}", "",
                                              "Weights (*.pt *.safetensors)")
        if not path:
            return
        try:
            with slicer.util.tryWithErrorDisplay(f"The file was not installed as {entry}.", waitCursor=True):
                final = self.logic.import_weights(entry, path)
        except Exception:
            return  # already shown to the user
        self._fillModels(entry)
        slicer.util.showStatusMessage(f"Weights installed: {os.path.basename(final)}", 5000)

    def _openSession(self) -> None:
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None:
            return
        segmentation, segmentId = self.logic.ensure_segmentation(slicer.mrmlScene, volume,
                                                                 self.ui.segmentationSelector.currentNode())
        if self.ui.segmentationSelector.currentNode() is not segmentation:
            self.ui.segmentationSelector.setCurrentNode(segmentation)
        if not self._segmentId():
            self.ui.segmentSelector.setCurrentSegmentID(segmentId)
        self._run(self.logic.open_session, volume, segmentation)

    # ----- prompts: one drawing tool at a time; points, lassos and scribbles are sent when placed/closed
    def onPropagate(self) -> None:
        p = self._parameterNode
        kRange = (p.firstSlice, p.lastSlice) if p.useSliceRange else None
        self._run(self.logic.controller.propagate, self._segmentId(), kRange, p.direction)

    def onNextSegment(self) -> None:
        segmentation = self.ui.segmentationSelector.currentNode()
        if segmentation is not None:
            self.ui.segmentSelector.setCurrentSegmentID(self.logic.next_segment(segmentation, self._segmentId()))

    def _onSegmentsWritten(self, segmentIds) -> None:
        if segmentIds:
            self.ui.segmentSelector.setCurrentSegmentID(segmentIds[-1])
