"""Write a ``SegmentationResult`` into exactly one segment, and make named, coloured text-prompt segments.

Only the result's changed box is replaced inside the chosen segment; every other segment keeps its
voxels (segments may overlap; Slicer moves the written segment to its own layer where needed).
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from medvlsam2.errors import InputError

from . import terminology


def _check_segment(segmentation_node, segment_id: str) -> None:
    if segmentation_node is None or segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(f"segment {segment_id!r} does not exist; select a segment in the segment list")


def segment_array(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment's mask [k, j, i] in the volume's voxel grid (uint8 0/1)."""
    import slicer

    _check_segment(segmentation_node, segment_id)
    array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
    if array is None:  # an empty segment may have no labelmap yet
        dims = volume_node.GetImageData().GetDimensions()
        return np.zeros(dims[::-1], np.uint8)
    return (np.asarray(array) > 0).astype(np.uint8)


def segment_slices(segmentation_node, segment_id: str, volume_node, ks: list[int]) -> dict[int, np.ndarray]:
    """Axial slices ``ks`` of the segment's mask [j, i] (uint8 0/1), read from its labelmap in place when that
    is on the volume's grid, so a one-slice edit does not read the whole volume."""
    _check_segment(segmentation_node, segment_id)
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if labelmap is None or not _same_grid(labelmap, segmentation_node, volume_node):
        whole = segment_array(segmentation_node, segment_id, volume_node)
        return {k: whole[k] for k in ks}
    dims = volume_node.GetImageData().GetDimensions()[::-1]  # (k, j, i)
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    e = labelmap.GetExtent()
    voxels = None if _empty(e) else _voxels(labelmap)
    out = {}
    for k in ks:
        plane = np.zeros(dims[1:], np.uint8)
        if voxels is not None and e[4] <= k <= e[5]:
            # the extent may reach past the volume (a restored state): keep the part on the volume
            j0, i0 = max(e[2], 0), max(e[0], 0)
            j1, i1 = min(e[3] + 1, dims[1]), min(e[1] + 1, dims[2])
            if j0 < j1 and i0 < i1:
                plane[j0:j1, i0:i1] = voxels[k - e[4], j0 - e[2]:j1 - e[2], i0 - e[0]:i1 - e[0]] == label
        out[k] = plane
    return out


def _matrix(getter) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    getter(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _same_grid(labelmap, segmentation_node, volume_node) -> bool:
    """True when the labelmap's voxels are the volume's voxels (same matrix and parent transform)."""
    same_parent = segmentation_node.GetTransformNodeID() == volume_node.GetTransformNodeID()
    return same_parent and np.allclose(_matrix(labelmap.GetImageToWorldMatrix), _matrix(volume_node.GetIJKToRASMatrix),
                                       atol=1e-6)


def on_volume_grid(segmentation_node, segment_id: str, volume_node) -> bool:
    """Whether the segment's labelmap voxels are the volume's (its k is the volume's k)."""
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    return labelmap is not None and _same_grid(labelmap, segmentation_node, volume_node)


def _voxels(image) -> np.ndarray:
    """Writable [k, j, i] view of a VTK image's scalars (no copy)."""
    from vtk.util import numpy_support

    i0, i1, j0, j1, k0, k1 = image.GetExtent()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)


def _empty(extent) -> bool:
    return extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]


def _grow(labelmap, box_extent: tuple[int, ...]) -> None:
    """Enlarge ``labelmap`` (in place, zeros added) so its extent holds ``box_extent`` (i0, i1, j0, j1, k0, k1)."""
    import slicer

    old = labelmap.GetExtent()
    empty = _empty(old)
    new = box_extent if empty else tuple(min(o, b) if n % 2 == 0 else max(o, b)
                                         for n, (o, b) in enumerate(zip(old, box_extent)))
    grown = slicer.vtkOrientedImageData()
    grown.CopyDirections(labelmap)
    grown.SetSpacing(labelmap.GetSpacing())
    grown.SetOrigin(labelmap.GetOrigin())
    grown.SetExtent(*new)
    grown.AllocateScalars(labelmap.GetScalarType() if not empty else 3, 1)  # 3 = VTK_UNSIGNED_CHAR
    target = _voxels(grown)
    target[...] = 0
    if not empty:
        target[old[4] - new[4]:old[5] - new[4] + 1, old[2] - new[2]:old[3] - new[2] + 1,
               old[0] - new[0]:old[1] - new[0] + 1] = _voxels(labelmap)
    labelmap.DeepCopy(grown)  # the same object: a layer shared with other segments stays shared


