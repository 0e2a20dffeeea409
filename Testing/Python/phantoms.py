"""Small CT stand-ins for the engine tests: an ellipsoid 'organ' at HU 150 in a -900 HU background."""

from __future__ import annotations

import numpy as np

from medvlsam2.io.volume import Volume


def ellipsoid(shape: tuple[int, int, int], centre: tuple[float, float, float], radii: tuple[float, float, float]
              ) -> np.ndarray:
    """Bool mask [K, J, I] of the axis-aligned ellipsoid with ``centre`` and ``radii`` in voxels (k, j, i)."""
    grid = np.mgrid[:shape[0], :shape[1], :shape[2]]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1


def hu(mask: np.ndarray, spacing: tuple[float, float, float] | None = None) -> Volume:
    """A volume at HU 150 where ``mask`` holds, -900 elsewhere (``spacing`` (i, j, k) mm, or Volume's default)."""
    array = np.where(mask, 150, -900).astype(np.int16)
    return Volume(array) if spacing is None else Volume(array, spacing)


def ellipsoid_volume(shape, centre, radii, spacing=None) -> Volume:
    return hu(ellipsoid(shape, centre, radii), spacing)
