"""Visual question answering scores: closed (multiple choice) by the letter rule, open by text metrics."""

from __future__ import annotations

import re
from typing import Sequence

from ..errors import InputError
from .text_metrics import text_scores


def closed_correct(generated: str, letter: str) -> bool:
    """M3D-VQA rule: correct when the text contains the right choice letter followed by "." (e.g. "B.").

    The letter must start a word, so "B." inside "TAB." does not count. As in the field's rule, an
    answer that lists several letters counts as correct when the right one is among them.
    """
    letter = letter.strip().rstrip(".")
    if len(letter) != 1 or not letter.isalpha():
        raise InputError(f"a closed-VQA answer is one choice letter such as 'B', got {letter!r}")
    return re.search(rf"(?<![A-Za-z]){re.escape(letter.upper())}\.", generated) is not None


def closed_accuracy(generated: Sequence[str], letters: Sequence[str], num_choices: Sequence[int] | None = None) -> dict:
    """``{"accuracy", "n", "chance"}``; chance is the mean of 1/number of choices (when given)."""
    if len(generated) != len(letters):
        raise InputError(f"{len(generated)} answers for {len(letters)} questions")
    n = len(letters)
    correct = sum(closed_correct(g, a) for g, a in zip(generated, letters))
    out = {"accuracy": correct / n if n else float("nan"), "n": n}
    if num_choices:
        out["chance"] = sum(1.0 / c for c in num_choices) / len(num_choices)
    return out


def open_scores(generated: Sequence[str], answers: Sequence[str], convention: str = "m3d",
                bertscore_model: str | None = None) -> dict:
    """Open-ended answers scored by the text metrics of ``convention``; adds ``"n"``."""
    out = text_scores(generated, answers, convention, bertscore_model)
    out["n"] = len(answers)
    return out
