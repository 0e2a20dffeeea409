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
measured, never generated: the diameter of the sphere of the finding's volume, the diagonal of the spleen's box
(called enlarged from ``SPLENOMEGALY_CM``); a generated report's lesion and cyst sizes are replaced by the measured
ones, and its sentences about the spleen's size say what the measurement says (``grounded_stream``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..io.volume import Volume
from ..plausibility.checks import SPECK_VOXELS, centroid_x_mm, slice_spans

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
# A spleen whose box diagonal reaches this many cm is called enlarged: on the reference masks of training phantoms
# 20000-20059 normal spleens measure 11-15 cm and enlarged ones 16-18 cm (phantom anatomy, not a clinical threshold).
SPLENOMEGALY_CM = 16


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
    spleen_cm: int | None = None

    @property
    def spleen_enlarged(self) -> bool | None:
        """Whether the measured spleen is enlarged (``SPLENOMEGALY_CM``); None when no spleen was measured."""
        return None if self.spleen_cm is None else self.spleen_cm >= SPLENOMEGALY_CM


def findings_context(volume: Volume, masks: dict[str, np.ndarray], body: np.ndarray,
                     lesion_min_slices: int = 1) -> SegmentedFindings:
    """The findings for ``masks`` (name in ``CONTEXT_TARGETS`` -> [k, j, i] mask; a missing or empty one is "none")
    on ``volume``; ``body`` is the patient's voxels (``plausibility.body_mask``), whose centre is the midline.
    ``lesion_min_slices``: a lesion part on fewer slices is not a lesion (``plausibility.checks.MIN_PART_SLICES`` for
    segmented masks: on phantoms 20400-20427 the count was then right for 25 of 28, for 20 counting every part)."""
    from scipy.ndimage import label

    def get(name: str) -> np.ndarray:
        m = masks.get(name)
        return np.zeros(volume.shape, bool) if m is None else np.asarray(m) > 0

    parts, lesion_mm, cyst_mm, spleen_cm = [], None, None, None
    lesion, liver = get("liver lesion"), get("liver")
    comps, n = label(lesion)
    sizes = np.bincount(comps.ravel())[1:] if n else np.zeros(0, int)
    slices = slice_spans(comps)
    kept = [c + 1 for c in np.argsort(sizes)[::-1] if sizes[c] >= SPECK_VOXELS and slices[c] >= lesion_min_slices]
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
        # Its largest part: a speck slices away stretches the box (on phantoms 20400-20429 the whole text-segmented
        # mask measured up to 2.4 cm more than the reference mask, its largest part at most 1.6 cm more).
        comps, _ = label(spleen)
        spleen = comps == np.argmax(np.bincount(comps.ravel())[1:]) + 1
        idx = np.argwhere(spleen) * np.array(volume.spacing[::-1])
        extent = idx.max(0) - idx.min(0) + np.array(volume.spacing[::-1])
        spleen_cm = int(round(float(np.linalg.norm(extent)) / 10))
        parts.append(f"spleen {spleen_cm} cm")
    sentence = "findings : " + " , ".join(parts) + " ."  # the word-level vocabulary has "," (not ";")
    return SegmentedFindings(sentence, lesion_mm, cyst_mm, spleen_cm)


_SPLEEN = re.compile(r"\b(spleen|splenomegaly)\b")
_NOT_ONLY_SPLEEN = re.compile(r"\b(liver|hepatic|lobe|kidneys?|renal|cysts?|lesions?|pancreas|aorta|stomach|impression)\b")
_IMPRESSION = re.compile(r"(\s*impression\s*:\s*)(.*?)(\s*\.?\s*)$", re.IGNORECASE | re.DOTALL)
_NOTHING = re.compile(r"\b(no acute abnormality|normal study)\b")


def _impression_with_spleen(text: str, enlarged: bool) -> str:
    """An impression ("impression : liver lesion, left renal cyst.") with splenomegaly listed as measured: after a
    liver lesion, where the reference reports list it, or taken out ("no acute abnormality" when nothing is left)."""
    lead, listed, end = _IMPRESSION.match(text).groups()
    items = [i.strip() for i in listed.split(",") if i.strip() and not _NOTHING.search(i.lower())
             and "splenomegaly" not in i.lower()]
    if enlarged:
        items.insert(1 if items and "liver" in items[0].lower() else 0, "splenomegaly")
    return lead + (", ".join(items) or "no acute abnormality") + end


