"""Freehand scribbles: press the left mouse button on a slice view, paint the stroke, release to send it.

``FreehandStroke`` observes slice-view interactors ahead of Slicer's own interaction (higher priority, and
the events it uses are aborted, so the view neither pans nor changes window/level while painting), turns
each mouse position into a world point (``to_world``: in Slicer the slice view's ``convertDeviceToXYZ`` then
``convertXYZToRAS``), keeps them into the scribble's curve node and calls ``on_stroke(curve_node)`` once
per release. The stroke then goes the way of a placed scribble (``markups.scribble_to_points``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

PRIORITY = 10.0  # above Slicer's slice-view interactor style (0)
MIN_STEP_MM = 0.5  # mouse positions closer than this to the last kept one are dropped

ToWorld = Callable[[int, int], Sequence[float]]


class FreehandStroke:
    """Collect one stroke per left-button press-drag-release on any of ``views`` [(interactor, to_world)]."""

    def __init__(self, views: Sequence[tuple[object, ToWorld]], curve_node, on_stroke: Callable[[object], None]) -> None:
        import vtk

        self.curve, self.on_stroke = curve_node, on_stroke
        self._points: list[np.ndarray] = []
        self._active: object | None = None  # the interactor being painted on
        self._tags: list[tuple[object, int]] = []
        for interactor, to_world in views:
            for event, handler in ((vtk.vtkCommand.LeftButtonPressEvent, self._press),
                                   (vtk.vtkCommand.MouseMoveEvent, self._move),
                                   (vtk.vtkCommand.LeftButtonReleaseEvent, self._release)):
                tag = [0]  # known once added; the handler aborts its own command

                def run(caller, event, handler=handler, to_world=to_world, tag=tag) -> None:
                    if handler(caller, to_world):
                        caller.GetCommand(tag[0]).SetAbortFlag(1)  # Slicer's own handling of this event stops
                tag[0] = interactor.AddObserver(event, run, PRIORITY)
                self._tags.append((interactor, tag[0]))

    def _add(self, interactor, to_world: ToWorld) -> None:
        x, y = interactor.GetEventPosition()
        point = np.asarray(to_world(x, y), dtype=np.float64)[:3]
        if not self._points or np.linalg.norm(point - self._points[-1]) >= MIN_STEP_MM:
            self._points.append(point)

    # each handler returns whether it used the event (then Slicer does not see it)
    def _press(self, interactor, to_world: ToWorld) -> bool:
        if interactor.GetShiftKey() or interactor.GetControlKey() or interactor.GetAltKey():
            return False  # modified clicks keep Slicer's meaning
        self._active, self._points = interactor, []
        self._add(interactor, to_world)
        return True

    def _move(self, interactor, to_world: ToWorld) -> bool:
        if self._active is not interactor:
            return False  # hovering: Slicer's crosshair and cursor as usual
        self._add(interactor, to_world)
        return True

    def _release(self, interactor, to_world: ToWorld) -> bool:
        if self._active is not interactor:
            return False
        self._add(interactor, to_world)
        self._active = None
        import vtk

        self.curve.RemoveAllControlPoints()
        for p in self._points:
            self.curve.AddControlPointWorld(vtk.vtkVector3d(*p))
        self.on_stroke(self.curve)
        return True

    def stop(self) -> None:
        for interactor, tag in self._tags:
            interactor.RemoveObserver(tag)
        self._tags, self._active = [], None


def slice_views() -> list[tuple[object, ToWorld]]:
    """(interactor, device x/y -> world RAS) of every slice view of the Slicer application's layout."""
    import slicer

    layout = slicer.app.layoutManager()
    views = []
    for name in layout.sliceViewNames():
        view = layout.sliceWidget(name).sliceView()
        views.append((view.interactor(), lambda x, y, v=view: v.convertXYZToRAS(v.convertDeviceToXYZ([x, y]))))
    return views
