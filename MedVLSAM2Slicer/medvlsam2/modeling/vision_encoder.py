"""3D CT encoders returning patch tokens [B, N, hidden]: MONAI ViT (M3D-LaMed) or a DCFormer-style CNN (Med3DVLM)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import VisionConfig
from ..errors import InputError


class DecomposedConvBlock(nn.Module):
    """DCFormer idea: a k x k x k depthwise conv replaced by 1D depthwise convs along D, H and W."""

    def __init__(self, dim: int, kernel: int = 7) -> None:
        super().__init__()
        pad = kernel // 2
        self.convs = nn.ModuleList([
            nn.Conv3d(dim, dim, (kernel, 1, 1), padding=(pad, 0, 0), groups=dim),
            nn.Conv3d(dim, dim, (1, kernel, 1), padding=(0, pad, 0), groups=dim),
            nn.Conv3d(dim, dim, (1, 1, kernel), padding=(0, 0, pad), groups=dim),
        ])
        self.norm = nn.GroupNorm(1, dim)
        self.mlp = nn.Sequential(nn.Conv3d(dim, 4 * dim, 1), nn.GELU(), nn.Conv3d(4 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(sum(conv(x) for conv in self.convs)))


class DCFormerEncoder(nn.Module):
    """Conv stem at the patch stride, then ``num_layers`` decomposed-conv blocks split over two stages."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        half = cfg.hidden_size // 2
        self.stem = nn.Conv3d(1, half, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        n1 = max(1, cfg.num_layers // 2)
        self.stage1 = nn.Sequential(*[DecomposedConvBlock(half) for _ in range(n1)])
        self.down = nn.Conv3d(half, cfg.hidden_size, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.stage2 = nn.Sequential(*[DecomposedConvBlock(cfg.hidden_size) for _ in range(max(1, cfg.num_layers - n1))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return x.flatten(2).transpose(1, 2)


class ViTEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        from monai.networks.nets import ViT

        self.vit = ViT(in_channels=1, img_size=cfg.input_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
                       mlp_dim=cfg.mlp_dim, num_layers=cfg.num_layers, num_heads=cfg.num_heads, spatial_dims=3,
                       classification=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(x)
        return tokens


def build_vision_encoder(cfg: VisionConfig) -> nn.Module:
    if any(s % p for s, p in zip(cfg.input_size, cfg.patch_size)):
        raise InputError(f"vision input_size {cfg.input_size} must be divisible by patch_size {cfg.patch_size}")
    if cfg.kind == "vit":
        return ViTEncoder(cfg)
    if cfg.kind == "dcformer":
        return DCFormerEncoder(cfg)
    raise InputError(f"unknown vision encoder kind {cfg.kind!r}; use 'vit' or 'dcformer'")
