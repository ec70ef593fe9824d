"""Nearest-neighbour vector quantisation with a straight-through gradient: `VectorQuantizer` (taming's
VectorQuantizer2, RIVER's VectorQuantizer: the same maths) learns its codebook by gradients,
`EMAVectorQuantizer` (MOSO's shared codebook) by moving averages."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
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
        distances = (
            flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        )  # (N*H*W, num_codes)
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


def _no_autocast(tensor: torch.Tensor):
    """Autocast off for `tensor`'s device: the codebook's arithmetic keeps its precision under bf16/fp16 training."""
    return torch.autocast(tensor.device.type, enabled=False)


class DebiasedEMA(nn.Module):
    """A moving average that starts at zero and divides out the start's bias (Adam's correction):

        hidden_c = decay * hidden_{c-1} + (1 - decay) * value_c,   average_c = hidden_c / (1 - decay^c)

    Buffer names (`_counter`, `_hidden`, `average`) are those of the Sonnet-style VQ-EMA port MOSO uses.
    """

    def __init__(self, shape: tuple[int, ...], decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("_counter", torch.zeros(1))
        self.register_buffer("_hidden", torch.zeros(shape))
        self.register_buffer("average", torch.zeros(shape))

    @torch.no_grad()
    def update(self, value: torch.Tensor) -> torch.Tensor:
        self._counter += 1
        self._hidden.lerp_(value, 1.0 - self.decay)
        self.average.copy_(self._hidden / (1.0 - self.decay**self._counter))
        return self.average


class EMAVectorQuantizer(nn.Module):
    """VQ-VAE codebook learned by moving averages instead of gradients (van den Oord et al., appendix),
    as MOSO's `VectorQuantizerEMA`: the codebook is a buffer, the only loss is the commitment term

        loss = commitment_cost * mean((sg[z_q] - z)^2)

    and every training call moves the codes to the (Laplace-smoothed) mean of the vectors assigned to them:

        N = EMA(counts),  S = EMA(sum of assigned vectors)  (both debiased, see `DebiasedEMA`)
        n = sum(N);  N~ = (N + eps) / (n + K eps) * n;  code_k = S_k / N~_k

    `embeddings` is stored (code_dim, num_codes) as upstream, so its checkpoints load unchanged.
    `_embeddings_cnt` counts how often each code was chosen in training (upstream's name).
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        epsilon: float = 1e-5,
    ):
        super().__init__()
        self.num_codes, self.code_dim = num_codes, code_dim
        self.commitment_cost, self.epsilon = commitment_cost, epsilon
        self.register_buffer("embeddings", torch.rand(code_dim, num_codes) * 0.01)  # upstream's init
        self.register_buffer("_embeddings_cnt", torch.zeros(num_codes, dtype=torch.int32))
        self.ema_cluster_size = DebiasedEMA((num_codes,), decay)
        self.ema_dw = DebiasedEMA((code_dim, num_codes), decay)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(N, D, H, W) -> code indices (N, H, W), by ||z||^2 - 2 z.e + ||e||^2 in the codebook's precision
        (float32, or float64 for a model made double)."""
        flat = rearrange(z, "n c h w -> (n h w) c").to(self.embeddings.dtype)
        with _no_autocast(flat):  # autocast would run the matmul in bf16 and pick other codes
            distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embeddings + self.embeddings.pow(2).sum(0)
        return distances.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (N, H, W) -> code vectors (N, D, H, W)."""
        return rearrange(F.embedding(indices, self.embeddings.t()), "n h w c -> n c h w")

    def forward(self, z: torch.Tensor, *, move_codes: bool = True) -> Quantized:
        """(N, D, H, W) -> straight-through codes. In training mode the call counts the codes it chose and
        then, unless `move_codes` is False (upstream's `is_training=False` calls in training, as MOSO's
        discriminator phase makes them), moves the codebook; the codes it returns are those from before
        that move, as upstream."""
        indices = self.nearest(z)  # (N, H, W)
        codes = self.lookup(indices).to(z.dtype)
        if self.training:
            onehot = F.one_hot(indices.flatten(), self.num_codes).to(self.embeddings.dtype)  # (M, K)
            self._embeddings_cnt += onehot.sum(0).to(torch.int32)
            if move_codes:
                self._update(rearrange(z.detach(), "n c h w -> (n h w) c").to(self.embeddings.dtype), onehot)
        loss = self.commitment_cost * torch.mean((codes.detach() - z) ** 2)
        return Quantized(z + (codes - z).detach(), loss, indices)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, onehot: torch.Tensor) -> None:
        # flat (M, D) vectors, onehot (M, K) their codes, both in the codebook's precision
        with _no_autocast(flat):  # the statistics must not get autocast's bf16 matmul (lerp_ refuses mixed dtypes)
            sums = self.ema_dw.update(flat.t() @ onehot)  # (D, K)
        sizes = self.ema_cluster_size.update(onehot.sum(0))  # (K,)
        total = sizes.sum()
        smoothed = (sizes + self.epsilon) / (total + self.num_codes * self.epsilon) * total
        self.embeddings.copy_(sums / smoothed)
