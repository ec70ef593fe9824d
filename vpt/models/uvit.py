"""RIVER's U-ViT vector-field regressor: the trunk RIVER and NeuralSDE share, with its size table and
the converter for the upstream regressor weights (both releases store it under the same names).

The regressor sees latent grids stacked per cell, a frame-distance token and a flow-time token, and
emits latent grids; RIVER uses 3 grids in / 1 out, NeuralSDE's drift, denoiser and diffusion networks
other counts (`input_grids`, `output_grids`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vpt.errors import UsageError
from vpt.models.attention import attention
from vpt.models.embeddings import sinusoidal_embedding
from vpt.weights import read_weights, strip_module_prefix

#: Regressor sizes. "paper" is every released RIVER model (98M parameters, 13 transformer layers).
RIVER_SIZES: dict[str, dict[str, int]] = {
    "paper": {"inner_dim": 768, "depth": 4, "mid_depth": 5},
    "small": {"inner_dim": 256, "depth": 2, "mid_depth": 2},
    "tiny": {"inner_dim": 64, "depth": 2, "mid_depth": 1},
}


def resolve_trunk_size(cfg) -> None:
    """Fill a config's trunk widths from its `size` (RIVER_SIZES) and check them (RIVER and NeuralSDE)."""
    if cfg.size is not None:
        for key, value in RIVER_SIZES[cfg.size].items():
            setattr(cfg, key, value)
    if cfg.inner_dim % cfg.heads or cfg.inner_dim % 2:
        raise ValueError(f"model.inner_dim ({cfg.inner_dim}) must be even and divisible by model.heads ({cfg.heads})")


