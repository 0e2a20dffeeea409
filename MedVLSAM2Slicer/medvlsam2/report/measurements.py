"""Per-segment measurements computed from the masks, never generated: SimpleITK's LabelShapeStatistics
(volume, maximum 3D diameter) and LabelIntensityStatistics (HU mean and SD), plus the axial long and
short axes of the largest axial cross-section.

Diameters are measured between voxel centres in millimetres (SimpleITK's Feret-diameter convention):
- ``max_diameter_mm``: the largest distance between two voxels of the segment (Feret diameter);
- ``long_axis_mm``: on each axial slice, the largest in-plane distance between two voxels; the slice with
  the largest one is the segment's largest cross-section (``axial_slice``);
- ``short_axis_mm``: on that slice, the segment's width perpendicular to the long axis (caliper width
  between voxel centres), as in RECIST.
HU statistics use every voxel of the segment; the SD is the sample SD (n - 1), as SimpleITK computes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from ..io.volume import Volume

MAX_SEGMENTS = 255


@dataclass
class Measurement:
    name: str
    voxels: int
    volume_ml: float
    mean_hu: float
    sd_hu: float
    max_diameter_mm: float
    long_axis_mm: float
    short_axis_mm: float
    axial_slice: int  # k of the largest axial cross-section (where the long axis is measured)

    def to_dict(self) -> dict:
        return asdict(self)


def _axial_axes(points: np.ndarray) -> tuple[float, float]:
    """(long axis, perpendicular width) of 2D points [n, 2] in mm."""
    if len(points) < 2:
        return 0.0, 0.0
    hull = points
    if len(points) >= 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            hull = points[ConvexHull(points).vertices]
        except QhullError:  # collinear voxels: the extreme points are the points themselves
            hull = points
    d = np.linalg.norm(hull[:, None] - hull[None], axis=-1)
    a, b = np.unravel_index(int(np.argmax(d)), d.shape)
    long_axis = float(d[a, b])
    if long_axis == 0:
        return 0.0, 0.0
    u = (hull[b] - hull[a]) / long_axis
    projected = hull @ np.array([-u[1], u[0]])
    return long_axis, float(projected.max() - projected.min())


def measure(masks: dict[str, np.ndarray], volume: Volume) -> list[Measurement]:
    """One ``Measurement`` per non-empty mask (uint8/bool ``[k, j, i]`` on the volume grid), in order."""
    import SimpleITK as sitk

    if len(masks) > MAX_SEGMENTS:
        raise InputError(f"at most {MAX_SEGMENTS} segments can be measured at once, got {len(masks)}")
    for name, m in masks.items():
        if m.shape != volume.shape:
            raise InputError(f"segment {name!r} has shape {m.shape}, the volume {volume.shape}")
    names = [n for n, m in masks.items() if np.any(m)]
    out: list[Measurement] = []
    hu = volume.to_sitk()
    hu = sitk.Cast(hu, sitk.sitkFloat64)
    spacing = np.array(volume.spacing, dtype=np.float64)  # (i, j, k)
    for name in names:  # one label image per segment: segments may overlap (a lesion inside its liver)
        mask = np.ascontiguousarray(masks[name] > 0).astype(np.uint8)
        label = sitk.GetImageFromArray(mask)
        label.CopyInformation(hu)
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.ComputeFeretDiameterOn()
        shape.Execute(label)
        stats = sitk.LabelIntensityStatisticsImageFilter()
        stats.Execute(label, hu)
        best = (0.0, 0.0, int(np.argwhere(mask)[0, 0]))
        for k in np.unique(np.nonzero(mask)[0]):
            jj, ii = np.nonzero(mask[k])
            long_axis, short_axis = _axial_axes(np.stack([ii * spacing[0], jj * spacing[1]], 1))
            if long_axis > best[0]:
                best = (long_axis, short_axis, int(k))
        out.append(Measurement(name, int(shape.GetNumberOfPixels(1)), shape.GetPhysicalSize(1) / 1000.0,
                               stats.GetMean(1), stats.GetStandardDeviation(1), shape.GetFeretDiameter(1), *best))
    return out
