"""SeerUNet: Stable Diffusion v1.5's UNet inflated to video.

Frames are folded into the batch for every convolution and spatial attention; GroupNorm spans the
clip; after every spatial transformer sits a trained SAWT temporal transformer. Block types are
fixed as upstream (3 cross-attention down blocks + 1 plain, mid, 1 plain up + 3 cross-attention).
Module names equal upstream's / diffusers', so the 686 SD keys and the 320 temporal keys of the
released checkpoints load as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.upsampling import Upsample2D
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from vpt.models.seer.layers import (
    FrameGroupNorm,
    FrameResnet,
    SpatialTransformer,
    TemporalTransformer,
    use_diffusers_attention,
)


@dataclass
class UNetSize:
    """Constructor values of the UNet; SD v1.5's are the defaults."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280])
    layers_per_block: int = 2
    heads: int = 8  # SD's `attention_head_dim: 8` is a head count
    cross_attention_dim: int = 768
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        from vpt.errors import VptError

        if len(self.block_out_channels) < 2:
            raise VptError("unet.block_out_channels needs at least two levels")
        for channels in self.block_out_channels:
            if channels % 32 or channels % self.heads:
                raise VptError(
                    f"unet.block_out_channels: {channels} is not divisible by 32 groups and {self.heads} heads"
                )

    @classmethod
    def from_diffusers_config(cls, path: Path) -> UNetSize:
        """The size of an SD-style `unet/config.json` (UNet2DConditionModel)."""
        from vpt.errors import VptError

        config = json.loads(Path(path).read_text())
        levels = len(config["block_out_channels"])
        sd_layout = {
            "down_block_types": ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1),
            "norm_num_groups": 32,
            "use_linear_projection": False,
            "class_embed_type": None,
            "addition_embed_type": None,
            "transformer_layers_per_block": 1,
        }
        for key, expected in sd_layout.items():
            value = config.get(key, expected)
            if (list(value) if isinstance(value, (list, tuple)) else value) != expected:
                raise VptError(
                    f"{path}: {key} = {value} is not a Stable Diffusion v1.x UNet (Seer inflates SD v1.x only)"
                )
        heads = config.get("attention_head_dim", 8)
        if isinstance(heads, list):
            if len(set(heads)) != 1:
                raise VptError(f"{path}: per-block head counts {heads} are not an SD v1.x UNet")
            heads = heads[0]
        return cls(
            in_channels=config.get("in_channels", 4),
            out_channels=config.get("out_channels", 4),
            block_out_channels=list(config["block_out_channels"]),
            layers_per_block=config.get("layers_per_block", 2),
            heads=heads,
            cross_attention_dim=config.get("cross_attention_dim", 768),
            norm_eps=config.get("norm_eps", 1e-5),
        )


