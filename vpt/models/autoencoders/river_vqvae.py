"""RIVER's own VQVAE (`autoencoder.type: ours`, the CLEVRER autoencoder), with RIVER's
parameter names so `vqvae.pth` (`["model"]`) and the `ae.backbone.*` part of `model.pth` load as they are.

Widths are RIVER's fixed defaults (encoder 32 -> 256, decoder 256 -> 32: the minimum GroupNorm(32)
allows); 7,329,703 parameters with the CLEVRER codebook 8192 x 4. Downsampling x8.
Upstream runs the whole VQVAE (decoder included) just to read the encoder output; here `encode` runs
the encoder only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vpt.models.autoencoders.base import FrameAutoencoder
from vpt.models.autoencoders.layers import MultiheadSelfAttention, swish
from vpt.models.autoencoders.quantize import VectorQuantizer


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResidualBlock(nn.Module):
    """conv3x3 (no bias) -> avg-pool(down) -> GN -> LeakyReLU -> conv3x3 (no bias) -> GN, plus a shortcut
    (conv1x1 -> avg-pool -> GN when the width or size changes), then LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, downsample_factor: int = 1):
        super().__init__()
        self.downsample_factor = downsample_factor
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _norm(out_channels)
        if downsample_factor != 1 or in_channels != out_channels:
            # Index 1 is a parameter-free pooling; keeping it keeps upstream's `downsample.2.*` names.
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.AvgPool2d(downsample_factor),
                _norm(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(self.conv1(x), self.downsample_factor)
        out = self.bn2(self.conv2(F.leaky_relu(self.bn1(out), 0.2)))
        shortcut = self.downsample(x) if hasattr(self, "downsample") else x
        return F.leaky_relu(out + shortcut, 0.2)


class UpBlock(nn.Module):
    """Nearest x2 -> conv3x3 (no bias) -> BatchNorm2d -> LeakyReLU(0.2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))), 0.2)


class _AttentionTrunk(nn.Module):
    """The middle of both halves: residual -> GN + single-head attention (residual) -> residual.
    Subclasses call `_add_trunk` where upstream creates these layers, so state dicts keep upstream order."""

    def _add_trunk(self, channels: int) -> None:
        self.pre_attn_residual = ResidualBlock(channels, channels)
        self.attn_norm = _norm(channels)
        self.attn = MultiheadSelfAttention(channels, num_heads=1)
        self.post_attn_residual = ResidualBlock(channels, channels)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_attn_residual(x)
        height = x.shape[2]
        tokens = rearrange(self.attn_norm(x), "b c h w -> b (h w) c")
        x = x + rearrange(self.attn(tokens), "b (h w) c -> b c h w", h=height)
        return self.post_attn_residual(x)


class Encoder(_AttentionTrunk):
    def __init__(self, in_channels: int, out_channels: int, width: int = 32):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.residuals = nn.Sequential(
            *(ResidualBlock(width * m, width * 2 * m, downsample_factor=2) for m in (1, 2, 4))
        )
        self._add_trunk(8 * width)
        self.out_norm = _norm(8 * width)
        self.out_conv = nn.Conv2d(8 * width, out_channels, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.trunk(self.residuals(self.conv_in(images)))  # (N, 8w, H/8, W/8)
        return self.out_conv(swish(self.out_norm(x)))


class Decoder(_AttentionTrunk):
    def __init__(self, in_channels: int, out_channels: int, width: int = 256):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self._add_trunk(width)
        self.residuals = nn.Sequential(
            *(nn.Sequential(ResidualBlock(width // d, width // (2 * d)), UpBlock(width // (2 * d))) for d in (1, 2, 4))
        )
        self.out_norm = _norm(width // 8)
        self.out_conv = nn.Conv2d(width // 8, out_channels, 3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.residuals(self.trunk(self.conv_in(latents)))  # (N, w/8, 8h, 8w)
        return torch.tanh(self.out_conv(swish(self.out_norm(x))))


@dataclass
class RiverVQVAEConfig:
    in_channels: int = 3
    latent_channels: int = 4  # encoder out = codebook vector size = decoder in
    num_embeddings: int = 8192
    encoder_width: int = 32
    decoder_width: int = 256
    beta: float = 0.25

    def __post_init__(self) -> None:
        if self.encoder_width % 32 or self.decoder_width % 256:
            raise ValueError(
                "autoencoder.arch: encoder_width must be a multiple of 32 and decoder_width of 256 (GroupNorm(32))"
            )


class RiverVQVAE(FrameAutoencoder):
    type = "river-vqvae"
    Config = RiverVQVAEConfig
    aliases = ("ours",)  # RIVER's name for it

    @classmethod
    def recognizes_state(cls, state: dict[str, torch.Tensor]) -> bool:
        return "vector_quantizer.embedding.weight" in state

    @classmethod
    def arch_from_state(cls, state: dict[str, torch.Tensor]) -> dict:
        return dict(
            in_channels=state["encoder.conv_in.weight"].shape[1],
            latent_channels=state["encoder.out_conv.weight"].shape[0],
            num_embeddings=state["vector_quantizer.embedding.weight"].shape[0],
            encoder_width=state["encoder.conv_in.weight"].shape[0],
            decoder_width=state["decoder.conv_in.weight"].shape[0],
        )

    def __init__(self, config: RiverVQVAEConfig):
        super().__init__(config)
        self.encoder = Encoder(config.in_channels, config.latent_channels, config.encoder_width)
        self.decoder = Decoder(config.latent_channels, config.in_channels, config.decoder_width)
        self.vector_quantizer = VectorQuantizer(config.num_embeddings, config.latent_channels, config.beta, legacy=True)

    def latent_dims(self, height: int, width: int) -> tuple[int, ...]:
        return (self.config.latent_channels, height // 8, width // 8)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.vector_quantizer(latents).quantized)

    def forward_train_images(self, images):
        quantized = self.vector_quantizer(self.encoder(images))
        return self.decoder(quantized.quantized), {"codebook": quantized.loss}

    def last_layer(self) -> nn.Parameter:
        return self.decoder.out_conv.weight
