"""Markups -> prompts in voxels of the session's volume: points, ROI boxes, lassos (closed curves), scribbles (curves).

``RoiBoxTracker`` turns the event sequence of an ROI placed by two corner clicks (Slicer >= 5.8: a
``PointPositionDefinedEvent`` after the first corner with a zero size, another after the second) and of
later handle drags into exactly one box per completed or adjusted ROI.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np

from medvlsam2.errors import InputError

from .geometry import _vtk_to_numpy, voxel_indices, world_to_ijk


def control_points_world(markups_node) -> np.ndarray:
    """World RAS positions [N, 3] of every defined control point (parent transforms applied)."""
    out = []
    for n in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(n) != markups_node.PositionDefined:
            continue  # a point still being placed
        p = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(n, p)
        out.append(p)
    return np.array(out, dtype=np.float64).reshape(-1, 3)


def points_to_voxels(markups_node, volume_node) -> np.ndarray:
    """Voxel (i, j, k) [N, 3] of a point list's control points in ``volume_node``."""
    return voxel_indices(volume_node, control_points_world(markups_node))


def labelled_points(positive_node, negative_node, volume_node) -> tuple[np.ndarray, np.ndarray]:
    """Points (i, j, k) and labels (+1 / -1) from a positive and an optional negative point list."""
    pos = points_to_voxels(positive_node, volume_node) if positive_node is not None else np.zeros((0, 3), int)
    neg = points_to_voxels(negative_node, volume_node) if negative_node is not None else np.zeros((0, 3), int)
    labels = np.r_[np.ones(len(pos), np.int64), -np.ones(len(neg), np.int64)]
    return np.r_[pos, neg].astype(np.int64), labels


MAX_SCRIBBLE_POINTS = 64  # one stroke; the server caps points per call as well


def roi_complete(roi_node) -> bool:
    """True once the ROI has a size in at least two axes (its second corner is placed)."""
    if roi_node.GetNumberOfControlPoints() == 0:
        return False
    return int(np.sum(np.array(roi_node.GetSize(), dtype=np.float64) > 0)) >= 2


def roi_corners_world(roi_node) -> np.ndarray:
    """The 8 corners [8, 3] of an ROI box in world RAS (orientation and parent transforms applied)."""
    size = np.array(roi_node.GetSize(), dtype=np.float64)
    if not roi_complete(roi_node):
        raise InputError(f"ROI '{roi_node.GetName()}' is not complete; click its second corner or drag its handles "
                         "to enclose the structure")
    object_to_world = _vtk_to_numpy(roi_node.GetObjectToWorldMatrix())
    corners = np.array(list(itertools.product(*[(-s / 2, s / 2) for s in size])))
    return (object_to_world @ np.c_[corners, np.ones(8)].T).T[:, :3]


def roi_to_box(roi_node, volume_node) -> tuple[int, int, int, int, int, int]:
    """Inclusive 3D voxel box (i0, j0, k0, i1, j1, k1) of the voxels inside the ROI, clipped to the volume."""
    ijk = world_to_ijk(volume_node, roi_corners_world(roi_node))
    dims = np.array(volume_node.GetImageData().GetDimensions())
    lo, hi = np.ceil(ijk.min(0) - 1e-6), np.floor(ijk.max(0) + 1e-6)  # voxel centres inside the box
    flat = (lo > hi) & (ijk.max(0) - ijk.min(0) < 1)  # a box drawn flat on a slice: that slice
    lo[flat] = hi[flat] = np.rint(ijk.mean(0))[flat]
    lo, hi = np.maximum(lo, 0).astype(int), np.minimum(hi, dims - 1).astype(int)
    if np.any(lo > hi):
        raise InputError(f"ROI '{roi_node.GetName()}' does not overlap the volume '{volume_node.GetName()}'")
    if hi[0] == lo[0] or hi[1] == lo[1]:
        raise InputError(f"ROI '{roi_node.GetName()}' has no width or height on the axial slices; draw the box in "
                         "the axial (red) view, or drag its handles to give it depth")
    return (int(lo[0]), int(lo[1]), int(lo[2]), int(hi[0]), int(hi[1]), int(hi[2]))


