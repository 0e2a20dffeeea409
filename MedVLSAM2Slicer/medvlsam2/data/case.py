"""The one record every dataset reader and the synthetic generator produce (numpy only, no torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..io.volume import Volume

CHOICE_LETTERS = "ABCD"


_CHOICE = re.compile(r"(?:^|\s)([A-D])\.\s+(.*?)(?=\s[A-D]\.\s|$)")


@dataclass
class ClosedQA:
    """Multiple choice question; ``answer`` is the letter of the right entry of ``choices``."""

    question: str
    choices: list[str]
    answer: str

    def prompt(self) -> str:
        """The question with lettered choices, as the model sees it (M3D-VQA closed style)."""
        options = " ".join(f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(self.choices))
        return f"{self.question} Choices: {options}"

    def target(self) -> str:
        """The answer text a model is trained to emit, e.g. "left (B.)", scored by its "B." (M3D-VQA's letter rule).
        The content comes first: the model decides "left" from the image, then copies the letter that stands before
        "left" in the question; letter-first ("B. left") asks for both in one token, which a small model did not
        learn (closed VQA at the majority answer's rate)."""
        return f"{self.choices[CHOICE_LETTERS.index(self.answer)]} ({self.answer}.)"

    @classmethod
    def from_prompt(cls, text: str) -> "ClosedQA | None":
        """The question and choices of a ``prompt()`` ("Q? Choices: A. x B. y"; answer unknown: ""), None when
        ``text`` lists no choices A, B, ... in order."""
        question, sep, listed = text.rpartition("Choices:")
        found = _CHOICE.findall(listed) if sep else []
        if len(found) < 2 or "".join(letter for letter, _ in found) != CHOICE_LETTERS[:len(found)]:
            return None
        return cls(question.strip(), [c.strip() for _, c in found], "")

    def with_letter(self, answer: str) -> str:
        """A content-first answer ("left ( C. )") with the letter of the choice its content names ("left (B.)"): the
        letter only points at a listed choice, and a small model copies it less reliably than it decides the
        content. ``answer`` unchanged when its content is not exactly one of the choices (letter-first answers too)."""
        content = answer.split("(")[0].strip().rstrip(".").lower()
        hits = [i for i, c in enumerate(self.choices) if c.lower() == content]
        if len(hits) != 1:
            return answer
        return ClosedQA(self.question, self.choices, CHOICE_LETTERS[hits[0]]).target()


@dataclass
class OpenQA:
    question: str
    answer: str


@dataclass
class Referring:
    """A referring expression ("the lesion in the liver") and the label value it denotes."""

    expression: str
    label: int
    # the name a segmentation answer gives the target, its kind first ("cyst in the left kidney" for "left kidney
    # hypodense region"); "" = the expression itself. Used by recipes with ``answer_finding_kind``
    answer: str = ""


@dataclass
class RegionQA:
    """A question about one region: the voxels whose label is in ``values`` (``component`` n > 0: only the
    n-th connected component of them, ``scipy.ndimage.label`` order); the model gets the region as input."""

    question: str
    answer: str
    values: tuple[int, ...]
    component: int = 0

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """Boolean mask [k, j, i] of the region in ``labels``."""
        m = np.isin(labels, self.values)
        if self.component:
            from scipy.ndimage import label

            m = label(m)[0] == self.component
        return m


@dataclass
class CTCase:
    """One CT with whatever annotations its dataset has.

    ``volume.array`` holds Hounsfield units ``[k, j, i]``; ``labels`` (uint8, same shape) is a label map
    whose values are named by ``label_names`` (0 = background is never listed).
    """

    case_id: str
    volume: Volume
    labels: np.ndarray | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    report: str | None = None
    vqa_closed: list[ClosedQA] = field(default_factory=list)
    vqa_open: list[OpenQA] = field(default_factory=list)
    referring: list[Referring] = field(default_factory=list)  # label 0: the expression names something absent
    region_qa: list[RegionQA] = field(default_factory=list)

    def mask(self, name: str) -> np.ndarray:
        """Binary uint8 mask of the structure called ``name`` (empty if absent from this case)."""
        values = [v for v, n in self.label_names.items() if n == name]
        # several expressions may name one label value ("cyst in the right kidney", "the renal cyst")
        values = values or [r.label for r in self.referring if r.expression == name and r.label]
        if self.labels is None:
            raise KeyError(f"case {self.case_id} has no label map")
        return np.isin(self.labels, values).astype(np.uint8)
