"""Plausibility of a named mask against the priors table (``priors.py``): where it lies (inside the body, inside the
organ a finding is named with), how large it is and how dense. Each check gives one line saying why a mask cannot be
what it is called, or None. numpy + scipy only."""

from __future__ import annotations

import numpy as np

from ..io.terminology import match
from ..io.volume import Volume
from .priors import any_structure, focal_finding, hypodense, prior_for

BODY_HU = -500.0  # air is -1000 HU, fat -100 HU: the body is what is denser than this (per-slice holes filled)
WITHIN_MIN = 0.5  # at least half of a finding must lie in (or on the border of) the organ it is named with
SPECK_VOXELS = 3  # a finding (or a finding's component, in a report) of fewer voxels is a speck, not a finding
# A part of a segmented mask on fewer adjacent slices is a stray beside a deeper part
# (``session.language.without_strays``) and is not counted as a lesion (``report.context.findings_context``), as a
# reader confirms a finding on the next slice. On phantoms 20400-20427: 18 of the 20 lesion fragments (of 3 voxels or
# more) in the union of the phrasings' masks lie on one slice, the 20 real lesions found on 2 to 8 (reference masks
# hold no fragments, and a 9 mm lesion can lie on one 5 mm slice, so they count every part).
MIN_PART_SLICES = 2


def slice_spans(parts: np.ndarray) -> list[int]:
    """For each part of a labelled [K, J, I] map (``scipy.ndimage.label``, parts 1..n), how many slices it spans."""
    from scipy.ndimage import find_objects

    return [box[0].stop - box[0].start for box in find_objects(parts)]


def body_mask(volume: Volume) -> np.ndarray:
    """The patient: voxels above ``BODY_HU``, each axial slice's enclosed holes (bowel gas, lungs) filled."""
    from scipy import ndimage

    dense = np.asarray(volume.array) > BODY_HU
    return np.stack([ndimage.binary_fill_holes(s) for s in dense])


def _pct(x: float) -> str:
    return f"{100 * x:.2g} %" if x < 0.1 else f"{100 * x:.0f} %"


def doubt(name: str, mask: np.ndarray, volume: Volume, organs: dict[str, np.ndarray] | None = None,
          body: np.ndarray | None = None) -> str | None:
    """Why ``mask`` (on ``volume``'s grid) cannot be the structure ``name`` names, in one line; None when plausible.

    ``organs``: other segments by name (a finding is checked against the one it is named with, when present);
    ``body``: ``body_mask(volume)`` when the caller has it already."""
    m = np.asarray(mask) > 0
    n = int(m.sum())
    if n == 0:
        return None
    general = any_structure()
    body = body_mask(volume) if body is None else body
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    ml, share = n * voxel_ml, n / m.size
    hu = float(np.median(np.asarray(volume.array)[m]))
    prior, organ_prior = prior_for(name)
    if prior is not None and prior.finding and n < SPECK_VOXELS:
        return f"'{name}': {n} voxel{'s' if n > 1 else ''}, a speck, not a finding"
    if prior is None:
        reason = _outside_body(name, m, body, general.outside_body_max)
        if reason:
            return reason
        lo, hi = general.hu_median
        return None if lo <= hu <= hi else f"'{name}': median {hu:.0f} HU, no tissue is outside {lo:g}..{hi:g} HU"
    lo, hi = prior.volume_ml
    if ml > hi:
        return (f"'{name}': {_pct(share)} of the volume ({ml:.0f} mL), expected < {_pct(hi / (m.size * voxel_ml))} "
                f"(at most {hi:g} mL for a {prior.structure.lower()})")
    reason = _outside_body(name, m, body, general.outside_body_max) or _wrong_side(name, m, body, volume)
    if reason:
        return reason
    cut = bool(m[0].any() or m[-1].any())  # the scan may cut the structure: its lower size bound does not apply
    if ml < lo and not cut:
        return f"'{name}': {ml:.1f} mL, expected at least {lo:g} mL for a {prior.structure.lower()}"
    lo, hi = prior.hu_median
    if not lo <= hu <= hi:
        what = "fluid density" if prior.structure == "Cyst" else f"a {prior.structure.lower()}"
        return f"'{name}': median {hu:.0f} HU, expected {lo:g}..{hi:g} HU for {what}"
    if prior.finding:
        around = _around(m, volume, body, hypodense().shell_voxels)  # one shell for both density rules
        reason = _not_darker(name, hu, around) or _not_distinct(name, hu, around)
        if reason:
            return reason
    if prior.finding and organ_prior is not None and organs:
        reason = _outside_organ(name, m, organs)
        if reason:
            return reason
    return None


