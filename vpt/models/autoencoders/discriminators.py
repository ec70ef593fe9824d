"""Patch discriminators for autoencoder training, with upstream parameter names.

- `NLayerDiscriminator`: taming-transformers' PatchGAN (pix2pix), keys `main.*`; taming's init.
- `LatteDiscriminator`: VideoGeneration-PyTorch's PatchGAN, keys `layers.*` (its `vae_discriminator_ckpt.pth`).
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
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
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
            self.layers.append(nn.Sequential(
                nn.Conv2d(dims[i], dims[i + 1], 4, stride=2 if i < last else 1, padding=1, bias=i == 0),
                nn.BatchNorm2d(dims[i + 1]) if 0 < i < last else nn.Identity(),
                nn.LeakyReLU(0.2) if i < last else nn.Identity(),
            ))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = images
        for layer in self.layers:
            out = layer(out)
        return out  # (N, 1, h, w)
