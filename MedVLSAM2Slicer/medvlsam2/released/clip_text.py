"""SegVol's text tower: a CLIP ViT-B/32 text transformer (transformers' ``CLIPTextModel``), the end-of-text
token's final state, and ``dim_align`` (Linear 512 -> 768) into the decoder's prompt space.

Prompt as trained: ``"A computerized tomography of a {}."``. SegVol built ``CLIPTextConfig()`` whose old
default pooled at ``argmax(input_ids)``, which for CLIP's vocabulary is the first end-of-text token; we pool at
the first end-of-text token of the folder's tokenizer, the same position.
"""

from __future__ import annotations

import torch
from torch import nn

PROMPT = "A computerized tomography of a {}."
MAX_TARGET_CHARS = 200  # CLIP's context is 77 tokens


class ClipTextTower(nn.Module):
    def __init__(self, config, out_dim: int = 768) -> None:
        from transformers import CLIPTextModel

        super().__init__()
        self.clip_text_model = CLIPTextModel(config)
        self.dim_align = nn.Linear(config.hidden_size, out_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, eos_id: int) -> torch.Tensor:
        hidden = self.clip_text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if not bool((input_ids == eos_id).any(dim=-1).all()):
            raise ValueError("the tokenizer did not end the prompt with its end-of-text token")
        pos = (input_ids == eos_id).int().argmax(dim=-1)
        return self.dim_align(hidden[torch.arange(hidden.shape[0], device=hidden.device), pos])