def _around(m: np.ndarray, volume: Volume, body: np.ndarray, voxels: int) -> float | None:
    """The median HU of the tissue in a shell ``voxels`` thick around ``m`` (grown in-plane: slices can be thick)."""
    from scipy import ndimage

    plane = np.zeros((3, 3, 3), bool)
    plane[1] = True
    shell = ndimage.binary_dilation(m, plane, iterations=voxels) & ~m & body
    return float(np.median(np.asarray(volume.array)[shell])) if shell.any() else None


def _not_darker(name: str, hu: float, around: float | None) -> str | None:
    """A finding named hypodense (or a cyst) must be darker than the tissue in a thin shell around it."""
    import re

    if around is None or not re.search(hypodense().words, name.lower()) or hu < around:
        return None
    return (f"'{name}': median {hu:.0f} HU, not darker than the tissue around it ({around:.0f} HU); a hypodense "
            "finding or cyst is")


def _not_distinct(name: str, hu: float, around: float | None) -> str | None:
    """A focal finding must differ in attenuation from the tissue in a thin shell around it."""
    least = focal_finding().min_contrast_hu
    if around is None or abs(hu - around) >= least:
        return None
    return (f"'{name}': median {hu:.0f} HU, within {least:g} HU of the tissue around it ({around:.0f} HU); a focal "
            "finding differs from the tissue it lies in")


def _outside_organ(name: str, m: np.ndarray, organs: dict[str, np.ndarray]) -> str | None:
    """A finding must lie within the organ it is named with (same organ and side), when that organ is segmented; a
    finding named without a side ("kidney cyst") may lie in either segment of its organ."""
    from scipy import ndimage

    want = match(name)
    names, organ = [], np.zeros_like(m)
    for other, om in organs.items():
        got = match(other)
        if got is None or got.region is not None or got.term != want.region:
            continue
        if want.region_modifier is not None and got.modifier not in (None, want.region_modifier):
            continue
        names.append(other)
        organ |= ndimage.binary_dilation(np.asarray(om) > 0, iterations=2)  # a finding bulges at the organ's border
    if not names:
        return None
    inside = float((m & organ).sum()) / float(m.sum())
    if inside < WITHIN_MIN:
        where = " or ".join(f"'{n}'" for n in names)
        return f"'{name}': only {_pct(inside)} of it lies in the segmented {where}, expected all of it"
    return None


def _outside_body(name: str, m: np.ndarray, body: np.ndarray, most: float) -> str | None:
    outside = float((m & ~body).sum()) / float(m.sum())
    return f"'{name}': {_pct(outside)} of the mask lies outside the body (air), expected none" if outside > most else None


SIDE_MARGIN_MM = 10.0  # the midline band: voxels within this of the body's centre lie on neither side
WRONG_SIDE_MAX = 0.25  # at most this share of a sided structure may lie past the band on the other side


def _x_mm(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """LPS x (grows to the patient's left) of each voxel of a [k, j, i] mask, in mm."""
    k, j, i = np.nonzero(mask)
    a = volume.ijk_to_lps()[0]
    return a[0] * i + a[1] * j + a[2] * k + a[3]


def centroid_x_mm(volume: Volume, mask: np.ndarray) -> float:
    """LPS x (grows to the patient's left) of a [k, j, i] mask's centroid, in mm."""
    k, j, i = (float(c.mean()) for c in np.nonzero(mask))
    return float((volume.ijk_to_lps() @ np.array([i, j, k, 1.0]))[0])


def _wrong_side(name: str, m: np.ndarray, body: np.ndarray, volume: Volume) -> str | None:
    """A structure named right (left) must lie on the patient's right (left), every part of it: a mask with pieces
    on both sides has its centre near the midline (held-out cysts asked on the wrong side were delivered so)."""
    from ..io.terminology import LEFT, RIGHT

    found = match(name)
    side = found.modifier or found.region_modifier if found else None
    if side not in (LEFT, RIGHT) or not body.any():
        return None
    x = _x_mm(volume, m) - centroid_x_mm(volume, body)  # > 0: on the patient's left
    across = float(np.mean(x > SIDE_MARGIN_MM if side == RIGHT else x < -SIDE_MARGIN_MM))
    if across > WRONG_SIDE_MAX:
        lies = "left" if side == RIGHT else "right"
        return f"'{name}': {_pct(across)} of it lies on the patient's {lies} side (more than {SIDE_MARGIN_MM:g} mm " \
               "from the midline)"
    return None
