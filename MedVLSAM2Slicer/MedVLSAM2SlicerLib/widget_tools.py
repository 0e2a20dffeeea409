"""The panel's drawing tools (Slicer-only: needs qt and slicer), mixed into ``MedVLSAM2Panel``: point, box (ROI),
lasso (closed curve) and scribble (freehand strokes), one at a time; each placed prompt becomes a logic call.
"""

from __future__ import annotations

import qt
import slicer

# drawing tools (one at a time): button -> prompt kind
TOOLS = (("pointButton", "point"), ("boxButton", "box"), ("lassoButton", "lasso"), ("scribbleButton", "scribble"))


class DrawingTools:
    """Tool handlers; need the panel's ``ui``, ``logic``, ``state``, ``_run``, ``_segmentId``, the tool fields
    (``_activeTool``, ``_boxTracker``, ``_freehand``) and VTKObservationMixin's observers."""

    def _onTool(self, name: str, on: bool) -> None:
        if not on:
            if self._activeTool == name:
                self._stopTools()
            return
        for other, _ in TOOLS:
            if other != name:
                getattr(self.ui, other).checked = False
        self._stopTools()
        kind = dict(TOOLS)[name]
        node = self.logic.prompt_node(slicer.mrmlScene, kind)
        node.RemoveAllControlPoints()
        self._activeTool = name
        if kind == "box":
            from .markups import RoiBoxTracker

            self._boxTracker = RoiBoxTracker(node, self.ui.inputVolumeSelector.currentNode(), self._onBox,
                                             self.state.set_error)
        elif kind == "point":
            self.addObserver(node, node.PointPositionDefinedEvent, self._onPointPlaced)
        elif kind == "scribble":  # painted, not placed: each stroke is sent on release, the tool stays on
            from .freehand import FreehandStroke, slice_views

            self._freehand = FreehandStroke(slice_views(), node, self._onStroke)
            return
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interaction, interaction.InteractionModeChangedEvent, self._onInteractionModeChanged)
        self._place(node, persistent=kind == "point")

    def _place(self, node, persistent: bool) -> None:
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(1 if persistent else 0)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def _stopTools(self) -> None:
        """Leave place mode and stop listening to the prompt nodes (the ROI stays on screen until the next box)."""
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self.removeObserver(interaction, interaction.InteractionModeChangedEvent, self._onInteractionModeChanged)
        points = self.logic.prompt_node(slicer.mrmlScene, "point")
        self.removeObserver(points, points.PointPositionDefinedEvent, self._onPointPlaced)
        if self._boxTracker is not None:
            self._boxTracker.stop()
            self._boxTracker = None
        if self._freehand is not None:
            self._freehand.stop()
            self._freehand = None
        tool, self._activeTool = self._activeTool, ""
        if tool:
            getattr(self.ui, tool).checked = False
        if interaction.GetCurrentInteractionMode() == interaction.Place:
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)

    def _onBox(self, box) -> None:
        self._run(self.logic.controller.add_box, self._segmentId(), box)

    def _onPointPlaced(self, caller, event) -> None:
        node, negative = caller, self.ui.negativeButton.checked
        # after this event has been handled: the point list is cleared by the logic
        qt.QTimer.singleShot(0, lambda: self._run(self.logic.submit_drawn_prompt, "point", node, self._segmentId(),
                                                  negative))

    def _onStroke(self, node) -> None:
        negative = self.ui.negativeButton.checked
        # after the mouse event has been handled: the stroke's curve is cleared by the logic
        qt.QTimer.singleShot(0, lambda: self._run(self.logic.submit_drawn_prompt, "scribble", node, self._segmentId(),
                                                  negative))

    def _onInteractionModeChanged(self, caller, event) -> None:
        """Place mode ended: a lasso is closed, so send it."""
        if caller.GetCurrentInteractionMode() == caller.Place or self._activeTool != "lassoButton":
            return
        node = self.logic.prompt_node(slicer.mrmlScene, "lasso")
        if node.GetNumberOfDefinedControlPoints() >= 3:
            self._run(self.logic.submit_drawn_prompt, "lasso", node, self._segmentId(), self.ui.negativeButton.checked)
        self._stopTools()
