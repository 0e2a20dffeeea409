"""Projector: encoder tokens -> a fixed number of visual tokens in the LLM's width.

"mlp" (M3D-LaMed): pool one token stream to ``num_tokens``, then Linear-GELU-Linear.
"mixer" (Med3DVLM): a dual-stream MLP-Mixer over the DCFormer's low- and high-level tokens; each stream is
mixed along tokens and channels layer by layer, then the two are concatenated (128 + 128 = 256 tokens in
the released model). State-dict keys (``low_mixer.*``, ``high_mixer.*``) are those of the released projector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ProjectorConfig
from ..errors import InputError


class Projector(nn.Module):
    """"mlp": [B, N, in_dim] -> pool to ``num_tokens`` -> Linear-GELU-Linear -> [B, num_tokens, out_dim]
    (``mlp_first``: Linear-GELU-Linear on each of the N tokens, then pool)."""

    def __init__(self, cfg: ProjectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.cfg = cfg  # the model's own config: a change to num_tokens or mlp_first applies (no weight depends on them)
        self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pool = lambda x: F.adaptive_avg_pool1d(x.transpose(1, 2), self.cfg.num_tokens).transpose(1, 2)  # noqa: E731
        return pool(self.proj(tokens)) if self.cfg.mlp_first else self.proj(pool(tokens))


class _StackedMLP(nn.Module):
    """Linear, then (GELU, Linear) x (depth - 1) on the last axis."""

    def __init__(self, in_dim: int, out_dim: int, depth: int) -> None:
        super().__init__()
        self.mm_projector = nn.Sequential(nn.Linear(in_dim, out_dim),
                                          *[nn.Sequential(nn.GELU(), nn.Linear(out_dim, out_dim)) for _ in range(depth - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(x)


class _MixerLayer(nn.Module):
    """[B, n_in, c_in] -> LayerNorm, token MLP n_in->n_out -> LayerNorm, channel MLP c_in->c_out -> [B, n_out, c_out].
    No residuals: the token and channel counts change in every layer."""

    def __init__(self, n_in: int, c_in: int, n_out: int, c_out: int, depth: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c_in), nn.LayerNorm(c_in)
        self.mlp1 = _StackedMLP(n_in, n_out, depth)
        self.mlp2 = _StackedMLP(c_in, c_out, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp1(self.ln1(x).transpose(1, 2)).transpose(1, 2)
        return self.mlp2(self.ln2(x))


class MixerProjector(nn.Module):
    """(low [B, N_low, C_low], high [B, N_high, C_high]) -> [B, low_tokens[-1] + high_tokens[-1], out_dim].

    Layer i of each stream outputs ``out_dim / 2**(L-1-i)`` channels (L layers), so the width doubles up to
    ``out_dim``; the token counts follow ``low_tokens`` / ``high_tokens``.
    """

    def __init__(self, cfg: ProjectorConfig, in_shapes: list[tuple[int, int]], out_dim: int) -> None:
        super().__init__()
        depth = len(cfg.low_tokens)
        if len(in_shapes) != 2:
            raise InputError("the 'mixer' projector needs the two token streams of the 'dcformer' encoder")
        if depth < 1 or len(cfg.high_tokens) != depth or cfg.mlp_depth < 1:
            raise InputError(f"mixer low_tokens {cfg.low_tokens} and high_tokens {cfg.high_tokens} need the same "
                             f"number (>= 1) of layers, and mlp_depth >= 1 (got {cfg.mlp_depth})")
        if out_dim % 2 ** depth:
            raise InputError(f"the LLM width {out_dim} must be divisible by 2**{depth} for a {depth}-layer mixer")
        if cfg.num_tokens != cfg.low_tokens[-1] + cfg.high_tokens[-1]:
            raise InputError(f"mixer num_tokens {cfg.num_tokens} must equal low_tokens[-1] + high_tokens[-1] "
                             f"= {cfg.low_tokens[-1] + cfg.high_tokens[-1]}")
        self.num_tokens = cfg.num_tokens
        widths = [out_dim // 2 ** (depth - 1 - i) for i in range(depth)]

        def stream(shape: tuple[int, int], tokens: tuple[int, ...]) -> nn.ModuleList:
            n, c = shape
            return nn.ModuleList(_MixerLayer(*((n, c) if i == 0 else (tokens[i - 1], widths[i - 1])), tokens[i], widths[i],
                                             cfg.mlp_depth) for i in range(depth))

        self.low_mixer = stream(in_shapes[0], tuple(cfg.low_tokens))
        self.high_mixer = stream(in_shapes[1], tuple(cfg.high_tokens))

    def forward(self, streams: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        low, high = streams
        for low_layer, high_layer in zip(self.low_mixer, self.high_mixer):
            low, high = low_layer(low), high_layer(high)
        return torch.cat([low, high], dim=1)


def build_projector(cfg: ProjectorConfig, in_shapes: list[tuple[int, int]], out_dim: int) -> nn.Module:
    """``in_shapes``: the encoder's ``output_shapes`` ((tokens, channels) per stream)."""
    if cfg.kind == "mlp":
        if len(in_shapes) != 1:
            raise InputError("the 'mlp' projector takes one token stream; use projector kind 'mixer' with 'dcformer'")
        return Projector(cfg, in_shapes[0][1], out_dim)
    if cfg.kind == "mixer":
        return MixerProjector(cfg, in_shapes, out_dim)
    raise InputError(f"unknown projector kind {cfg.kind!r}; use 'mlp' or 'mixer'")
