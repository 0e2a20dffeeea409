"""Projector: encoder patch tokens -> a fixed number of visual tokens in the LLM's width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ProjectorConfig
from ..errors import InputError


class Projector(nn.Module):
    """"mlp": pool tokens to ``num_tokens`` then Linear-GELU-Linear (M3D-LaMed).
    "mixer": the same pooling followed by one MLP-Mixer block before the output layer (Med3DVLM)."""

    def __init__(self, cfg: ProjectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if cfg.kind not in ("mlp", "mixer"):
            raise InputError(f"unknown projector kind {cfg.kind!r}; use 'mlp' or 'mixer'")
        self.num_tokens = cfg.num_tokens
        self.mixer = cfg.kind == "mixer"
        if self.mixer:
            self.token_norm, self.channel_norm = nn.LayerNorm(in_dim), nn.LayerNorm(in_dim)
            self.token_mlp = nn.Sequential(nn.Linear(cfg.num_tokens, cfg.num_tokens), nn.GELU(),
                                           nn.Linear(cfg.num_tokens, cfg.num_tokens))
            self.channel_mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim))
        self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool1d(tokens.transpose(1, 2), self.num_tokens).transpose(1, 2)
        if self.mixer:
            x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
            x = x + self.channel_mlp(self.channel_norm(x))
        return self.proj(x)
