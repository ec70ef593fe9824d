"""Small pieces more than one autoencoder uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vpt.models.attention import attention


class MultiheadSelfAttention(nn.Module):
    """Self-attention over tokens (B, N, C) with `nn.MultiheadAttention`'s parameter names
    (`in_proj_weight` packs q, k, v row blocks; `out_proj`), so upstream checkpoints load as they are,
    while the product itself goes through vpt's SDPA `attention`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        # nn.MultiheadAttention's initialisation: xavier on the packed projection, zero biases.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(tokens, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3C)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        out = attention(q, k, v)  # (B, heads, N, d)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)