def _write_full(segmentation_node, segment_id: str, volume_node, bbox, patch) -> bool:
    """Slow path for a labelmap not on the volume's grid: read, change and rewrite the whole segment."""
    import slicer

    current = segment_array(segmentation_node, segment_id, volume_node)
    k0, k1, j0, j1, i0, i1 = bbox
    if np.array_equal(current[k0:k1, j0:j1, i0:i1], patch):
        return False
    current[k0:k1, j0:j1, i0:i1] = patch
    slicer.util.updateSegmentBinaryLabelmapFromArray(current, segmentation_node, segment_id, volume_node)
    return True


def write_patch(segmentation_node, segment_id: str, volume_node, bbox, patch: np.ndarray,
                before_write: Callable[[], None] | None = None) -> bool:
    """Replace the segment's voxels inside ``bbox`` (k0, k1, j0, j1, i0, i1, half-open) with ``patch``.

    Writes into the segment's internal labelmap in place, touching only the box (the extent grows only
    when the patch reaches past it; a layer shared with another segment is split only where the patch
    would cover that segment). ``before_write`` is called once, only when something changes (the
    Segment Editor's save-state-for-undo), so one interaction is one undo step. Returns whether anything changed.
    """
    if bbox is None:
        return False
    _check_segment(segmentation_node, segment_id)
    dims = volume_node.GetImageData().GetDimensions()[::-1]  # (k, j, i)
    k0, k1, j0, j1, i0, i1 = (int(v) for v in bbox)
    if not (0 <= k0 < k1 <= dims[0] and 0 <= j0 < j1 <= dims[1] and 0 <= i0 < i1 <= dims[2]):
        raise InputError(f"result box {tuple(bbox)} lies outside the volume {tuple(dims)}; the session is on another volume")
    patch = np.asarray(patch) > 0
    if patch.shape != (k1 - k0, j1 - j0, i1 - i0):
        raise InputError(f"result patch shape {patch.shape} does not match its box {tuple(bbox)}")
    segmentation = segmentation_node.GetSegmentation()
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if labelmap is not None and _empty(labelmap.GetExtent()) and \
            segmentation_node.GetTransformNodeID() == volume_node.GetTransformNodeID():
        import vtk

        m = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(m)
        labelmap.SetImageToWorldMatrix(m)  # an empty labelmap has no grid yet: take the volume's
    if labelmap is None or not _same_grid(labelmap, segmentation_node, volume_node):
        box = (k0, k1, j0, j1, i0, i1)
        if before_write is not None and not np.array_equal(
                segment_array(segmentation_node, segment_id, volume_node)[k0:k1, j0:j1, i0:i1], patch):
            before_write()
        return _write_full(segmentation_node, segment_id, volume_node, box, patch.astype(np.uint8))
    ones = np.argwhere(patch)
    if len(ones):
        lo, hi = ones.min(0) + (k0, j0, i0), ones.max(0) + (k0, j0, i0)  # (k, j, i) inclusive
        e = labelmap.GetExtent()
        if lo[2] < e[0] or hi[2] > e[1] or lo[1] < e[2] or hi[1] > e[3] or lo[0] < e[4] or hi[0] > e[5]:
            _grow(labelmap, (int(lo[2]), int(hi[2]), int(lo[1]), int(hi[1]), int(lo[0]), int(hi[0])))
    # every voxel the patch sets now lies inside the extent; outside it the segment is empty and stays so
    e = labelmap.GetExtent()
    c = (max(k0, e[4]), min(k1, e[5] + 1), max(j0, e[2]), min(j1, e[3] + 1), max(i0, e[0]), min(i1, e[1] + 1))
    if c[0] >= c[1] or c[2] >= c[3] or c[4] >= c[5]:
        return False
    region = _voxels(labelmap)[c[0] - e[4]:c[1] - e[4], c[2] - e[2]:c[3] - e[2], c[4] - e[0]:c[5] - e[0]]
    sub = patch[c[0] - k0:c[1] - k0, c[2] - j0:c[3] - j0, c[4] - i0:c[5] - i0]
    label = segmentation.GetSegment(segment_id).GetLabelValue()
    if np.array_equal(region == label, sub):
        return False
    if before_write is not None:
        before_write()
    if np.any(sub & (region != 0) & (region != label)):
        # the patch covers another segment of this shared layer: this segment gets its own layer (Slicer's call)
        segmentation.SeparateSegmentLabelmap(segment_id)
        return write_patch(segmentation_node, segment_id, volume_node, bbox, patch)
    region[~sub & (region == label)] = 0
    region[sub] = label
    labelmap.Modified()
    segmentation.GetSegment(segment_id).Modified()
    return True


