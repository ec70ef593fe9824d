"""Embeddings shared by backends: sinusoidal features of scalar times or indices."""

from __future__ import annotations

import math

import torch


def sinusoidal_embedding(
    timesteps: torch.Tensor, dim: int, *, scale: float = 1.0, max_period: float = 10000.0, cos_first: bool = True
) -> torch.Tensor:
    """(B,) scalar times -> (B, dim) sinusoidal features (the Transformer / DDPM timestep embedding).

    freq_k = max_period^(-k / half) for k < half = dim // 2, features [cos(scale t freq), sin(...)]
    (cos half first unless `cos_first=False`); an odd `dim` gets one zero column. `scale` maps
    flow time in [0, 1] onto the range of diffusion step indices the frequencies were made for.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = scale * timesteps[:, None].float() * freqs[None]  # (B, half)
    pair = (torch.cos(args), torch.sin(args)) if cos_first else (torch.sin(args), torch.cos(args))
    embedding = torch.cat(pair, dim=-1)  # (B, 2 * half)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding
