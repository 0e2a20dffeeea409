"""The one chat format shared by training and inference."""

from __future__ import annotations

import re

import torch

IMAGE_TOKEN = "<im_patch>"
SEG_TOKEN = "[SEG]"
REGION_TOKEN = "<region>"  # placeholder whose embedding is replaced by the region encoder's output
REPORT_QUESTION = "Generate a findings report for this CT."
IGNORE = -100


FORCED = "(forced)"  # suffix of an object drawn although the model said the target is not there

def segment_question(target: str) -> str:
    return f"Segment the {_bare(target)}."


def seg_answer(target: str) -> str:
    """The answer to ``segment_question(target)`` when the target is there: "It is [SEG] <target>.". The
    target follows [SEG] so that the next-token loss at [SEG] makes its hidden state name the target:
    after "It is [SEG]." "left kidney" and "right kidney" gave one and the same state."""
    return f"It is {SEG_TOKEN} {_bare(target)}."


def no_object_answer(target: str) -> str:
    """The answer to ``segment_question(target)`` when the image does not show the target (no [SEG])."""
    return f"There is no {_bare(target)}."


def region_question(question: str) -> str:
    """A question about a region: the region reaches the model as one embedding at ``REGION_TOKEN``."""
    return f"About this region {REGION_TOKEN} : {question.strip()}"


def _bare(target: str) -> str:
    target = target.strip().rstrip(".")
    return target[4:] if target.lower().startswith("the ") else target


_SPLIT = re.compile(r"\s*(?:\n|;|,|\band\b|\bplus\b)\s*", re.IGNORECASE)


def split_targets(prompt: str) -> list[str]:
    """The structures a prompt names, one object each: lines, ";", "," and "and" separate targets
    ("liver and spleen" -> ["liver", "spleen"]); a leading "the" and a final "." are dropped;
    duplicates are kept once, in order."""
    out: list[str] = []
    for part in _SPLIT.split(prompt):
        part = _bare(part)
        if part and part.lower() not in (p.lower() for p in out):
            out.append(part)
    return out


def build_inputs(tokenizer, num_image_tokens: int, question: str, answer: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [image block][question][answer][eos] and labels that train only the answer."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    prompt = [image_id] * num_image_tokens + tokenizer.encode(question, add_special_tokens=False)
    target = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id] if answer else []
    ids = torch.tensor(prompt + target)
    labels = torch.tensor([IGNORE] * len(prompt) + target)
    return ids, labels