class RoiBoxTracker:
    """Calls ``on_box(box)`` once when the ROI is completed and once per adjustment that changes its voxel box."""

    def __init__(self, roi_node, volume_node, on_box: Callable[[tuple[int, ...]], None],
                 on_error: Callable[[str], None]) -> None:
        self.roi, self.volume, self.on_box, self.on_error = roi_node, volume_node, on_box, on_error
        self.last: tuple[int, ...] | None = None
        self._tags = [roi_node.AddObserver(event, self._changed)
                      for event in (roi_node.PointPositionDefinedEvent, roi_node.PointEndInteractionEvent)]

    def _changed(self, caller=None, event=None) -> None:
        if not roi_complete(self.roi):
            return  # first corner only: wait for the second
        try:
            box = roi_to_box(self.roi, self.volume)
        except InputError as exc:
            self.on_error(str(exc))
            return
        if box != self.last:
            self.last = box
            self.on_box(box)

    def restart(self) -> None:
        """A new box will be drawn: forget the last one."""
        self.last = None

    def stop(self) -> None:
        for tag in self._tags:
            self.roi.RemoveObserver(tag)
        self._tags = []


def curve_points_world(curve_node) -> np.ndarray:
    """The curve as drawn [N, 3] world RAS: its interpolated points, or its control points."""
    points = curve_node.GetCurvePointsWorld()
    if points is not None and points.GetNumberOfPoints() >= 2:
        return np.array([points.GetPoint(n) for n in range(points.GetNumberOfPoints())], dtype=np.float64)
    return control_points_world(curve_node)


def _densify(ijk: np.ndarray, closed: bool) -> np.ndarray:
    """Points every <= 0.5 voxel along the polyline ``ijk`` [N, 3] (closing it when ``closed``)."""
    if closed:
        ijk = np.r_[ijk, ijk[:1]]
    out = [ijk[:1]]
    for a, b in zip(ijk[:-1], ijk[1:]):
        n = max(1, int(np.ceil(np.abs(b - a).max() * 2)))
        out.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    return np.concatenate(out)


def scribble_to_points(curve_node, volume_node, max_points: int = MAX_SCRIBBLE_POINTS) -> np.ndarray:
    """Voxels (i, j, k) [N, 3] the stroke passes through, in drawing order, at most ``max_points`` (evenly kept).

    Works in any view: a coronal stroke gives points on several axial slices, each prompted on its slice.
    """
    world = curve_points_world(curve_node)
    if len(world) == 0:
        raise InputError("the scribble has no points; draw a stroke on a slice view")
    ijk = np.rint(_densify(world_to_ijk(volume_node, world), closed=False)).astype(np.int64)
    dims = np.array(volume_node.GetImageData().GetDimensions())
    ijk = ijk[np.all((ijk >= 0) & (ijk < dims), axis=1)]
    if len(ijk) == 0:
        raise InputError("the scribble lies outside the volume; draw it on the CT itself")
    _, first = np.unique(ijk, axis=0, return_index=True)
    ijk = ijk[np.sort(first)]
    if len(ijk) > max_points:
        ijk = ijk[np.linspace(0, len(ijk) - 1, max_points).round().astype(int)]
    return ijk


