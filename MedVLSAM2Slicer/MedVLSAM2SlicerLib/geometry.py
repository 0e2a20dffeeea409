"""Volume nodes <-> ``medvlsam2.io.volume.Volume`` and world RAS -> voxel (i, j, k).

Parent transforms are honoured: a linearly transformed volume becomes a Volume whose IJK-to-RAS
is the world one. Non-linear transforms are refused with a message (harden them first).
"""

from __future__ import annotations

import numpy as np

from medvlsam2.errors import InputError


def _vtk_to_numpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_vtk(array: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def node_to_world(node) -> np.ndarray:
    """4x4 matrix from ``node``'s own coordinates to world RAS (identity without a parent transform)."""
    import vtk

    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"'{node.GetName()}' is under a non-linear transform; harden the transform "
                         "(Data module, right-click > Harden transform) before using it with MedVLSAM2")
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _vtk_to_numpy(m)


def ijk_to_world(volume_node) -> np.ndarray:
    """4x4 matrix from voxel (i, j, k, 1) to world RAS, parent transforms included."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return node_to_world(volume_node) @ _vtk_to_numpy(m)


def volume_from_node(volume_node):
    """A ``Volume`` (array [k, j, i], LPS geometry) with the node's voxels and world geometry."""
    import slicer

    from medvlsam2.io.volume import Volume

    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError("select a CT volume that has image data")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InputError(f"'{volume_node.GetName()}' has several components (colour image?); select a CT volume")
    array = np.array(slicer.util.arrayFromVolume(volume_node))  # copy: the worker must not share VTK memory
    return Volume.from_ijk_to_ras(array, ijk_to_world(volume_node))


def world_to_ijk(volume_node, points_ras: np.ndarray) -> np.ndarray:
    """Continuous voxel coordinates (i, j, k) of world RAS points [N, 3]."""
    pts = np.atleast_2d(np.asarray(points_ras, dtype=np.float64))
    homogeneous = np.c_[pts, np.ones(len(pts))]
    return (np.linalg.inv(ijk_to_world(volume_node)) @ homogeneous.T).T[:, :3]


def voxel_indices(volume_node, points_ras: np.ndarray, clip: bool = False) -> np.ndarray:
    """Nearest voxel (i, j, k) of each world point; outside the volume is an error unless ``clip``."""
    ijk = np.rint(world_to_ijk(volume_node, points_ras)).astype(np.int64)
    dims = np.array(volume_node.GetImageData().GetDimensions())  # (i, j, k)
    outside = np.any((ijk < 0) | (ijk >= dims), axis=1)
    if clip:
        return np.clip(ijk, 0, dims - 1)
    if outside.any():
        raise InputError(f"{int(outside.sum())} point(s) lie outside the volume '{volume_node.GetName()}'; "
                         "place prompts on the CT itself")
    return ijk
