"""The module panel (Slicer-only: needs qt and slicer). The module file's Widget delegates to ``MedVLSAM2Panel``.

The panel's rules live in the Qt-free modules next to this one (PanelState, Controller); this file only
copies state onto widgets and turns clicks into Controller calls.
"""

from __future__ import annotations

import os

import ctk  # noqa: F401  (registers the ctk widgets the .ui uses)
import qt
import slicer
from slicer.util import VTKObservationMixin

DELIVER_INTERVAL_MS = 50  # how often the main thread picks up worker results
DIRECTIONS = ("both", "forward", "backward")
ASK_CONTEXTS = ("Whole CT", "Current segment", "Box (ROI)")


class MedVLSAM2Panel(VTKObservationMixin):
    """Panel: mirrors PanelState onto the buttons, turns clicks into Controller calls.

    ``host`` is the module's ScriptedLoadableModuleWidget (layout, resourcePath, parent); ``logic`` is
    injected so scripts and tests can drive the same logic without a panel.
    """

    def __init__(self, host, logic) -> None:
        VTKObservationMixin.__init__(self)
        self.host = host
        self.parent = host.parent
        self.logic = logic
        self._parameterNode = None
        self._shortcuts = []
        self._timer = None
        self._streamTarget = "transcript"  # where streamed text goes: the Q&A transcript or the report

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

        self.ui.directionSelector.addItems(list(DIRECTIONS))
        self.ui.askContextSelector.addItems(list(ASK_CONTEXTS))
        self.ui.deviceSelector.addItems(["auto", "cuda", "mps", "cpu"])
        self.ui.modelSelector.addItems(self.logic.model_names())
        self.ui.modelSelector.currentText = self.settings.get("model")
        self.ui.deviceSelector.currentText = self.settings.get("device")
        self.ui.remoteUrlEdit.text = self.settings.get("remoteUrl")

        u = self.ui
        u.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onVolumeChanged)
        u.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onSegmentationChanged)
        u.segmentSelector.connect("currentSegmentChanged(QString)", self._onSegmentChanged)
        u.startServerButton.connect("clicked()", self.onStart)
        u.stopServerButton.connect("clicked()", self.onStop)
        u.importWeightsButton.connect("clicked()", self.onImportWeights)
        u.positivePointButton.connect("toggled(bool)", lambda on: self._placePoints(on, positive=True))
        u.negativePointButton.connect("toggled(bool)", lambda on: self._placePoints(on, positive=False))
        u.boxButton.connect("toggled(bool)", self._placeBox)
        u.textPromptEdit.connect("textChanged()", self._onTextChanged)
        u.runTextButton.connect("clicked()", self.onRunText)
        u.propagateButton.connect("clicked()", self.onPropagate)
        u.cancelButton.connect("clicked()", self.logic.controller.cancel)
        u.stopAnswerButton.connect("clicked()", self.logic.controller.cancel)
        u.undoButton.connect("clicked()", lambda: self._run(self.logic.controller.undo, self._segmentId()))
        u.resetButton.connect("clicked()", lambda: self._run(self.logic.controller.reset, self._segmentId()))
        u.nextSegmentButton.connect("clicked()", self.onNextSegment)
        u.questionEdit.connect("textChanged(QString)", lambda text: self.state.update(question=text))
        u.askButton.connect("clicked()", self.onAsk)
        u.reportButton.connect("clicked()", self.onReport)
        u.reportEdit.connect("textChanged()", self._onReportEdited)
        u.copyReportButton.connect("clicked()", lambda: qt.QApplication.clipboard().setText(u.reportEdit.plainText))
        u.saveReportButton.connect("clicked()", self.onSaveReport)

        self._timer = qt.QTimer()
        self._timer.setInterval(DELIVER_INTERVAL_MS)
        self._timer.connect("timeout()", self.logic.controller.worker.deliver)
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
        for button in (self.ui.positivePointButton, self.ui.negativePointButton, self.ui.boxButton):
            button.checked = False
        self._stopPlacing()

    def cleanup(self) -> None:
        self._removeShortcuts()
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.shutdown()

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.controller.cancel()
        self._parameterNode = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self._parameterNode = self.logic.getParameterNode()
        p = self._parameterNode
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if p.inputVolume:
            self.ui.inputVolumeSelector.setCurrentNode(p.inputVolume)
        if p.segmentation:
            self.ui.segmentSelector.setCurrentNode(p.segmentation)
        if p.reportText:
            self.ui.reportEdit.plainText = p.reportText.GetText()
        self.ui.textPromptEdit.plainText = p.textPrompts
        self.ui.directionSelector.currentText = p.direction
        self.ui.rangeCheckBox.checked = p.useSliceRange

    # ----- shortcuts (installed on enter, removed on exit)
    def _installShortcuts(self) -> None:
        from .shortcuts import SHORTCUTS, button_label, strip_shortcut

        self._removeShortcuts()
        for action, (keys, buttonName) in SHORTCUTS.items():
            button = getattr(self.ui, buttonName)
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow())
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
            getattr(self.ui, name).enabled = enabled
        self.ui.statusLabel.text = self.state.status_text()
        self.ui.cpuWarningLabel.text = self.state.cpu_warning()
        self.ui.progressBar.visible = self.state.busy
        if self.state.progress:
            done, total = self.state.progress
            self.ui.progressBar.maximum, self.ui.progressBar.value = total, done
        else:
            self.ui.progressBar.maximum = 0  # busy indicator

    def _run(self, action, *args) -> None:
        """Call a Controller action and show input errors in the status line instead of a traceback."""
        from medvlsam2.errors import MedVLSAM2Error

        try:
            action(*args)
        except MedVLSAM2Error as exc:
            self.state.set_error(str(exc))

    # ----- inputs
    def _segmentId(self) -> str:
        return self.ui.segmentSelector.currentSegmentID() or ""

    def _onVolumeChanged(self, node) -> None:
        if self._parameterNode:
            self._parameterNode.inputVolume = node
        self.state.update(volume_selected=node is not None, session_open=False)
        if node is not None and node.GetImageData() is not None:
            lastSlice = node.GetImageData().GetDimensions()[2] - 1
            self.ui.rangeFromSpinBox.maximum = self.ui.rangeToSpinBox.maximum = lastSlice
            self.ui.rangeToSpinBox.value = lastSlice
        if node is not None and self.logic.connection.connected:
            self._openSession()

    def _onSegmentationChanged(self, node) -> None:
        if self._parameterNode:
            self._parameterNode.segmentation = node
        self.logic.controller.segmentation_node = node
        if node is not None and self.ui.inputVolumeSelector.currentNode() is not None:
            node.SetReferenceImageGeometryParameterFromVolumeNode(self.ui.inputVolumeSelector.currentNode())
        self.state.update(segmentation_selected=node is not None)

    def _onSegmentChanged(self, segmentId) -> None:
        self.logic.controller.select_segment(segmentId)

    def _onTextChanged(self) -> None:
        text = self.ui.textPromptEdit.plainText
        if self._parameterNode:
            self._parameterNode.textPrompts = text
        self.state.update(text_prompt=text)

    # ----- server / session
    def onStart(self) -> None:
        from . import dependencies

        self.settings.set("model", self.ui.modelSelector.currentText)
        self.settings.set("device", self.ui.deviceSelector.currentText)
        self.settings.set("remoteUrl", self.ui.remoteUrlEdit.text.strip())
        needed = dependencies.missing(dependencies.CLIENT_REQUIREMENTS)
        if not self.ui.remoteUrlEdit.text.strip() and not self.settings.get("pythonExecutable"):
            needed += dependencies.missing(dependencies.SERVER_REQUIREMENTS)
        if needed and not self._installWithConsent(needed):
            return
        if not self.ui.remoteUrlEdit.text.strip() and not self.logic.weights_ready(self.ui.modelSelector.currentText):
            if not self._downloadWeightsWithConsent(self.ui.modelSelector.currentText):
                return
        self.state.update(connection="starting")
        self.logic.start(self.ui.modelSelector.currentText, self.ui.deviceSelector.currentText,
                         self.ui.remoteUrlEdit.text.strip(), self.ui.remoteTokenEdit.text,
                         self.settings.get("pythonExecutable"), on_ready=self._openSession)

    def _installWithConsent(self, needed) -> bool:
        from . import dependencies

        if not dependencies.has_pip_ensure() and not slicer.util.confirmOkCancelDisplay(
                dependencies.consent_message(needed), windowTitle="MedVLSAM2: install Python packages"):
            return False
        try:
            with slicer.util.tryWithErrorDisplay("Installing Python packages failed.", waitCursor=True):
                dependencies.install(needed)
        except Exception:
            return False
        still = dependencies.missing({**dependencies.CLIENT_REQUIREMENTS, **dependencies.SERVER_REQUIREMENTS})
        return not set(still) & set(needed)

    def _downloadWeightsWithConsent(self, name: str) -> bool:
        if not slicer.util.confirmOkCancelDisplay(
                f"The model weights '{name}' are not on this computer. Download them now? "
                "(Use 'Import weights...' instead if this computer is offline.)",
                windowTitle="MedVLSAM2: download weights"):
            return False
        dialog = slicer.util.createProgressDialog(labelText=f"Downloading {name}...", maximum=100)
        dialog.setCancelButtonText("Cancel")
        from medvlsam2.utils.cancel import CancelToken

        token = CancelToken()
        dialog.connect("canceled()", token.cancel)

        def progress(done, total):
            dialog.value = int(100 * done / total) if total else 0
            slicer.app.processEvents()  # download runs here, on the main thread, with a responsive dialog

        try:
            with slicer.util.tryWithErrorDisplay("Downloading the weights failed.", waitCursor=True):
                self.logic.download_weights(name, progress, token)
                return True
        except Exception:
            return False
        finally:
            dialog.close()

    def onImportWeights(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, "Import weights file", "", "Weights (*.pt *.safetensors *.bin)")
        if not path:
            return
        try:
            with slicer.util.tryWithErrorDisplay("Importing the weights failed.", waitCursor=True):
                final = self.logic.import_weights(self.ui.modelSelector.currentText, path)
        except Exception:
            return  # already shown to the user
        slicer.util.showStatusMessage(f"Weights installed: {os.path.basename(final)}", 5000)

    def onStop(self) -> None:
        self.logic.stop()

    def _openSession(self) -> None:
        volume = self.ui.inputVolumeSelector.currentNode()
        segmentation = self.ui.segmentSelector.currentNode()
        if volume is None:
            return
        if segmentation is None:
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} MedVLSAM2")
            segmentation.CreateDefaultDisplayNodes()
            self.ui.segmentSelector.setCurrentNode(segmentation)
        if segmentation.GetSegmentation().GetNumberOfSegments() == 0:
            self.ui.segmentSelector.setCurrentSegmentID(segmentation.GetSegmentation().AddEmptySegment("", "Segment 1"))
        self._run(self.logic.open_session, volume, segmentation)

    # ----- prompts
    def _markupsNode(self, attribute: str, className: str, name: str, color):
        node = getattr(self._parameterNode, attribute)
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass(className, name)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
            setattr(self._parameterNode, attribute, node)
        if not self.hasObserver(node, node.PointPositionDefinedEvent, self._onPlaced):
            self.addObserver(node, node.PointPositionDefinedEvent, self._onPlaced)
        return node

    def _placePoints(self, on: bool, positive: bool) -> None:
        if not on:
            self._stopPlacing()
            return
        other = self.ui.negativePointButton if positive else self.ui.positivePointButton
        other.checked = False
        self.ui.boxButton.checked = False
        node = (self._markupsNode("positivePoints", "vtkMRMLMarkupsFiducialNode", "MedVLSAM2 +", (0.1, 0.8, 0.1)) if positive
                else self._markupsNode("negativePoints", "vtkMRMLMarkupsFiducialNode", "MedVLSAM2 -", (0.9, 0.1, 0.1)))
        self._startPlacing(node, persistent=True)

    def _placeBox(self, on: bool) -> None:
        if not on:
            self._stopPlacing()
            return
        self.ui.positivePointButton.checked = self.ui.negativePointButton.checked = False
        roi = self._markupsNode("roi", "vtkMRMLMarkupsROINode", "MedVLSAM2 box", (1.0, 0.8, 0.0))
        roi.RemoveAllControlPoints()
        self._startPlacing(roi, persistent=False)

    def _startPlacing(self, node, persistent: bool) -> None:
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(1 if persistent else 0)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def _stopPlacing(self) -> None:
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetCurrentInteractionMode(interaction.ViewTransform)

    def _onPlaced(self, caller, event) -> None:
        """A point or the ROI was placed: send it at once (applied on placement)."""
        from . import markups

        volume, segmentId = self.ui.inputVolumeSelector.currentNode(), self._segmentId()
        if not segmentId:
            self.state.set_error("select or add a segment first")
            return
        if caller.IsA("vtkMRMLMarkupsROINode"):
            self.ui.boxButton.checked = False
            self._run(lambda: self.logic.controller.add_box(segmentId, markups.roi_to_box(caller, volume)))
            return
        label = 1 if caller is self._parameterNode.positivePoints else -1
        try:
            point = markups.points_to_voxels(caller, volume)[-1:]
        except Exception as exc:
            self.state.set_error(str(exc))
        else:
            self._run(self.logic.controller.add_points, segmentId, point, [label])
        # the session keeps the prompt; clear the view after this event has been handled
        qt.QTimer.singleShot(0, caller.RemoveAllControlPoints)

    def onRunText(self) -> None:
        self._run(self.logic.controller.segment_text, self.ui.textPromptEdit.plainText)

    def onPropagate(self) -> None:
        kRange = None
        if self.ui.rangeCheckBox.checked:
            kRange = (int(self.ui.rangeFromSpinBox.value), int(self.ui.rangeToSpinBox.value))
        direction = self.ui.directionSelector.currentText
        if self._parameterNode:
            self._parameterNode.direction = direction
            self._parameterNode.useSliceRange = self.ui.rangeCheckBox.checked
        self._run(self.logic.controller.propagate, self._segmentId(), kRange, direction)

    def onNextSegment(self) -> None:
        segmentation = self.ui.segmentSelector.currentNode()
        if segmentation is None:
            return
        seg = segmentation.GetSegmentation()
        ids = [seg.GetNthSegmentID(n) for n in range(seg.GetNumberOfSegments())]
        current = self._segmentId()
        if current in ids and ids.index(current) + 1 < len(ids):
            nextId = ids[ids.index(current) + 1]
        else:
            nextId = seg.AddEmptySegment("", f"Segment {len(ids) + 1}")
        self.ui.segmentSelector.setCurrentSegmentID(nextId)

    def _onSegmentsWritten(self, segmentIds) -> None:
        if segmentIds:
            self.ui.segmentSelector.setCurrentSegmentID(segmentIds[-1])

    # ----- language
    def onAsk(self) -> None:
        question = self.ui.questionEdit.text.strip()
        context = None
        choice = self.ui.askContextSelector.currentText
        if choice == ASK_CONTEXTS[1] and self._segmentId() in self.logic.controller.objects:
            context = {"object": self.logic.controller.objects[self._segmentId()]}
        elif choice == ASK_CONTEXTS[2] and self._parameterNode.roi is not None:
            from . import markups

            try:
                context = {"box": markups.roi_to_box(self._parameterNode.roi, self.ui.inputVolumeSelector.currentNode())}
            except Exception as exc:
                self.state.set_error(str(exc))
                return
        import html

        self.ui.transcriptView.append(f"<b>Q:</b> {html.escape(question)}")
        self.ui.transcriptView.append("<b>A:</b> ")
        self._streamTarget = "transcript"
        self._run(self.logic.controller.ask, question, context)

    def onReport(self) -> None:
        self._streamTarget = "report"
        self.ui.reportEdit.plainText = ""
        self._run(self.logic.controller.report)

    def _onAnswerChunk(self, text: str) -> None:
        view = self.ui.transcriptView if self._streamTarget == "transcript" else self.ui.reportEdit
        cursor = view.textCursor()
        cursor.movePosition(qt.QTextCursor.End)
        cursor.insertText(text)

    def _onAnswerDone(self, job: str, text: str) -> None:
        if job == "report":
            from . import report_node

            self._parameterNode.reportText = report_node.report_text_node(slicer.mrmlScene)
            self.ui.reportEdit.plainText = text

    def _onReportEdited(self) -> None:
        text = self.ui.reportEdit.plainText
        self.state.update(report_text=text)
        if self._parameterNode and self._parameterNode.reportText and not self.state.busy:
            self._parameterNode.reportText.SetText(text)

    def onSaveReport(self) -> None:
        from . import report_node

        path = qt.QFileDialog.getSaveFileName(self.parent, "Save draft report", "report.md", "Markdown (*.md)")
        if not path:
            return
        try:
            with slicer.util.tryWithErrorDisplay("Saving the report failed."):
                saved = report_node.save_markdown(self.ui.reportEdit.plainText, path)
        except Exception:
            return  # already shown to the user
        slicer.util.showStatusMessage(f"Report saved to {saved}", 5000)
