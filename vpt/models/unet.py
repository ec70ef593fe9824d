"""ADM-style UNet pieces shared by PVDM's triplane UNet and RSVP-M's 3-D UNet: the config checks, float32
GroupNorm, FiLM-conditioned residual blocks (2-D or 3-D) and the block container."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn


def check_unet_fields(cfg: Any, halved: tuple[str, ...]) -> None:
    """The checks every ADM-style UNet config needs (widths, heads, levels, β schedule, sampling steps);
    `halved` names the latent sides the UNet halves once per level. Raises ValueError (a config error)."""
    if cfg.num_res_blocks < 1 or cfg.num_heads < 1:
        raise ValueError("model.num_res_blocks and model.num_heads must be >= 1")
    if cfg.model_channels < 32 or cfg.model_channels % 32:
        raise ValueError(
            f"model.model_channels must be a multiple of 32 (GroupNorm of 32 groups), got {cfg.model_channels}"
        )
    if not cfg.channel_mult or min(cfg.channel_mult) < 1:
        raise ValueError(f"model.channel_mult needs positive multipliers, got {cfg.channel_mult}")
    factor = 2 ** (len(cfg.channel_mult) - 1)
    for name in halved:
        size = getattr(cfg, name)
        if size < 1 or size % factor:
            raise ValueError(
                f"model.{name} ({size}) must be a positive multiple of {factor}: the UNet halves it "
                f"{len(cfg.channel_mult) - 1} times (len(channel_mult) - 1)"
            )
    for width in {cfg.model_channels * m for m in cfg.channel_mult}:
        if width % cfg.num_heads:
            raise ValueError(f"model.num_heads ({cfg.num_heads}) must divide every UNet width, not {width}")
    if not 0 < cfg.linear_start < cfg.linear_end < 1:
        raise ValueError("model.linear_start and linear_end must satisfy 0 < start < end < 1")
    if not 1 <= cfg.steps <= cfg.num_timesteps:
        raise ValueError(f"model.steps must be in 1..{cfg.num_timesteps}, got {cfg.steps}")


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32 whatever the input dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def zero_init(module: nn.Module) -> nn.Module:
    for param in module.parameters():
        nn.init.zeros_(param)
    return module


class ResBlock(nn.Module):
    """ADM residual block with FiLM time conditioning: GN(h)·(1 + scale) + shift. With `resample`
    ("down": 2x2 average pooling, "up": nearest 2x) both branches change resolution. `dims=3` makes
    it a video block (N, C, T, H, W): 3x3x3 convolutions, resampling over H and W only."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        dropout: float,
        resample: Literal["down", "up", None] = None,
        dims: Literal[2, 3] = 2,
    ):
        super().__init__()
        self.resample = resample
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), conv(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_init(conv(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else conv(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, [T,] H, W): time is never resampled
        factor = (2, 2) if x.dim() == 4 else (1, 2, 2)
        if self.resample == "down":
            return F.avg_pool2d(x, factor) if x.dim() == 4 else F.avg_pool3d(x, factor)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=factor, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # (N, C, [T,] H, W), (N, E)
        norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
        h = conv(self._resample(norm_act(x)))  # resampled between the activation and the conv, as ADM
        x = self._resample(x)
        film = self.emb_layers(emb).type(h.dtype)
        scale, shift = film.reshape(*film.shape, *[1] * (h.dim() - 2)).chunk(2, dim=1)
        out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
        h = out_rest(out_norm(h) * (1 + scale) + shift)
        return self.skip_connection(x) + h


class UNetBlock(nn.Sequential):
    """A stage of the UNet: ResBlocks take the time embedding, layers that declare `takes_context`
    (cross-attention) the context, the rest neither."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif getattr(layer, "takes_context", False):
                x = layer(x, context)
            else:
                x = layer(x)
        return x