def ground_sentence(text: str, found: SegmentedFindings) -> str:
    """``text`` (one generated sentence) with the size it gives a liver lesion or a renal cyst replaced by the measured
    one; a sentence about the spleen alone restated from the measured spleen (enlarged from ``SPLENOMEGALY_CM``;
    without a length, as the diagonal the segmenter measures is not the length a report gives), and the impression
    listing splenomegaly as measured: a report states what the segmentation measured, never sizes the language model
    made up."""
    from .findings import SIZE, extract_findings

    low = text.lower()
    enlarged = found.spleen_enlarged
    if enlarged is not None:
        if _IMPRESSION.match(text):
            return text if enlarged == ("splenomegaly" in low) else _impression_with_spleen(text, enlarged)
        if _SPLEEN.search(low) and not _NOT_ONLY_SPLEEN.search(low):
            said = "the spleen is enlarged." if enlarged else "the spleen is normal in size."
            body = text.lstrip()
            return text[:len(text) - len(body)] + (said.capitalize() if body[:1].isupper() else said)
    for f in extract_findings(text):
        size = {"liver lesion": found.lesion_mm, "renal cyst": found.cyst_mm}.get(f.kind)
        if f.present and f.size_mm is not None and size is not None:
            return SIZE.sub(f"{size} mm", text, count=1)
    return text


_SPLEEN_SIZE_QUESTION = re.compile(r"^(?=.*\b(spleen|splenic)\b)(?=.*\b(size|sized|enlarged|large|big)\b)|\bsplenomegaly\b")


def measured_answer(question: str, found: SegmentedFindings) -> str | None:
    """The answer the measured spleen gives to a question about the spleen's size ("Is the spleen enlarged?", "What is
    the size of the spleen? Choices: ..."), enlarged from ``SPLENOMEGALY_CM``; None for any other question (the language
    model answers). Reading "spleen 19 cm" in the findings sentence, the demo language model still answered "normal"
    for enlarged spleens, so a question the measurement decides is not left to it."""
    from ..data.case import ClosedQA

    closed = ClosedQA.from_prompt(question)
    low = (closed.question if closed else question).lower()
    enlarged = found.spleen_enlarged
    if enlarged is None or not _SPLEEN_SIZE_QUESTION.search(low) or _NOT_ONLY_SPLEEN.search(low):
        return None
    if re.match(r"\s*(is|does|has)\b", low):  # yes or no, and "Is the spleen normal in size?" asks the opposite
        answer = "yes" if enlarged != ("normal" in low) else "no"
    else:
        answer = "enlarged" if enlarged else "normal"
    return None if closed and answer not in (c.lower() for c in closed.choices) else answer


def grounded_stream(pieces: Iterator[str], found: SegmentedFindings) -> Iterator[str]:
    """A generated report streamed sentence by sentence (up to each "."), every sentence through ``ground_sentence``."""
    buffer = ""
    for piece in pieces:
        buffer += piece
        while True:
            end = re.search(r"(?<!\d)\.(?!\d)", buffer)
            if end is None:
                break
            yield ground_sentence(buffer[:end.end()], found)
            buffer = buffer[end.end():]
    if buffer:
        yield ground_sentence(buffer, found)


def context_from_labels(volume: Volume, labels: np.ndarray) -> str:
    """The sentence from a synthetic phantom's label map (``data.synthetic.ORGANS`` values), as training reads it."""
    from ..data.synthetic import STRUCTURE_LABELS
    from ..plausibility import body_mask

    masks = {name: np.isin(labels, STRUCTURE_LABELS[name]) for name in CONTEXT_TARGETS}
    return findings_context(volume, masks, body_mask(volume)).sentence


def with_context(context: str, question: str) -> str:
    """The question as the model reads it: the findings sentence, then the question."""
    return f"{context} {question}"
