"""Markups control points and ROI boxes -> voxel indices of the session's volume."""

from __future__ import annotations

import itertools

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


def roi_corners_world(roi_node) -> np.ndarray:
    """The 8 corners [8, 3] of an ROI box in world RAS (orientation and parent transforms applied)."""
    size = np.array(roi_node.GetSize(), dtype=np.float64)
    if np.any(size <= 0):
        raise InputError(f"ROI '{roi_node.GetName()}' has zero size; drag its handles to enclose the structure")
    object_to_world = _vtk_to_numpy(roi_node.GetObjectToWorldMatrix())
    corners = np.array(list(itertools.product(*[(-s / 2, s / 2) for s in size])))
    return (object_to_world @ np.c_[corners, np.ones(8)].T).T[:, :3]


def roi_to_box(roi_node, volume_node) -> tuple[int, int, int, int, int, int]:
    """Inclusive 3D voxel box (i0, j0, k0, i1, j1, k1) of the voxels inside the ROI, clipped to the volume."""
    ijk = world_to_ijk(volume_node, roi_corners_world(roi_node))
    dims = np.array(volume_node.GetImageData().GetDimensions())
    lo, hi = np.ceil(ijk.min(0) - 1e-6), np.floor(ijk.max(0) + 1e-6)  # voxel centres inside the box
    lo, hi = np.maximum(lo, 0).astype(int), np.minimum(hi, dims - 1).astype(int)
    if np.any(lo > hi):
        raise InputError(f"ROI '{roi_node.GetName()}' does not overlap the volume '{volume_node.GetName()}'")
    return (int(lo[0]), int(lo[1]), int(lo[2]), int(hi[0]), int(hi[1]), int(hi[2]))