def content_key(segmentation_node, segment_id: str, previous: tuple | None = None,
                k_range: tuple[int, int] | None = None) -> tuple:
    """A fingerprint of the segment's voxels, so a state Slicer's undo restores is recognised: the same for the
    same voxels on the same grid, whatever the labelmap's extent (a restore may keep a larger one) or the
    segment's label value in a shared layer.

    (grid, ((k, digest of slice k's voxels cropped to their box and that box), ...)) over the slices holding
    the segment, in labelmap coordinates. With ``previous`` (the key before a write) and ``k_range``
    (k0, k1 half-open, the only slices the write changed), only those slices are hashed again.
    """
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    if labelmap is None or _empty(labelmap.GetExtent()):
        return None, ()
    e = labelmap.GetExtent()
    head = tuple(_matrix(labelmap.GetImageToWorldMatrix).round(6).ravel())
    voxels = _voxels(labelmap)
    if previous is not None and k_range is not None and previous[0] == head:
        digests = dict(previous[1])
        ks = range(max(k_range[0], e[4]), min(k_range[1], e[5] + 1))
    else:
        digests, ks = {}, range(e[4], e[5] + 1)
    for k in ks:
        ones = voxels[k - e[4]] == label
        rows, cols = np.flatnonzero(ones.any(1)), np.flatnonzero(ones.any(0))
        if not len(rows):
            digests.pop(k, None)
            continue
        crop = ones[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        where = np.array([rows[0] + e[2], cols[0] + e[0], *crop.shape], np.int64).tobytes()
        digests[k] = hashlib.blake2b(where + np.packbits(crop).tobytes(), digest_size=8).digest()
    return (head, tuple(sorted(digests.items()))) if digests else (None, ())  # empty: on any grid


def differing_slices(segmentation_node, volume_node, key: tuple, other: tuple) -> list[int] | None:
    """The volume's axial slices k where two ``content_key`` fingerprints of a segment differ, from the keys
    alone (no voxel is read); None when a key is on another grid than the volume's (then compare voxels)."""
    if segmentation_node.GetTransformNodeID() != volume_node.GetTransformNodeID():
        return None
    grid = tuple(_matrix(volume_node.GetIJKToRASMatrix).round(6).ravel())
    if any(k[0] not in (None, grid) for k in (key, other)):
        return None
    a, b = dict(key[1]), dict(other[1])
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def covered_slices(mask: np.ndarray) -> list[int]:
    """The axial slices k of a (k, j, i) mask that hold a voxel."""
    return [int(k) for k in np.flatnonzero(np.asarray(mask).reshape(len(mask), -1).any(1))]


def write_result(segmentation_node, segment_id: str, volume_node, result,
                 before_write: Callable[[], None] | None = None) -> bool:
    """Write a ``SegmentationResult`` (bbox + patch) into one segment; see ``write_patch``."""
    return write_patch(segmentation_node, segment_id, volume_node, result.bbox, result.patch, before_write)


def add_prompt_segment(segmentation_node, name: str, phrase: str | None = None, terminology_logic=None) -> str:
    """A new empty segment named ``name`` with the terminology entry and colour of the structure ``phrase``
    (default: the name) names: from Slicer's loaded terminologies (``terminology_logic``), else the project's
    table, else a palette colour."""
    import slicer

    phrase = phrase or name
    segmentation = segmentation_node.GetSegmentation()
    index = segmentation.GetNumberOfSegments()
    entry, color = terminology.entry_and_color(phrase, index, terminology_logic)
    segment_id = segmentation.AddEmptySegment("", name, color)
    if entry:
        segmentation.GetSegment(segment_id).SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
    return segment_id


def doubt_suffix(result_name: str) -> str:
    """The engine's mark on a result delivered against its checks or its model ("(unverified)", "(forced)"), or ""."""
    from medvlsam2.plausibility.vet import FORCED, UNVERIFIED

    name = (result_name or "").strip()
    return next((s for s in (UNVERIFIED, FORCED) if name.endswith(s)), "")


def segment_name_for(prompt: str, result_name: str, count: int) -> str:
    """Segment name for a text prompt: the prompt itself, or "prompt: phrase" when it gave several objects; a
    result the engine marked "(unverified)" or "(forced)" keeps the mark, so nobody takes it for a checked one."""
    prompt, name = prompt.strip(), (result_name or "").strip()
    suffix = doubt_suffix(name)
    if count <= 1 or not name or name.lower() in (prompt.lower(), f"{prompt} {suffix}".lower()):
        return f"{prompt} {suffix}" if suffix and not prompt.endswith(suffix) else prompt
    return f"{prompt}: {name}"


def prompt_lines(text: str) -> list[str]:
    """One prompt per non-empty line, whitespace trimmed, duplicates kept once (in order)."""
    seen: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line and line not in seen:
            seen.append(line)
    return seen