def _run(module_call, enabled: bool, *args):
    """Gradient checkpointing of one layer (non-reentrant, so keyword-free ints pass through unchanged)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(module_call, *args, use_reentrant=False)
    return module_call(*args)


class DownBlock(nn.Module):
    """resnet (-> spatial -> temporal) per layer, then an optional stride-2 conv; returns the skips."""

    def __init__(self, size: UNetSize, in_ch: int, out_ch: int, temb: int, attention: bool, downsample: bool):
        super().__init__()
        layers = size.layers_per_block
        self.resnets = nn.ModuleList(
            FrameResnet(in_ch if i == 0 else out_ch, out_ch, temb, size.norm_eps) for i in range(layers)
        )
        if attention:
            self.attentions = nn.ModuleList(
                SpatialTransformer(out_ch, size.heads, size.cross_attention_dim) for _ in range(layers)
            )
            self.temporal_attentions = nn.ModuleList(TemporalTransformer(out_ch, size.heads) for _ in range(layers))
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_ch, use_conv=True, out_channels=out_ch, padding=1, name="op")])
            if downsample
            else None
        )
        self.gradient_checkpointing = False

    def forward(self, x, temb, context, frames: int, reference: int):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = _run(resnet, self.gradient_checkpointing, x, temb, frames)
            if hasattr(self, "attentions"):
                x = _run(self.attentions[i], self.gradient_checkpointing, x, context, frames)
                x = _run(self.temporal_attentions[i], self.gradient_checkpointing, x, frames, reference)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """resnet -> spatial -> temporal (unwindowed at 4x4) -> resnet."""

    def __init__(self, size: UNetSize, channels: int, temb: int):
        super().__init__()
        self.resnets = nn.ModuleList(FrameResnet(channels, channels, temb, size.norm_eps) for _ in range(2))
        self.attentions = nn.ModuleList([SpatialTransformer(channels, size.heads, size.cross_attention_dim)])
        self.temporal_attentions = nn.ModuleList([TemporalTransformer(channels, size.heads)])
        self.gradient_checkpointing = False

    def forward(self, x, temb, context, frames: int, reference: int):
        x = _run(self.resnets[0], self.gradient_checkpointing, x, temb, frames)
        x = _run(self.attentions[0], self.gradient_checkpointing, x, context, frames)
        x = _run(self.temporal_attentions[0], self.gradient_checkpointing, x, frames, reference)
        return _run(self.resnets[1], self.gradient_checkpointing, x, temb, frames)


class UpBlock(nn.Module):
    """Per layer: concatenate a skip, resnet (-> spatial -> temporal); then an optional nearest x2 + conv."""

    def __init__(
        self, size: UNetSize, in_ch: int, prev_ch: int, out_ch: int, temb: int, attention: bool, upsample: bool
    ):
        super().__init__()
        layers = size.layers_per_block + 1
        self.resnets = nn.ModuleList(
            FrameResnet(
                (prev_ch if i == 0 else out_ch) + (in_ch if i == layers - 1 else out_ch), out_ch, temb, size.norm_eps
            )
            for i in range(layers)
        )
        if attention:
            self.attentions = nn.ModuleList(
                SpatialTransformer(out_ch, size.heads, size.cross_attention_dim) for _ in range(layers)
            )
            self.temporal_attentions = nn.ModuleList(TemporalTransformer(out_ch, size.heads) for _ in range(layers))
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch, use_conv=True, out_channels=out_ch)]) if upsample else None
        self.gradient_checkpointing = False

    def forward(self, x, skips: list, temb, context, frames: int, reference: int):
        """Consumes (pops) one entry of the shared `skips` list per resnet, newest first."""
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips.pop()], dim=1)
            x = _run(resnet, self.gradient_checkpointing, x, temb, frames)
            if hasattr(self, "attentions"):
                x = _run(self.attentions[i], self.gradient_checkpointing, x, context, frames)
                x = _run(self.temporal_attentions[i], self.gradient_checkpointing, x, frames, reference)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class SeerUNet(nn.Module):
    """(B, F, C, h, w) latents + timestep + per-frame text (B, F, L, D) -> (B, F, C, h, w) noise prediction."""

    def __init__(self, size: UNetSize):
        super().__init__()
        self.size = size
        channels = size.block_out_channels
        temb = channels[0] * 4
        self.conv_in = nn.Conv2d(size.in_channels, channels[0], 3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], temb)

        last = len(channels) - 1
        self.down_blocks = nn.ModuleList(
            DownBlock(size, channels[max(i - 1, 0)], channels[i], temb, attention=i < last, downsample=i < last)
            for i in range(len(channels))
        )
        self.mid_block = MidBlock(size, channels[-1], temb)
        reversed_channels = channels[::-1]
        self.up_blocks = nn.ModuleList(
            UpBlock(
                size,
                in_ch=reversed_channels[min(i + 1, last)],
                prev_ch=reversed_channels[max(i - 1, 0)],
                out_ch=reversed_channels[i],
                temb=temb,
                attention=i > 0,
                upsample=i < last,
            )
            for i in range(len(channels))
        )
        self.conv_norm_out = FrameGroupNorm(32, channels[0], eps=size.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], size.out_channels, 3, padding=1)
        use_diffusers_attention(self)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            block.gradient_checkpointing = enabled

    def temporal_parameters(self) -> list[nn.Parameter]:
        """What upstream trains: every parameter under a `temporal_attentions` module (not the rotary buffers)."""
        return [p for name, p in self.named_parameters() if ".temporal_attentions." in name]

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, context: torch.Tensor, reference_frames: int = 0
    ) -> torch.Tensor:
        batch, frames = sample.shape[:2]
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        temb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))  # (B, 4*C0), one per clip
        context = rearrange(context, "b f l d -> (b f) l d")
        x = self.conv_in(rearrange(sample, "b f c h w -> (b f) c h w"))  # (B*F, C0, h, w)

        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context, frames, reference_frames)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, context, frames, reference_frames)
        for block in self.up_blocks:
            x = block(x, skips, temb, context, frames, reference_frames)  # pops one skip per resnet

        x = self.conv_out(self.conv_act(self.conv_norm_out(x, frames)))
        return rearrange(x, "(b f) c h w -> b f c h w", f=frames)
