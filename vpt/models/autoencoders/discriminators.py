"""Patch discriminators for autoencoder training, with upstream parameter names.

- `NLayerDiscriminator`: taming-transformers' PatchGAN (pix2pix), keys `main.*`; taming's init.
- `LatteDiscriminator`: VideoGeneration-PyTorch's PatchGAN, keys `layers.*` (its `vae_discriminator_ckpt.pth`).
- `FeaturePatchDiscriminator`: PVDM's 2-D (one frame) and 3-D (whole clip) PatchGAN, keys `model0..model4.*`,
  returning its intermediate features for feature matching.
"""

from __future__ import annotations

import torch
from torch import nn


class NLayerDiscriminator(nn.Module):
    """conv4 s2 + LReLU; (n_layers - 1) x [conv4 s2 + BN + LReLU]; conv4 s1 + BN + LReLU; conv4 s1 -> 1 logit map."""

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        # taming's weights_init: conv weights N(0, 0.02), BN scale N(1, 0.02) and shift 0; conv biases keep torch's default.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)  # (N, 1, h, w) logits


class LatteDiscriminator(nn.Module):
    """conv4 s2 (bias) + LReLU; conv4 s2 (no bias) + BN + LReLU per middle width; conv4 s1 (no bias) -> 1."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        dims = [in_channels, *widths, 1]
        last = len(dims) - 2
        self.layers = nn.ModuleList()
        for i in range(len(dims) - 1):
            self.layers.append(
                nn.Sequential(
                    nn.Conv2d(dims[i], dims[i + 1], 4, stride=2 if i < last else 1, padding=1, bias=i == 0),
                    nn.BatchNorm2d(dims[i + 1]) if 0 < i < last else nn.Identity(),
                    nn.LeakyReLU(0.2) if i < last else nn.Identity(),
                )
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = images
        for layer in self.layers:
            out = layer(out)
        return out  # (N, 1, h, w)


class FeaturePatchDiscriminator(nn.Module):
    """pix2pixHD's multi-output PatchGAN in 2-D or 3-D: conv4 s2 + LReLU; (n_layers - 1) x [conv4 s2 + BN +
    LReLU]; conv4 s1 + BN + LReLU; conv4 s1 -> 1. Padding 2 and biased convs as PVDM. Upstream uses
    SyncBatchNorm; plain BatchNorm keeps the same parameters and runs on one process."""

    def __init__(self, dims: int, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
        widths = [in_channels] + [min(channels * 2**i, 512) for i in range(n_layers + 1)]
        for i in range(n_layers + 1):
            stride = 2 if i < n_layers else 1
            layers = [conv(widths[i], widths[i + 1], 4, stride=stride, padding=2)]
            if i > 0:
                layers.append(norm(widths[i + 1]))
            setattr(self, f"model{i}", nn.Sequential(*layers, nn.LeakyReLU(0.2)))
        setattr(self, f"model{n_layers + 1}", nn.Sequential(conv(widths[-1], 1, 4, stride=1, padding=2)))
        self.stages = n_layers + 2
        # PVDM's init: conv weights N(0, 0.02), BN scale N(1, 0.02) and shift 0; conv biases keep torch's default.
        for module in self.modules():
            if isinstance(module, conv):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, norm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(N, C, [T,] H, W) -> logits (N, 1, ...) and the outputs of every stage (the logits last)."""
        features = []
        for i in range(self.stages):
            x = getattr(self, f"model{i}")(x)
            features.append(x)
        return x, features