class PositionEmbedding2d(nn.Module):
    """Learned absolute 2-D positions: cell (y, x) -> concat(col[x], row[y]) (column half first)."""

    def __init__(self, dim: int, max_size: int = 512):
        super().__init__()
        self.row = nn.Embedding(max_size, dim // 2)
        self.col = nn.Embedding(max_size, dim // 2)
        nn.init.uniform_(self.row.weight, -1.0, 1.0)
        nn.init.uniform_(self.col.weight, -1.0, 1.0)

    def forward(self, height: int, width: int) -> torch.Tensor:
        cols = self.col.weight[:width]  # (W, D/2)
        rows = self.row.weight[:height]  # (H, D/2)
        grid = torch.cat([cols[None].expand(height, -1, -1), rows[:, None].expand(-1, width, -1)], dim=-1)  # (H, W, D)
        return rearrange(grid, "h w d -> (h w) d")  # (N, D), token n = y * W + x


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (rows q, k, v as torch's MHA)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = attention(q, k, v, dropout=self.dropout if self.training else 0.0)  # (B, heads, N, d)
        # Projected sequence-first, as upstream's batch_first nn.MultiheadAttention does, and returned as a
        # (B, N, D) view of that memory: dropout draws its mask in memory order, so the layer's dropout
        # masks are upstream's for the same seed (training trajectories match, not only the forward).
        sequence_first = rearrange(out, "b h n d -> n b (h d)").contiguous()  # (N, B, D)
        return self.proj(sequence_first).transpose(0, 1)  # (B, N, D)


class TransformerLayer(nn.Module):
    """Pre-norm encoder layer, same maths as torch's TransformerEncoderLayer(norm_first, GELU).

    Dropout on attention probabilities, after attention, after the FFN activation and after the FFN.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        x = x + self.dropout(self.attn(self.norm1(x)))
        hidden = self.dropout(F.gelu(self.fc1(self.norm2(x))))  # (B, N, 4D)
        return x + self.dropout(self.fc2(hidden))


class SkipLayer(nn.Module):
    """U-ViT out-block: fuse the matching in-block output (first) with the stream, then a layer."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.skip_proj = nn.Linear(2 * dim, dim)
        self.layer = TransformerLayer(dim, heads, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # (B, N, D) each
        return self.layer(self.skip_proj(torch.cat([skip, x], dim=-1)))


class RegressorHead(nn.Module):
    """Tokens -> velocity grid. "ln": Linear, GELU, LayerNorm, conv; "bn": Linear, GELU, BatchNorm2d, conv."""

    def __init__(self, dim: int, out_channels: int, out_norm: str):
        super().__init__()
        self.out_norm = out_norm
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim) if out_norm == "ln" else nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, out_channels, kernel_size=3, padding=1)

    def forward(self, tokens: torch.Tensor, height: int) -> torch.Tensor:  # (B, N, D)
        x = F.gelu(self.proj(tokens))
        if self.out_norm == "ln":
            x = rearrange(self.norm(x), "b (h w) d -> b d h w", h=height)
        else:
            x = self.norm(rearrange(x, "b (h w) d -> b d h w", h=height))
        return self.conv(x)  # (B, c, h, w)


class VectorFieldRegressor(nn.Module):
    """U-ViT over the latent grid plus one time token: v(x_t, reference, context, Δ, t) -> velocity.

    Tokens = Linear([x_t, reference, context] per cell) + 2-D position + MLP(ln Δ); a sinusoidal
    token of t (scale 200, no position term) is prepended. In-blocks keep their outputs, out-block i
    fuses the (depth-1-i)-th of them. Works on any grid up to 512 x 512 cells.

    `input_grids` latent grids are stacked per cell and the head emits `output_grids` of them (RIVER:
    3 in, 1 out); other backends on the same trunk (NeuralSDE) change these and call `transform`.
    """

    def __init__(
        self,
        latent_channels: int,
        inner_dim: int,
        depth: int,
        mid_depth: int,
        heads: int = 8,
        out_norm: str = "ln",
        dropout: float = 0.05,
        *,
        input_grids: int = 3,
        output_grids: int = 1,
    ):
        super().__init__()
        self.inner_dim = inner_dim
        self.pos_embed = PositionEmbedding2d(inner_dim)
        self.token_proj = nn.Linear(input_grids * latent_channels, inner_dim)
        self.distance_embed = nn.Sequential(nn.Linear(1, 256), nn.ReLU(), nn.Linear(256, inner_dim))
        self.in_blocks = nn.ModuleList(TransformerLayer(inner_dim, heads, dropout) for _ in range(depth))
        self.mid_blocks = nn.ModuleList(TransformerLayer(inner_dim, heads, dropout) for _ in range(mid_depth))
        self.out_blocks = nn.ModuleList(SkipLayer(inner_dim, heads, dropout) for _ in range(depth))
        self.head = RegressorHead(inner_dim, output_grids * latent_channels, out_norm)
        self._init_attention()

    def _init_attention(self) -> None:
        # Linear, LayerNorm, BatchNorm and conv keep torch's defaults, as upstream. Upstream's
        # nn.MultiheadAttention initialises the packed q/k/v matrix with Xavier-uniform over its full
        # (3D, D) shape and zeroes both attention biases; mirror that.
        for module in self.modules():
            if isinstance(module, SelfAttention):
                nn.init.xavier_uniform_(module.qkv.weight)
                nn.init.zeros_(module.qkv.bias)
                nn.init.zeros_(module.proj.bias)

    def forward(
        self,
        noisy: torch.Tensor,
        reference: torch.Tensor,
        context: torch.Tensor,
        distance: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """noisy/reference/context (B, c, h, w), distance (B,) int >= 1, t (B,) in [0, 1] -> (B, c, h, w)."""
        height, width = noisy.shape[-2:]
        time_token = sinusoidal_embedding(t, self.inner_dim, scale=200.0)[:, None]  # (B, 1, D)
        cells = rearrange(torch.cat([noisy, reference, context], dim=1), "b c h w -> b (h w) c")  # (B, N, 3c)
        log_distance = torch.log(distance.float())[:, None]  # (B, 1)
        tokens = self.token_proj(cells) + self.pos_embed(height, width) + self.distance_embed(log_distance)[:, None]
        x = torch.cat([time_token.to(tokens.dtype), tokens], dim=1)  # (B, 1 + N, D)
        return self.head(self.transform(x)[:, 1:], height)  # (B, c, h, w)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The U-ViT body on a token sequence (B, N, D): in-blocks, mid-blocks, out-blocks with long skips."""
        skips = []
        for block in self.in_blocks:
            x = block(x)
            skips.append(x)
        for block in self.mid_blocks:
            x = block(x)
        for block in self.out_blocks:
            x = block(x, skips.pop())
        return x


# --- converter for the upstream regressor weights ---------------------------------------------------------


#: upstream regressor key -> vpt key (regex, replacement), applied in order.
_REGRESSOR_RENAMES: list[tuple[str, str]] = [
    (r"^position_encoding\.row_embed\.", "pos_embed.row."),
    (r"^position_encoding\.col_embed\.", "pos_embed.col."),
    (r"^project_in\.1\.", "token_proj."),
    (r"^time_projection\.", "distance_embed."),
    (r"^out_blocks\.(\d+)\.0\.", r"out_blocks.\1.skip_proj."),
    (r"^out_blocks\.(\d+)\.1\.", r"out_blocks.\1.layer."),
    (r"\.self_attn\.in_proj_weight$", ".attn.qkv.weight"),
    (r"\.self_attn\.in_proj_bias$", ".attn.qkv.bias"),
    (r"\.self_attn\.out_proj\.", ".attn.proj."),
    (r"\.linear1\.", ".fc1."),
    (r"\.linear2\.", ".fc2."),
    (r"^project_out\.0\.", "head.proj."),
    (r"^project_out\.[23]\.", "head.norm."),  # 2: LayerNorm ("ln" head), 3: BatchNorm2d ("bn" head)
    (r"^project_out\.4\.", "head.conv."),
]


def convert_upstream_regressor(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream regressor weights (bare, `vector_field_regressor.`- or `module.`-prefixed) -> vpt names."""
    state = strip_module_prefix(state)
    if any(key.startswith("vector_field_regressor.") for key in state):
        state = {
            key.removeprefix("vector_field_regressor."): value
            for key, value in state.items()
            if key.startswith("vector_field_regressor.")
        }
    converted = {}
    for key, value in state.items():
        for pattern, replacement in _REGRESSOR_RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value.float() if value.is_floating_point() else value
    return converted


def config_from_regressor_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture fields of RiverConfig read off converted regressor weights (heads: 8, as upstream)."""
    inner_dim, three_c = state["token_proj.weight"].shape
    count = lambda prefix: len({k.split(".")[1] for k in state if k.startswith(prefix)})  # noqa: E731
    return {
        "latent_channels": three_c // 3,
        "inner_dim": inner_dim,
        "depth": count("in_blocks."),
        "mid_depth": count("mid_blocks."),
        "heads": 8,
        "out_norm": "bn" if "head.norm.running_mean" in state else "ln",
    }


def load_upstream_state(path: Path) -> dict[str, torch.Tensor]:
    """The full-model state dict of an upstream `model.pth` (`module.` prefixes removed)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    loaded = read_weights(path, mmap=True)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
        raise UsageError(f"{path} is not an upstream RIVER checkpoint (no 'model' state dict inside)")
    return strip_module_prefix(loaded["model"])
