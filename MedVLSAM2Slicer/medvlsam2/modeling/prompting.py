"""The one chat format shared by training and inference."""

from __future__ import annotations

import torch

IMAGE_TOKEN = "<im_patch>"
SEG_TOKEN = "[SEG]"
REPORT_QUESTION = "Generate a findings report for this CT."
IGNORE = -100


def segment_question(target: str) -> str:
    return f"Segment the {target.strip().rstrip('.')}."


def seg_answer(target: str) -> str:
    """The answer to ``segment_question(target)``: "It is [SEG] <target>." (also the fallback when a model
    emits no [SEG]). The target follows [SEG] so that the next-token loss at [SEG] makes its hidden state
    name the target: after "It is [SEG]." "left kidney" and "right kidney" gave one and the same state."""
    return f"It is {SEG_TOKEN} {target.strip().rstrip('.')}."


def build_inputs(tokenizer, num_image_tokens: int, question: str, answer: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [image block][question][answer][eos] and labels that train only the answer."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    prompt = [image_id] * num_image_tokens + tokenizer.encode(question, add_special_tokens=False)
    target = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id] if answer else []
    ids = torch.tensor(prompt + target)
    labels = torch.tensor([IGNORE] * len(prompt) + target)
    return ids, labels
