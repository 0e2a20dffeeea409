"""3D CT encoders: MONAI ViT (M3D-LaMed; patch tokens [B, N, hidden]) or Med3DVLM's DCFormer (two token streams).

Each encoder has ``output_shapes``: the (tokens, channels) of each stream it returns, for the projector.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import VisionConfig
from ..errors import InputError


class DecomposedConv3d(nn.Module):
    """Three 1D convolutions (along each axis), each followed by BatchNorm, summed: DCFormer's k^3 replacement.

    [B, in, X, Y, Z] -> [B, out, X', Y', Z']; ``c1``/``c2``/``c3`` run along X/Y/Z (names of the released weights).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        pad = kernel // 2

        def branch(axis: int) -> nn.Sequential:
            size, padding = [1, 1, 1], [0, 0, 0]
            size[axis], padding[axis] = kernel, pad
            return nn.Sequential(nn.Conv3d(in_dim, out_dim, tuple(size), stride=stride, padding=tuple(padding),
                                           groups=groups), nn.BatchNorm3d(out_dim))

        self.c1, self.c2, self.c3 = branch(0), branch(1), branch(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c1(x) + self.c2(x) + self.c3(x)


class _ChannelMLP(nn.Module):
    """Linear-GELU-Linear on the last axis (dropout slots kept at p=0 so the layer indices match: 0 and 3)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class _Stem(nn.Sequential):
    """Four decomposed convs, the first with stride 4. The released stem has no activation between them:
    upstream's GELU argument lands in the ``norm`` slot (which only switches BatchNorm on), so none is applied."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(DecomposedConv3d(in_dim, out_dim, 7, stride=4),
                         *[DecomposedConv3d(out_dim, out_dim, 3) for _ in range(3)])


class _ConvBlock(nn.Module):
    """ConvNeXt-style block: [max-pool /2 + 1x1x1 projection], depthwise decomposed conv, channel MLP x
    layer scale, residual."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        if downsample:
            self.pool = nn.MaxPool3d(3, 2, 1)
            self.proj = nn.Conv3d(in_dim, out_dim, 1, bias=False)
        self.dwconv = DecomposedConv3d(out_dim, out_dim, kernel, groups=out_dim)
        self.mlp = _ChannelMLP(out_dim, 4 * out_dim)
        self.scale = nn.Parameter(torch.full((out_dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = self.proj(self.pool(x))
        y = self.mlp(self.dwconv(x).permute(0, 2, 3, 4, 1)) * self.scale
        return x + y.permute(0, 4, 1, 2, 3)


class DCFormerEncoder(nn.Module):
    """Med3DVLM's DCFormer: a decomposed-conv stem (stride 4) and four conv stages (each /2), five feature maps.

    ``forward(images [B, 1, D, H, W]) -> (low [B, N3, C3], high [B, N4, C4])``: the tokens of the last two
    stages (Med3DVLM's ``vision_select_layer=-2``), each flattened in (D, H, W) order. State-dict keys
    (``encoder.s0`` .. ``encoder.s4``) are those of the released vision tower.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        channels, blocks, kernels = tuple(cfg.channels), tuple(cfg.blocks), tuple(cfg.kernels)
        if len(channels) != 5 or len(blocks) != 5 or len(kernels) != 4 or min(blocks) < 1 or min(channels) < 1:
            raise InputError(f"dcformer needs 5 channels, 5 block counts >= 1 and 4 kernels; got channels={channels}, "
                             f"blocks={blocks}, kernels={kernels}")
        self.input_size = tuple(cfg.input_size)
        stages = {"s0": nn.Sequential(*[_Stem(1 if i == 0 else channels[0], channels[0]) for i in range(blocks[0])])}
        for s in range(1, 5):
            stages[f"s{s}"] = nn.Sequential(*[_ConvBlock(channels[s - 1] if i == 0 else channels[s], channels[s],
                                                          kernels[s - 1], downsample=i == 0) for i in range(blocks[s])])
        self.encoder = nn.ModuleDict(stages)
        # (H, W, D) grid of each stage: stride-4 stem, then max-pools with kernel 3, stride 2, padding 1
        grid = [tuple(self.input_size[a] for a in (1, 2, 0))]
        for _ in range(blocks[0]):
            grid = [tuple((n - 1) // 4 + 1 for n in grid[0])]
        for _ in range(4):
            grid.append(tuple((n - 1) // 2 + 1 for n in grid[-1]))
        self.output_shapes = [(math.prod(grid[s]), channels[s]) for s in (3, 4)]  # [(N, C)] of (low, high)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.permute(0, 1, 3, 4, 2)  # (D, H, W) -> (H, W, D): the axis order the released weights were trained in
        feats = []
        for stage in self.encoder.values():
            x = stage(x)
            feats.append(x)
        return tuple(f.permute(0, 4, 2, 3, 1).flatten(1, 3) for f in feats[3:])  # [B, C, H, W, D] -> [B, D*H*W, C]


class ViTEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        from monai.networks.nets import ViT

        self.vit = ViT(in_channels=1, img_size=cfg.input_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
                       mlp_dim=cfg.mlp_dim, num_layers=cfg.num_layers, num_heads=cfg.num_heads, spatial_dims=3,
                       classification=False)
        self.output_shapes = [(math.prod(s // p for s, p in zip(cfg.input_size, cfg.patch_size)), cfg.hidden_size)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(x)
        return tokens


def build_vision_encoder(cfg: VisionConfig) -> nn.Module:
    if len(cfg.input_size) != 3 or min(cfg.input_size) < 1:
        raise InputError(f"vision input_size must be three positive integers (D, H, W), got {cfg.input_size}")
    if cfg.kind == "vit":
        if any(s % p for s, p in zip(cfg.input_size, cfg.patch_size)):
            raise InputError(f"vision input_size {cfg.input_size} must be divisible by patch_size {cfg.patch_size}")
        return ViTEncoder(cfg)
    if cfg.kind == "dcformer":
        return DCFormerEncoder(cfg)
    raise InputError(f"unknown vision encoder kind {cfg.kind!r}; use 'vit' or 'dcformer'")
