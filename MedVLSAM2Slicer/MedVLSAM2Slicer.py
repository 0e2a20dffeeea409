"""MedVLSAM2Slicer: text, point, box, lasso and scribble prompted CT segmentation, questions and draft reports.

Thin module file (Slicer's template): Module, parameter node, Widget, Logic, Test. The panel lives in
MedVLSAM2SlicerLib.widget, the logic in MedVLSAM2SlicerLib.logic (Qt-free, tested with pytest); model calls
run on one worker thread and go to a model server through a torch-free client. Nothing heavy runs at import.
"""

from __future__ import annotations

from typing import Annotated

import ctk  # noqa: F401  (registers the ctk widgets the .ui uses)
import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, Minimum, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

from MedVLSAM2SlicerLib.logic import MedVLSAM2Logic


class MedVLSAM2Slicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedVLSAM2"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["MedVLSAM2Slicer contributors"]
        self.parent.helpText = (
            "Segment CT structures from points, boxes, lassos, scribbles or text (one structure per line), propagate "
            "through the volume, ask questions and draft a report. Shortcuts while the module is shown: P point, "
            "B box, L lasso, S scribble, T toggle negative. Undo: the Undo button or the Segment Editor's undo. "
            "Research use only, not for diagnosis.")
        self.parent.acknowledgementText = (
            "Builds on SAM2 (Meta, Apache-2.0) and the MedVL-SAM2 method (arXiv 2601.09879).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """A phantom CT with findings in the Sample Data module (shipped with the extension, no download)."""
    from MedVLSAM2SlicerLib.sample_data import register

    register()


@parameterNodeWrapper
class MedVLSAM2SlicerParameterNode:
    """Per-scene state of the panel (saved with the scene); each field is bound to the widget whose
    SlicerParameterName names it in Resources/UI/MedVLSAM2Slicer.ui (``connectGui``)."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    negative: bool = False  # points, scribbles and lassos mark background
    textPrompts: str = ""
    deliverUnverified: bool = False  # text results failing the plausibility checks are delivered as "X (unverified)"
    direction: Annotated[str, Choice(["both", "forward", "backward"])] = "both"
    useSliceRange: bool = False
    firstSlice: Annotated[int, Minimum(0)] = 0
    lastSlice: Annotated[int, Minimum(0)] = 0


class MedVLSAM2SlicerWidget(ScriptedLoadableModuleWidget):
    """Shell: creates the logic and hands the panel to MedVLSAM2SlicerLib.widget.MedVLSAM2Panel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from MedVLSAM2SlicerLib.widget import MedVLSAM2Panel

        self.logic = MedVLSAM2SlicerLogic()
        self.panel = MedVLSAM2Panel(self, self.logic)
        self.panel.setup()

    def enter(self) -> None:
        if self.panel is not None:
            self.panel.enter()

    def exit(self) -> None:
        if self.panel is not None:
            self.panel.exit()

    def cleanup(self) -> None:
        if self.panel is not None:
            self.panel.cleanup()


class MedVLSAM2SlicerLogic(ScriptedLoadableModuleLogic, MedVLSAM2Logic):
    """Slicer's logic base plus the parameter node; the work is in MedVLSAM2SlicerLib.logic.MedVLSAM2Logic."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        MedVLSAM2Logic.__init__(self)  # no-op when Slicer's base already ran it through super()

    def getParameterNode(self):
        return MedVLSAM2SlicerParameterNode(super().getParameterNode())


class MedVLSAM2SlicerTest(ScriptedLoadableModuleTest):
    """Builds the panel, presses Start (demo bundle), clicks, undoes, runs a text prompt and a question, comparing
    each result with a reference session; a missing package, panel or server fails with its name."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_panel_end_to_end()

    def test_panel_end_to_end(self) -> None:
        from MedVLSAM2SlicerLib.selftest import module_self_test

        module_self_test(self)
