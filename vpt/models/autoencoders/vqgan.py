"""The taming-transformers / LDM VQGAN (RIVER's `ldm-vq`), with taming's parameter names, so that
taming `vqvae.ckpt` files and the `ae.*` part of RIVER's `model.pth` load without renaming.

    encode: quant_conv(encoder(x))                         continuous latent (what RIVER models)
    decode: decoder(post_quant_conv(quantize(h)))         quantisation happens only here

Sizes (`VQGAN_PRESETS`): f8_small 63,777,455 parameters, f8 67,717,295, f16 69,593,371.
`resolution` only decides at which levels attention sits; the network is otherwise fully convolutional.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vpt.models.attention import attention
from vpt.models.autoencoders.base import FrameAutoencoder, count_indices
from vpt.models.autoencoders.layers import swish
from vpt.models.autoencoders.quantize import VectorQuantizer


def _norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3x3 -> GN -> swish -> dropout -> conv3x3, plus a 1x1 `nin_shortcut` when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int = 32):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections, residual."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        height = x.shape[2]
        q, k, v = (rearrange(proj(h), "b c h w -> b 1 (h w) c") for proj in (self.q, self.k, self.v))
        out = rearrange(attention(q, k, v), "b 1 (h w) c -> b c h w", h=height)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a stride-2 conv3x3 (taming's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@dataclass
class VQGANConfig:
    """taming's `ddconfig` plus the codebook (defaults: `f8_small`)."""

    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    resolution: int = 64
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4
    embed_dim: int = 4
    n_embed: int = 16384
    dropout: float = 0.0
    beta: float = 0.25
    legacy_beta: bool = True  # taming's default: beta on the codebook term (see VectorQuantizer)
    norm_groups: int = 32  # taming fixes 32; fewer allows the narrow CPU-sized models

    def __post_init__(self) -> None:
        if self.num_res_blocks < 1:
            raise ValueError("autoencoder.arch.num_res_blocks must be >= 1")
        widths = [self.ch] + [self.ch * m for m in self.ch_mult]
        if any(w % self.norm_groups for w in widths):
            raise ValueError(
                f"autoencoder.arch: every width (ch * ch_mult = {widths}) must be a multiple of "
                f"norm_groups={self.norm_groups}"
            )


VQGAN_PRESETS: dict[str, dict] = {
    "f8_small": dict(
        ch=128,
        ch_mult=[1, 2, 2, 4],
        num_res_blocks=2,
        attn_resolutions=[16],
        resolution=64,
        z_channels=4,
        embed_dim=4,
        n_embed=16384,
    ),
    "f8": dict(
        ch=128,
        ch_mult=[1, 2, 2, 4],
        num_res_blocks=2,
        attn_resolutions=[32],
        resolution=256,
        z_channels=4,
        embed_dim=4,
        n_embed=16384,
    ),
    "f16": dict(
        ch=128,
        ch_mult=[1, 1, 2, 2, 4],
        num_res_blocks=2,
        attn_resolutions=[16],
        resolution=256,
        z_channels=8,
        embed_dim=8,
        n_embed=16384,
    ),
}


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = [1, *cfg.ch_mult]
        resolution = cfg.resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            stage = nn.Module()
            block_in, block_out = cfg.ch * in_mult[level], cfg.ch * mult
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, cfg.dropout, cfg.norm_groups))
                block_in = block_out
                if resolution in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(block_out, cfg.norm_groups))
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                resolution //= 2
            self.down.append(stage)
        width = block_in
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(width, width, cfg.dropout, cfg.norm_groups)
        self.mid.attn_1 = AttnBlock(width, cfg.norm_groups)
        self.mid.block_2 = ResnetBlock(width, width, cfg.dropout, cfg.norm_groups)
        self.norm_out = _norm(width, cfg.norm_groups)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (N, ch, H, W)
        for stage in self.down:
            h = _resnet_stage(stage, h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))  # (N, z_channels, H/f, W/f)


def _resnet_stage(stage: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One resolution level: its ResNet blocks, each followed by its attention block where the level has them."""
    for index, block in enumerate(stage.block):
        h = block(h)
        if len(stage.attn):
            h = stage.attn[index](h)
    return h


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        resolution = cfg.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, cfg.norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, cfg.norm_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, cfg.norm_groups)
        stages = []
        for level in reversed(range(levels)):
            stage = nn.Module()
            block_out = cfg.ch * cfg.ch_mult[level]
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, cfg.dropout, cfg.norm_groups))
                block_in = block_out
                if resolution in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(block_out, cfg.norm_groups))
            if level != 0:
                stage.upsample = Upsample(block_in)
                resolution *= 2
            stages.insert(0, stage)  # up[0] is the full-resolution stage, as upstream
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for stage in reversed(self.up):
            h = _resnet_stage(stage, h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))  # unbounded, no tanh (as upstream)


class VQGAN(FrameAutoencoder):
    """taming's VQModel: encoder, quant_conv, quantize, post_quant_conv, decoder."""

    type = "vqgan"
    Config = VQGANConfig
    aliases = ("ldm-vq",)  # RIVER's name for it
    presets = VQGAN_PRESETS

    @classmethod
    def recognizes_state(cls, state: dict[str, torch.Tensor]) -> bool:
        return "quantize.embedding.weight" in state and "encoder.conv_in.weight" in state

    @classmethod
    def arch_from_state(cls, state: dict[str, torch.Tensor]) -> dict:
        ch = state["encoder.conv_in.weight"].shape[0]
        levels = count_indices(state, r"encoder\.down\.(\d+)\.")
        attn_levels = [i for i in range(levels) if f"encoder.down.{i}.attn.0.norm.weight" in state]
        inferred = dict(
            ch=ch,
            in_channels=state["encoder.conv_in.weight"].shape[1],
            out_ch=state["decoder.conv_out.weight"].shape[0],
            ch_mult=[state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)],
            num_res_blocks=count_indices(state, r"encoder\.down\.0\.block\.(\d+)\."),
            z_channels=state["encoder.conv_out.weight"].shape[0],
            embed_dim=state["quant_conv.weight"].shape[0],
            n_embed=state["quantize.embedding.weight"].shape[0],
        )
        # Attention placement is what `resolution`/`attn_resolutions` encode: pick a matching preset's
        # values, else an equivalent pair (any resolution with the same levels gives the same network).
        for values in VQGAN_PRESETS.values():
            if (
                all(values[k] == inferred[k] for k in values if k in inferred)
                and [i for i in range(levels) if values["resolution"] >> i in values["attn_resolutions"]] == attn_levels
            ):
                return {**inferred, "resolution": values["resolution"], "attn_resolutions": values["attn_resolutions"]}
        resolution = 2 ** (levels + 4)
        return {**inferred, "resolution": resolution, "attn_resolutions": [resolution >> i for i in attn_levels]}

    def __init__(self, config: VQGANConfig):
        super().__init__(config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim, config.beta, legacy=config.legacy_beta)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def latent_dims(self, height: int, width: int) -> tuple[int, ...]:
        factor = 2 ** (len(self.config.ch_mult) - 1)
        return (self.config.embed_dim, height // factor, width // factor)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(images))  # (N, embed_dim, h, w)

    def decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize(latents).quantized))

    def forward_train_images(self, images):
        quantized = self.quantize(self.encode_images(images))
        reconstruction = self.decoder(self.post_quant_conv(quantized.quantized))
        return reconstruction, {"codebook": quantized.loss}

    def last_layer(self) -> nn.Parameter:
        return self.decoder.conv_out.weight
