"""The one chat format shared by training and inference."""

from __future__ import annotations

import torch

IMAGE_TOKEN = "<im_patch>"
SEG_TOKEN = "[SEG]"
SEG_ANSWER = f"It is {SEG_TOKEN}."  # also the fallback answer when a model emits no [SEG] (see MedVLSAM2)
REPORT_QUESTION = "Generate a findings report for this CT."
IGNORE = -100


def segment_question(target: str) -> str:
    return f"Segment the {target.strip().rstrip('.')}."


def build_inputs(tokenizer, num_image_tokens: int, question: str, answer: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [image block][question][answer][eos] and labels that train only the answer."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    prompt = [image_id] * num_image_tokens + tokenizer.encode(question, add_special_tokens=False)
    target = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id] if answer else []
    ids = torch.tensor(prompt + target)
    labels = torch.tensor([IGNORE] * len(prompt) + target)
    return ids, labels
