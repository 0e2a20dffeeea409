"""A CT volume with its geometry, read and written with SimpleITK.

Conventions (the same as SimpleITK and Slicer's ``arrayFromVolume``):
- ``array`` is indexed ``[k, j, i]`` (slice, row, column); axial slices are ``array[k]``.
- ``spacing`` and ``origin`` are in (i, j, k) order, millimetres; ``origin`` is in LPS.
- ``direction`` is a 3x3 matrix whose columns are the i, j, k axis directions in LPS.
Slicer works in RAS: ``ijk_to_ras`` flips the first two rows of ``ijk_to_lps``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha", ".mhd")


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise InputError(f"a CT volume must be 3D (slices, rows, columns); got {self.array.ndim}D "
                             f"with shape {self.array.shape}. For 4D series pick one time point; 2D images are not supported")
        if min(self.array.shape) < 1:
            raise InputError(f"the volume is empty (shape {self.array.shape})")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise InputError(f"voxel spacing must be three positive numbers in mm; got {self.spacing}. "
                             "Fix the header (pixdim / spacing) of the file")
        if not np.all(np.isfinite(self.origin)) or abs(np.linalg.det(self.direction)) < 1e-6:
            raise InputError("origin must be finite and the direction matrix invertible; the file header is corrupt")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # (k, j, i)

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.ijk_to_lps()

    @classmethod
    def from_ijk_to_ras(cls, array: np.ndarray, ijk_to_ras: np.ndarray) -> "Volume":
        """Build from a Slicer-style IJK-to-RAS matrix (what ``vtkMRMLVolumeNode`` holds)."""
        lps = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=np.float64)
        axes = lps[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        if np.any(spacing <= 0):
            raise InputError("IJK-to-RAS matrix has a zero-length axis")
        return cls(array, tuple(spacing), tuple(lps[:3, 3]), axes / spacing)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, other voxels (e.g. a mask); shapes must match."""
        if tuple(array.shape) != self.shape:
            raise InputError(f"array shape {array.shape} differs from the volume's {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    def to_sitk(self):
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image) -> "Volume":
        import SimpleITK as sitk

        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"expected a 3D single-channel CT, got a {image.GetDimension()}D image with "
                             f"{image.GetNumberOfComponentsPerPixel()} component(s)")
        return cls(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                   np.array(image.GetDirection()).reshape(3, 3))

    def check_ct_range(self) -> bool:
        """Warn (and return False) if the intensities do not look like Hounsfield units."""
        lo, hi = float(np.min(self.array)), float(np.max(self.array))
        if hi - lo < 100 or lo > -100:
            log.warning("intensity range %.3g..%.3g does not look like CT Hounsfield units (air is about -1000); "
                        "results on rescaled or non-CT images are unreliable", lo, hi)
            return False
        return True


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI, NRRD, MHA/MHD file or a DICOM series folder into a ``Volume``."""
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file or folder: {p}")
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(p))
            if not series:
                raise InputError(f"no DICOM series found in folder {p}")
            if len(series) > 1:
                log.warning("%d DICOM series in the folder; reading the first. Put one series per folder to choose",
                            len(series))
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(p), series[0]))
            image = reader.Execute()
        else:
            if p.stat().st_size == 0:
                raise InputError(f"file is empty: {p}")
            image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(f"cannot read {p.name}: not a readable NIfTI/NRRD/MHA file or DICOM series "
                         f"({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc})") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    volume = Volume.from_sitk(image)
    volume.check_ct_range()
    return volume


def write_mask(mask: np.ndarray, like: Volume, path: str | os.PathLike, labels: dict[int, str] | None = None) -> Path:
    """Write a label map with exactly the geometry of ``like`` (.nii.gz, .nrrd, .seg.nrrd, .mha)."""
    return _write_layers(np.asarray(mask)[None], like, path, labels or {1: "Segment_1"}, [])


def write_segments(masks: list[np.ndarray], names: list[str], like: Volume, path: str | os.PathLike) -> list[Path]:
    """Write binary masks (one per name) with the geometry of ``like``, overlaps kept (``results.label_layers``).

    Mask n has label value n + 1. A ``.seg.nrrd`` holds every segment as Slicer stores overlapping segments: one
    layer per 3D volume of a 4D file, ``SegmentN_Layer`` / ``_LabelValue`` saying where each segment is. Other
    formats write layer 1 to ``path`` and layer n to ``<name>.layer<n><suffix>`` next to it (values stay unique, so the
    one ``.labels.json`` names them all). Returns the files written, ``path`` first."""
    from ..results import label_layers

    if len(masks) != len(names):
        raise InputError(f"{len(masks)} masks but {len(names)} names")
    if not masks:
        masks, names = [np.zeros(like.shape, np.uint8)], ["Segment_1"]
    layers, placed = label_layers(masks)
    labels = {v: n for v, n in enumerate(names, start=1)}
    p = Path(path)
    if str(p).endswith(".seg.nrrd") or len(layers) == 1:
        return [_write_layers(layers, like, p, labels, placed)]
    return [_write_layers(layers[n:n + 1], like, layer_path(p, n), labels, []) for n in range(len(layers))]


def layer_path(path: Path, n: int) -> Path:
    """Where ``write_segments`` puts layer ``n`` (0-based; 0 is ``path`` itself) of a non-Slicer label file."""
    if n == 0:
        return path
    suffix = next(s for s in sorted(MASK_SUFFIXES, key=len, reverse=True) if path.name.endswith(s))
    return path.with_name(f"{path.name[:-len(suffix)]}.layer{n + 1}{suffix}")


def _write_layers(layers: np.ndarray, like: Volume, path: str | os.PathLike, labels: dict[int, str],
                  placed: list[int]) -> Path:
    """One file: a 3D label map, or (``.seg.nrrd`` with several layers) a 4D one, layers first, as Slicer writes it."""
    import SimpleITK as sitk

    p = Path(path)
    if not str(p).endswith(MASK_SUFFIXES):
        raise InputError(f"mask file name must end with one of {MASK_SUFFIXES}; got {p.name}")
    if tuple(layers.shape[1:]) != like.shape:
        raise InputError(f"mask shape {layers.shape[1:]} differs from the volume's {like.shape}")
    layers = layers.astype(np.uint8)
    if len(layers) == 1:
        image = like.with_array(layers[0]).to_sitk()
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(layers, 0, -1)), isVector=True)
        image.CopyInformation(like.to_sitk())
    if str(p).endswith(".seg.nrrd"):
        # Slicer segmentation header: names, colours and terminology entries (io.terminology) per segment.
        from .terminology import terminology

        for idx, (value, name) in enumerate(sorted(labels.items())):
            tags, colour = terminology(name, idx)
            layer = placed[value - 1] if 0 < value <= len(placed) else 0  # write_mask: one layer
            hit = np.argwhere(layers[layer] == value)
            extent = (" ".join(f"{int(a)} {int(b)}" for a, b in zip(hit.min(0)[::-1], hit.max(0)[::-1]))
                      if len(hit) else "0 -1 0 -1 0 -1")
            image.SetMetaData(f"Segment{idx}_ID", f"Segment_{value}")
            image.SetMetaData(f"Segment{idx}_Name", name)
            image.SetMetaData(f"Segment{idx}_LabelValue", str(value))
            image.SetMetaData(f"Segment{idx}_Layer", str(layer))
            image.SetMetaData(f"Segment{idx}_Extent", extent)
            image.SetMetaData(f"Segment{idx}_Color", " ".join(f"{c / 255:.4f}" for c in colour))
            image.SetMetaData(f"Segment{idx}_Tags", tags)
    p.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(p), useCompression=True)
    return p
