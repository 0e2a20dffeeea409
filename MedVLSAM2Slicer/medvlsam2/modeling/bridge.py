"""[SEG] hidden state -> Linear-ReLU-Linear -> SAM2 sparse prompt tokens (M3D-LaMed / Sa2VA)."""

from __future__ import annotations

import torch
from torch import nn


class SegBridge(nn.Module):
    def __init__(self, llm_hidden: int, bridge_hidden: int, num_tokens: int = 1, prompt_dim: int = 256) -> None:
        super().__init__()
        self.num_tokens, self.prompt_dim = num_tokens, prompt_dim
        self.mlp = nn.Sequential(nn.Linear(llm_hidden, bridge_hidden), nn.ReLU(inplace=True),
                                 nn.Linear(bridge_hidden, num_tokens * prompt_dim))

    def forward(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        """[N, llm_hidden] -> [N, num_tokens, prompt_dim]."""
        return self.mlp(seg_hidden).view(-1, self.num_tokens, self.prompt_dim)