def polygon_mask(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 mask [rows, cols] of the pixel centres inside ``polygon`` [N, 2] of (col, row) points (even-odd rule)."""
    rows, cols = shape
    x, y = polygon[:, 0], polygon[:, 1]
    x0, x1 = max(int(np.floor(x.min())), 0), min(int(np.ceil(x.max())), cols - 1)
    y0, y1 = max(int(np.floor(y.min())), 0), min(int(np.ceil(y.max())), rows - 1)
    mask = np.zeros(shape, np.uint8)
    if x0 > x1 or y0 > y1:
        return mask
    py, px = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    inside = np.zeros(px.shape, bool)
    xa, ya, xb, yb = x, y, np.roll(x, -1), np.roll(y, -1)
    for ax, ay, bx, by in zip(xa, ya, xb, yb):  # one crossing test per edge, vectorised over pixels
        crosses = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < xcross)
    mask[y0:y1 + 1, x0:x1 + 1] = inside
    return mask


AXIAL, CORONAL, SAGITTAL = 2, 1, 0  # the voxel axis (i, j, k) a lasso's slice is flat along


def _lasso_ijk(curve_node, volume_node) -> tuple[np.ndarray, int, int]:
    """(curve points [N, 3] in voxels, the axis the curve is flat along, that slice's index)."""
    world = curve_points_world(curve_node)
    if len(world) < 3:
        raise InputError("a lasso needs at least 3 points; draw a closed curve around the structure")
    ijk = world_to_ijk(volume_node, world)
    dims = volume_node.GetImageData().GetDimensions()
    for axis in (AXIAL, CORONAL, SAGITTAL):
        middle = float(np.median(ijk[:, axis]))
        if np.abs(ijk[:, axis] - middle).max() <= 0.5:
            index = int(round(middle))
            if not 0 <= index < dims[axis]:
                raise InputError("the lasso lies outside the volume; draw it on the CT itself")
            return ijk, axis, index
    raise InputError("draw the lasso on one slice of the axial, coronal or sagittal view (this curve is not flat "
                     "on a slice of the CT)")


def lasso_axis(curve_node, volume_node) -> int:
    """AXIAL, CORONAL or SAGITTAL: the slice view the closed curve was drawn on (in the volume's voxel axes)."""
    return _lasso_ijk(curve_node, volume_node)[1]


def lasso_to_mask(curve_node, volume_node) -> tuple[int, np.ndarray]:
    """(axial slice k, filled mask [j, i]) of a closed curve drawn on an axial slice view."""
    ijk, axis, k = _lasso_ijk(curve_node, volume_node)
    if axis != AXIAL:
        raise InputError("a lasso on the coronal or sagittal view becomes clicks (lasso_to_points); only an axial "
                         "lasso is a mask prompt")
    dims = volume_node.GetImageData().GetDimensions()
    mask = polygon_mask(ijk[:, :2], (dims[1], dims[0]))
    if not mask.any():
        raise InputError("the lasso encloses no voxel of the volume; draw a larger closed curve on the CT")
    return k, mask


def lasso_to_points(curve_node, volume_node, max_points: int = MAX_SCRIBBLE_POINTS) -> np.ndarray:
    """Clicks (i, j, k) [N, 3] for a closed curve drawn on a coronal or sagittal view.

    SAM2 prompts axial slices, and a lasso on another view crosses each axial slice in a line, too thin for a
    mask prompt: each stretch of that line inside the lasso becomes one click at its middle voxel, on its own
    axial slice (at most ``max_points``, kept evenly over the slices).
    """
    ijk, axis, index = _lasso_ijk(curve_node, volume_node)
    if axis == AXIAL:
        raise InputError("an axial lasso is a mask prompt (lasso_to_mask)")
    dims = volume_node.GetImageData().GetDimensions()
    along = 1 - axis  # the in-plane voxel axis besides k: i on a coronal slice, j on a sagittal one
    plane = polygon_mask(ijk[:, [along, AXIAL]], (dims[AXIAL], dims[along]))  # [k, along]
    points = []
    for k in np.flatnonzero(plane.any(1)):
        edges = np.flatnonzero(np.diff(np.r_[0, plane[k], 0]))  # starts and ends (exclusive) of the runs
        for start, end in zip(edges[::2], edges[1::2]):
            voxel = [0, 0, int(k)]
            voxel[axis], voxel[along] = index, int((start + end - 1) // 2)
            points.append(voxel)
    if not points:
        raise InputError("the lasso encloses no voxel of the volume; draw a larger closed curve on the CT")
    points = np.array(points, np.int64)
    if len(points) > max_points:
        points = points[np.linspace(0, len(points) - 1, max_points).round().astype(int)]
    return points
