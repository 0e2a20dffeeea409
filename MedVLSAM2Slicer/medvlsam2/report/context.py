"""Findings context: what the segmenter found and measured, in words the language model reads before a question.

A 15 mm lesion fills a fraction of one of the 3D encoder's 16x16x4-voxel patches, and the demo encoder did not learn
to tell it apart (a probe on its visual tokens told phantoms with a lesion from those without at chance, after
training with an auxiliary patch-label loss; Testing/Benchmarks/RESULTS.md). The segmenter sees every slice at full
resolution. So a model whose config sets ``findings_context`` answers and reports with one sentence in front of the
question, built from masks by ``findings_context``:

    findings : two liver lesions 21 mm right lobe , cyst 17 mm left kidney , spleen 11 cm .

Training builds it from the reference masks (``context_from_labels``), the Session from its own text segmentation of
``CONTEXT_TARGETS`` (vetted like any text result: what the checks withhold is not in the sentence; a finding named by
several phrasings needs two to agree). Sizes are
measured, never generated: the diameter of the sphere of the finding's volume, the diagonal of the spleen's box;
a generated report's lesion and cyst sizes are replaced by the measured ones (``grounded_stream``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..io.volume import Volume
from ..plausibility.checks import SPECK_VOXELS, centroid_x_mm

# Segmented before a question, each by its phrasings; a target with several counts where at least
# ``CONTEXT_AGREEMENT`` of them find it (the union of their masks): on phantoms 20400-20427 the bare "liver lesion"
# found 13 of 15 lesions, two of these three 14 with no false one; any one of them drew a lesion in 1 of 13 livers
# without one.
CONTEXT_TARGETS: dict[str, tuple[str, ...]] = {
    "liver": ("liver",), "spleen": ("spleen",),
    "liver lesion": ("liver lesion", "lesion in the liver", "hypodense liver lesion"), "kidney cyst": ("kidney cyst",)}
CONTEXT_AGREEMENT = 2
_COUNT = {1: "one", 2: "two", 3: "three"}
LOBE_MARGIN_MM = 10.0  # the phantoms' lobe rule: a lesion centred left of the liver's centre + 10 mm is "left"


def _diameter_mm(volume: Volume, mask: np.ndarray) -> int:
    """Diameter of the sphere with the mask's volume."""
    ml = float(mask.sum()) * float(np.prod(volume.spacing))
    return int(round((6.0 * ml / np.pi) ** (1.0 / 3.0)))


@dataclass(frozen=True)
class SegmentedFindings:
    """What the segmenter found, measured: the findings sentence and the sizes the report is grounded on."""

    sentence: str
    lesion_mm: int | None = None  # the largest liver lesion
    cyst_mm: int | None = None


def findings_context(volume: Volume, masks: dict[str, np.ndarray], body: np.ndarray) -> SegmentedFindings:
    """The findings for ``masks`` (name in ``CONTEXT_TARGETS`` -> [k, j, i] mask; a missing or empty one is "none")
    on ``volume``; ``body`` is the patient's voxels (``plausibility.body_mask``), whose centre is the midline."""
    from scipy.ndimage import label

    def get(name: str) -> np.ndarray:
        m = masks.get(name)
        return np.zeros(volume.shape, bool) if m is None else np.asarray(m) > 0

    parts, lesion_mm, cyst_mm = [], None, None
    lesion, liver = get("liver lesion"), get("liver")
    comps, n = label(lesion)
    sizes = np.bincount(comps.ravel())[1:] if n else np.zeros(0, int)
    kept = [c + 1 for c in np.argsort(sizes)[::-1] if sizes[c] >= SPECK_VOXELS]
    if kept:
        largest = comps == kept[0]
        centre = centroid_x_mm(volume, liver | lesion)
        lobe = "right" if centroid_x_mm(volume, largest) < centre + LOBE_MARGIN_MM else "left"
        count, lesion_mm = _COUNT[min(len(kept), 3)], _diameter_mm(volume, largest)
        parts.append(f"{count} liver lesion{'s' if len(kept) > 1 else ''} {lesion_mm} mm {lobe} lobe")
    else:
        parts.append("no liver lesion")
    cyst = get("kidney cyst")
    if cyst.sum() >= SPECK_VOXELS and body.any():
        side = "left" if centroid_x_mm(volume, cyst) > centroid_x_mm(volume, body) else "right"
        cyst_mm = _diameter_mm(volume, cyst)
        parts.append(f"cyst {cyst_mm} mm {side} kidney")
    else:
        parts.append("no cyst")
    spleen = get("spleen")
    if spleen.any():
        idx = np.argwhere(spleen) * np.array(volume.spacing[::-1])
        extent = idx.max(0) - idx.min(0) + np.array(volume.spacing[::-1])
        parts.append(f"spleen {int(round(float(np.linalg.norm(extent)) / 10))} cm")
    sentence = "findings : " + " , ".join(parts) + " ."  # the word-level vocabulary has "," (not ";")
    return SegmentedFindings(sentence, lesion_mm, cyst_mm)


def ground_sizes(text: str, found: SegmentedFindings) -> str:
    """``text`` (one generated sentence) with the size it gives a liver lesion or a renal cyst replaced by the measured
    one: a report states the sizes the segmentation measured, never sizes the language model made up."""
    from .findings import SIZE, extract_findings

    for f in extract_findings(text):
        size = {"liver lesion": found.lesion_mm, "renal cyst": found.cyst_mm}.get(f.kind)
        if f.present and f.size_mm is not None and size is not None:
            return SIZE.sub(f"{size} mm", text, count=1)
    return text


def grounded_stream(pieces: Iterator[str], found: SegmentedFindings) -> Iterator[str]:
    """A generated report streamed sentence by sentence (up to each "."), every sentence through ``ground_sizes``."""
    buffer = ""
    for piece in pieces:
        buffer += piece
        while True:
            end = re.search(r"(?<!\d)\.(?!\d)", buffer)
            if end is None:
                break
            yield ground_sizes(buffer[:end.end()], found)
            buffer = buffer[end.end():]
    if buffer:
        yield ground_sizes(buffer, found)


def context_from_labels(volume: Volume, labels: np.ndarray) -> str:
    """The sentence from a synthetic phantom's label map (``data.synthetic.ORGANS`` values), as training reads it."""
    from ..data.synthetic import STRUCTURE_LABELS
    from ..plausibility import body_mask

    masks = {name: np.isin(labels, STRUCTURE_LABELS[name]) for name in CONTEXT_TARGETS}
    return findings_context(volume, masks, body_mask(volume)).sentence


def with_context(context: str, question: str) -> str:
    """The question as the model reads it: the findings sentence, then the question."""
    return f"{context} {question}"
