"""Nearest-neighbour vector quantisation with a straight-through gradient (taming's VectorQuantizer2,
RIVER's VectorQuantizer: the same maths)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn


class Quantized(NamedTuple):
    quantized: torch.Tensor  # (N, C, H, W), straight-through: forward = codes, backward = identity
    loss: torch.Tensor  # scalar codebook + commitment loss
    indices: torch.Tensor  # (N, H, W) int64


class VectorQuantizer(nn.Module):
    """Codebook of `num_codes` vectors of size `code_dim`.

    loss = mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2) with `legacy=True`: taming's
    historical placement, where beta lands on the codebook term (RIVER's "ours" does the same).
    `legacy=False` puts beta on the commitment term as in the VQ-VAE paper.
    """

    def __init__(self, num_codes: int, code_dim: int, beta: float = 0.25, legacy: bool = True):
        super().__init__()
        self.num_codes, self.code_dim, self.beta, self.legacy = num_codes, code_dim, beta, legacy
        self.embedding = nn.Embedding(num_codes, code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)  # as upstream

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> code indices (N, H, W); ||z||^2 + ||e||^2 - 2 z.e as upstream, so ties break alike."""
        flat = rearrange(z, "n c h w -> (n h w) c").float()
        codebook = self.embedding.weight.float()
        distances = (flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)
                     - 2 * flat @ codebook.t())  # (N*H*W, num_codes)
        return distances.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def forward(self, z: torch.Tensor) -> Quantized:
        indices = self.nearest(z)  # (N, H, W)
        codes = rearrange(self.embedding(indices), "n h w c -> n c h w").to(z.dtype)
        commitment_term = torch.mean((codes.detach() - z) ** 2)  # pulls the encoder to its code
        codebook_term = torch.mean((codes - z.detach()) ** 2)  # pulls the code to the encoder output
        if self.legacy:
            loss = commitment_term + self.beta * codebook_term
        else:
            loss = self.beta * commitment_term + codebook_term
        quantized = z + (codes - z).detach()
        return Quantized(quantized, loss, indices)
