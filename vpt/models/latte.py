"""Latte: a latent diffusion transformer for video (Ma et al., "Latte: Latent Diffusion Transformer for
Video Generation", 2024), in the flavour of the compact VideoGeneration-PyTorch re-implementation.

One file, in reading order: config and sizes, the video DiT (patch embedding, fixed sinusoidal
tables, adaLN-Zero blocks alternating spatial and temporal attention, final layer), the converter
for that re-implementation's state dicts, and the `latte` backend (ε-prediction DDPM training,
generation and frame-conditioned prediction on IDDPM's respaced process, as upstream samples).

The model works on the latents of a frozen per-frame autoencoder, `(B, F, c, h, w)`. Every frame is
cut into p x p patches; a spatial block attends over the patches of one frame, the next temporal
block over the frames of one patch position, and so on. The diffusion step (and, when
`num_classes > 0`, a class label) modulates every block through adaLN-Zero.

What is here and what is not: the VG flavour (Linear patch embedding, row-first position table,
`[sin | cos]` timestep features, attention width independent of the model width, ε output with fixed
variance, image-video joint frames) plus class conditioning with label dropout and classifier-free
guidance, and the official model's conventions by config (`position_order: column`, `learn_sigma`
with IDDPM's learned range and VLB term). Both upstreams' checkpoints convert: the official Conv
patch kernel becomes the Linear over (ph pw c) and its `[cos | sin]` time features are reordered.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from vpt.errors import ConfigError, UsageError
from vpt.models.attention import attention
from vpt.models.backend import EvalProtocol
from vpt.models.embeddings import sinusoidal_embedding
from vpt.models.latent import LatentBackend, build_autoencoder, clip_from_batch
from vpt.progress import solver_step

# --- config and sizes -------------------------------------------------------------------------------

#: DiT's sizes (depth counts spatial and temporal blocks together); head width = hidden / heads.
LATTE_WIDTHS: dict[str, dict[str, int]] = {
    "S": {"num_layers": 12, "hidden_size": 384, "num_heads": 6},
    "B": {"num_layers": 12, "hidden_size": 768, "num_heads": 12},
    "L": {"num_layers": 24, "hidden_size": 1024, "num_heads": 16},
    "XL": {"num_layers": 28, "hidden_size": 1152, "num_heads": 16},
}
LATTE_SIZES: dict[str, dict[str, int]] = {
    f"{width}/{patch}": {**values, "head_dim": values["hidden_size"] // values["num_heads"], "patch_size": patch}
    for width, values in LATTE_WIDTHS.items()
    for patch in (2, 4, 8)
}


@dataclass
class LatteConfig:
    """The `model:` section of a Latte run."""

    # Frozen per-frame autoencoder: a `vpt train-ae` run, published AE weights or "pixels:P" (toy data).
    autoencoder: Optional[str] = None
    size: Optional[str] = None  # "S/2" ... "XL/8": sets num_layers, hidden_size, num_heads, head_dim, patch_size
    latent_channels: int = 4
    num_frames: int = 16  # clip length the model is trained on (frames given to one denoiser call)
    patch_size: int = 2
    num_layers: int = 12  # spatial and temporal blocks together, alternating, spatial first
    hidden_size: int = 768
    num_heads: int = 12
    head_dim: int = 64  # attention width num_heads * head_dim may differ from hidden_size
    timestep_emb_dim: int = 256
    num_classes: int = 0  # > 0: class-conditional (labels 0..num_classes-1; index num_classes = "no label")
    # Class of a clip read off its caption: the index of the first of these words found in it (sets
    # num_classes). E.g. [left, right, up, down, falls] for the built-in shapes. Empty: batches carry "label".
    class_words: list[str] = field(default_factory=list)
    class_dropout: float = 0.1  # training: probability a label is replaced by "no label" (for guidance)
    # The official model's conventions: its spatial table puts the column index in the first half
    # ("column"), and it also predicts the variance (learn_sigma: 2C output channels, IDDPM's learned
    # range between the posterior variance and beta_t, trained with the VLB term).
    position_order: Literal["row", "column"] = "row"
    learn_sigma: bool = False
    # Trained frame conditioning: > 0 gives the denoiser up to this many leading frames clean, marked by
    # an extra input channel (0 to condition_frames of them per training clip, their loss left out);
    # `predict` then conditions on the context this way instead of by replacement.
    condition_frames: int = 0
    num_images: int = 0  # image-video joint training: single frames after each clip (see `loss`; data.joint_images)
    # Training latents of a KL autoencoder: a fresh draw z = mean + exp(logvar / 2) eps from its
    # posterior every step ("sample", as both upstreams do; from frames, or from latents cached with
    # their posterior by `vpt save-latents`), or the posterior mean ("mean", one fixed target per frame).
    latent_posterior: Literal["sample", "mean"] = "sample"
    # Order of a training step's two draws from the global generator: the step t, then the noise
    # ("timestep_first", official Latte's training_losses), or the noise, then t ("noise_first",
    # VideoGeneration-PyTorch's train_vae_ditv.py). Same distribution; the order lets a seeded run repeat upstream's.
    training_draws: Literal["timestep_first", "noise_first"] = "timestep_first"
    # Diffusion: DDPM with betas linear from beta_start to beta_end, ε-prediction.
    num_timesteps: int = 1000
    beta_start: float = 1.0e-4
    beta_end: float = 0.02
    # Sampling defaults of `predict` (`vpt sample --steps/--option/--guidance-scale` override them).
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    steps: int = 1000
    # Which of the training steps `steps` visits (IDDPM's respacing, on whose respaced process both
    # samplers step): "even" spreads them over 0..T-1 ("250": 999, 995, 991, ..., 0), as the official
    # samplers do for DDPM and DDIM; "ddim" takes the integer stride of IDDPM's "ddimN" (50: 980, 960, ..., 0).
    timestep_spacing: Literal["even", "ddim"] = "even"
    # DDPM noise without learn_sigma: "fixed_small" (the posterior variance; VideoGeneration-PyTorch's
    # sampler) or "fixed_large" (β of the respaced process; the official create_diffusion's default).
    variance_type: Literal["fixed_small", "fixed_large"] = "fixed_small"
    guidance_scale: float = 1.0  # classifier-free guidance (class-conditional models); 1 = none
    context_frames: int = 0  # frames its evaluation protocol gives `predict`; 0 = generation

    def __post_init__(self) -> None:
        if self.size is not None:
            if self.size not in LATTE_SIZES:
                raise ValueError(f"model.size must be one of {', '.join(LATTE_SIZES)}, got {self.size!r}")
            for key, value in LATTE_SIZES[self.size].items():
                setattr(self, key, value)
        if self.hidden_size % 4:
            raise ValueError(f"model.hidden_size ({self.hidden_size}) must be divisible by 4 (2-D sinusoidal table)")
        for name in ("num_frames", "patch_size", "num_layers", "num_heads", "head_dim", "steps", "num_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_layers % 2:
            raise ValueError(
                f"model.num_layers ({self.num_layers}) must be even: spatial and temporal blocks alternate"
            )
        if self.class_words:
            if self.num_classes not in (0, len(self.class_words)):
                raise ValueError(
                    f"model.num_classes ({self.num_classes}) differs from the {len(self.class_words)} class_words"
                )
            self.num_classes = len(self.class_words)
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"model.class_dropout must be in [0, 1), got {self.class_dropout}")
        if not 0 <= self.condition_frames < self.num_frames:
            raise ValueError(f"model.condition_frames must be in [0, num_frames), got {self.condition_frames}")
        if self.context_frames < 0 or self.context_frames >= self.num_frames:
            raise ValueError(f"model.context_frames must be in [0, num_frames), got {self.context_frames}")


# --- fixed sinusoidal tables ------------------------------------------------------------------------


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) steps or positions -> (N, dim) features [sin | cos] (the frame table uses the same)."""
    return sinusoidal_embedding(t, dim, cos_first=False)


def patch_position_table(
    dim: int, rows: int, cols: int, device: torch.device | None = None, order: str = "row"
) -> torch.Tensor:
    """(rows * cols, dim) table of a row-major patch grid: first half the row index and second the
    column ("row"), or the other way round ("column", the official model's table)."""
    row_features = repeat(timestep_features(torch.arange(rows, device=device), dim // 2), "r d -> r c d", c=cols)
    col_features = repeat(timestep_features(torch.arange(cols, device=device), dim // 2), "c d -> r c d", r=rows)
    halves = (row_features, col_features) if order == "row" else (col_features, row_features)
    return rearrange(torch.cat(halves, dim=-1), "r c d -> (r c) d")


# --- the video DiT ---------------------------------------------------------------------------------


def per_clip(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, D) values of each clip, shaped to broadcast over x (B G, L, D), whose G sequences per clip
    (frames, or patch positions) share them: (B, 1, D) repeated G times along the batch by a view.
    The conditioning is the same for every sequence of a clip, so the adaLN projections run on B rows,
    not B G (the official model repeats the vector first and projects every copy)."""
    batch = values.shape[0]
    return values[:, None, None].expand(batch, x.shape[0] // batch, 1, values.shape[-1]).flatten(0, 1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B G, L, D) normalised, then scaled and shifted per clip (shift, scale (B, D))."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + per_clip(scale, x)) + per_clip(shift, x)


class Attention(nn.Module):
    """Self-attention with a packed [q | k | v] projection of width heads * head_dim (free of the model width)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
        q, k, v = rearrange(self.qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.heads)
        return self.proj(rearrange(attention(q, k, v), "n h l d -> n l (h d)"))


class DiTBlock(nn.Module):
    """adaLN-Zero block: the conditioning vector gives shift, scale and gate for attention and MLP."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.attn = Attention(dim, heads, head_dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.modulation = nn.Linear(dim, 6 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # x (B G, L, D), cond (B, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(cond)).chunk(6, dim=-1)
        x = x + per_clip(gate1, x) * self.attn(modulate(x, shift1, scale1))
        return x + per_clip(gate2, x) * self.mlp(modulate(x, shift2, scale2))


class FinalLayer(nn.Module):
    """Modulated LayerNorm, then one Linear back to the patch pixels (ph pw c)."""

    def __init__(self, dim: int, patch_values: int):
        super().__init__()
        self.modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch_values)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # (B G, L, D), (B, D)
        shift, scale = self.modulation(F.silu(cond)).chunk(2, dim=-1)
        return self.linear(modulate(x, shift, scale))


class LatteDiT(nn.Module):
    """ε(x_t, t[, y]): (B, F, c, h, w) noisy latents -> (B, F, c, h, w) predicted noise
    ((B, F, 2c, h, w) with learn_sigma: noise, then the variance interpolation v in [-1, 1]).

    With `num_images > 0` the last `num_images` frames are independent images (image-video joint
    training): spatial blocks see them, temporal blocks and the frame table do not.
    """

    def __init__(self, cfg: LatteConfig):
        super().__init__()
        self.patch, self.position_order = cfg.patch_size, cfg.position_order
        dim = cfg.hidden_size
        self.dim, self.timestep_emb_dim = dim, cfg.timestep_emb_dim
        in_channels = cfg.latent_channels + (1 if cfg.condition_frames else 0)  # + the known-frame mask
        self.patch_embed = nn.Linear(cfg.patch_size**2 * in_channels, dim)
        self.time_embed = nn.Sequential(nn.Linear(cfg.timestep_emb_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        # one extra row: the "no label" class that label dropout and guidance use
        self.label_embed = nn.Embedding(cfg.num_classes + 1, dim) if cfg.num_classes > 0 else None
        self.blocks = nn.ModuleList(DiTBlock(dim, cfg.num_heads, cfg.head_dim) for _ in range(cfg.num_layers))
        out_channels = cfg.latent_channels * (2 if cfg.learn_sigma else 1)  # [ε | variance interpolation]
        self.final = FinalLayer(dim, cfg.patch_size**2 * out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's recipe: Xavier-uniform linears with zero bias, N(0, 0.02) time MLP and label table,
        zero adaLN and output layers (a fresh model predicts ε = 0 and every block starts as identity)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in (self.time_embed[0], self.time_embed[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)
        for layer in [block.modulation for block in self.blocks] + [self.final.modulation, self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None, num_images: int = 0
    ) -> torch.Tensor:
        """x (B, F, c, h, w), t (B,) integer steps, labels (B,) class indices (num_classes or None: no label)."""
        batch, frames, _, height, width = x.shape
        rows, cols = height // self.patch, width // self.patch
        video_frames = frames - num_images
        tokens = rearrange(x, "b f c (nh ph) (nw pw) -> (b f) (nh nw) (ph pw c)", ph=self.patch, pw=self.patch)
        tokens = self.patch_embed(tokens) + patch_position_table(self.dim, rows, cols, x.device, self.position_order)
        tokens = tokens.to(x.dtype)  # (BF, N, D)

        cond = self.time_embed(timestep_features(t, self.timestep_emb_dim).to(x.dtype))  # (B, D)
        if self.label_embed is not None:
            if labels is None:  # the "no label" class (the last row)
                labels = torch.full((batch,), self.label_embed.num_embeddings - 1, device=x.device)
            cond = cond + self.label_embed(labels)
        frame_table = timestep_features(torch.arange(video_frames, device=x.device), self.dim).to(x.dtype)  # (F_v, D)

        for pair in range(0, len(self.blocks), 2):
            tokens = self.blocks[pair](tokens, cond)
            tokens = rearrange(tokens, "(b f) n d -> (b n) f d", b=batch)
            video, images = tokens[:, :video_frames], tokens[:, video_frames:]
            if pair == 0:  # the frame positions enter once, before the first temporal block
                video = video + frame_table
            tokens = torch.cat([self.blocks[pair + 1](video, cond), images], dim=1)
            tokens = rearrange(tokens, "(b n) f d -> (b f) n d", b=batch)

        out = self.final(tokens, cond)  # (BF, N, p^2 c)
        return rearrange(
            out, "(b f) (nh nw) (ph pw c) -> b f c (nh ph) (nw pw)", b=batch, nh=rows, ph=self.patch, pw=self.patch
        )


# --- learned variance (IDDPM) ----------------------------------------------------------------------


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of Φ that IDDPM's discretised likelihood uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of values in [-1, 1] quantised to 256 bins under N(mean, exp(log_scale)^2), per element;
    the outer bins extend to infinity."""
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (x - mean + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (x - mean - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def variance_vlb(
    alphas_cumprod: torch.Tensor,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """IDDPM's variational bound term for a learned variance, in bits, per element (B, ...).

    x0, xt, eps (the predicted noise, detached by the caller so only the variance learns from this
    term), v (variance interpolation, in [-1, 1]): (B, ...); t (B,). For t > 0 the KL between the
    true posterior q(x_{t-1} | x_t, x_0) and the model's Gaussian, whose log-variance is
    (v+1)/2 log β_t + (1-v)/2 log β̃_t (β̃ the posterior variance, clipped at t = 0); at t = 0 the
    negative discretised log-likelihood of x_0."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    abar = alphas_cumprod.to(x0.device, torch.float64)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1 - abar / abar_prev
    post_var = beta * (1 - abar_prev) / (1 - abar)
    post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef_x0 = beta * abar_prev.sqrt() / (1 - abar)
    coef_xt = (1 - abar_prev) * (1 - beta).sqrt() / (1 - abar)
    pick = lambda table: table[t].to(x0.dtype).reshape(shape)  # noqa: E731
    true_mean = pick(coef_x0) * x0 + pick(coef_xt) * xt
    true_log_var = pick(post_log_var)
    x0_pred = (xt - pick((1 - abar).sqrt()) * eps) / pick(abar.sqrt())
    model_mean = pick(coef_x0) * x0_pred + pick(coef_xt) * xt
    frac = (v + 1) / 2
    model_log_var = frac * pick(torch.log(beta)) + (1 - frac) * true_log_var
    kl = 0.5 * (
        -1.0
        + model_log_var
        - true_log_var
        + torch.exp(true_log_var - model_log_var)
        + (true_mean - model_mean) ** 2 * torch.exp(-model_log_var)
    )
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    return torch.where((t == 0).reshape(shape), nll, kl) / math.log(2.0)


# --- respaced sampling (IDDPM) ---------------------------------------------------------------------


def space_timesteps(num_timesteps: int, steps: int, spacing: str = "even") -> list[int]:
    """The training steps a `steps`-step sampler visits, ascending, as IDDPM's respacing picks them.

    "even": one section of `steps` points on [0, num_timesteps - 1] at a fractional stride
    (num_timesteps - 1) / (steps - 1), each rounded half to even (1000 steps, 250: 0, 4, 8, ..., 995, 999);
    what both official Latte samplers ask for, DDPM and DDIM alike. "ddim": 0, s, 2s, ... with the
    smallest integer stride s giving exactly `steps` points (50 of 1000: 0, 20, ..., 980)."""
    if not 1 <= steps <= num_timesteps:
        raise UsageError(f"steps must be in 1..{num_timesteps}, got {steps}")
    if spacing == "ddim":
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == steps:
                return list(range(0, num_timesteps, stride))
        raise UsageError(
            f"model.timestep_spacing ddim: no integer stride gives exactly {steps} of "
            f"{num_timesteps} steps; choose another step count or timestep_spacing: even"
        )
    if spacing != "even":
        raise UsageError(f"model.timestep_spacing must be even or ddim, got {spacing!r}")
    stride = (num_timesteps - 1) / (steps - 1) if steps > 1 else 1
    taken, position = [], 0.0
    for _ in range(steps):  # the position accumulates, as upstream's does (rounding follows the sum)
        taken.append(round(position))
        position += stride
    return sorted(set(taken))


def respaced_tables(betas: torch.Tensor, kept: list[int]) -> dict[str, torch.Tensor]:
    """The process on the `kept` steps (ascending) of a float64 β schedule: its own betas
    β'_i = 1 - ᾱ(t_i) / ᾱ(t_{i-1}) (so ᾱ' at i is ᾱ at t_i) and, from them, the posterior tables
    of q(x_{t_{i-1}} | x_{t_i}, x_0), all float64 of length len(kept)."""
    alphas_cumprod = torch.cumprod(1.0 - betas.double(), dim=0)[kept]
    prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    beta = 1.0 - alphas_cumprod / prev
    posterior_variance = beta * (1.0 - prev) / (1.0 - alphas_cumprod)
    first = posterior_variance[1:2] if len(kept) > 1 else beta[:1]  # the posterior variance is 0 at i = 0
    return {
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "betas": beta,
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.log(torch.cat([first, posterior_variance[1:]])),
        # fixed_large: β' (with the clipped posterior variance at i = 0, as IDDPM)
        "large_log_variance": torch.log(torch.cat([first, beta[1:]])),
        "coef_x0": beta * prev.sqrt() / (1.0 - alphas_cumprod),
        "coef_xt": (1.0 - prev) * (1.0 - beta).sqrt() / (1.0 - alphas_cumprod),
    }


# --- converter for VideoGeneration-PyTorch state dicts ---------------------------------------------

#: upstream key -> vpt key (regex, replacement), applied in order.
_VG_RENAMES: list[tuple[str, str]] = [
    (r"^patch_embed_layer\.patch_embed\.0\.", "patch_embed."),
    (r"^t_proj\.", "time_embed."),
    (r"^layers\.(\d+)\.attn_block\.qkv_proj\.", r"blocks.\1.attn.qkv."),
    (r"^layers\.(\d+)\.attn_block\.output_proj\.0\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.mlp_block\.", r"blocks.\1.mlp."),
    (r"^layers\.(\d+)\.adaptive_norm_layer\.1\.", r"blocks.\1.modulation."),
    (r"^adaptive_norm_layer\.1\.", "final.modulation."),
    (r"^proj_out\.", "final.linear."),
]


def convert_vg_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A VideoGeneration-PyTorch `DITVideo` state dict (e.g. its `dit_ckpt.pth`) -> `LatteDiT` names."""
    converted = {}
    for key, value in state.items():
        new_key = key.removeprefix("module.")
        for pattern, replacement in _VG_RENAMES:
            new_key = re.sub(pattern, replacement, new_key)
        converted[new_key] = value
    return converted


# --- converter for the official (Vchitect/Latte) checkpoints ----------------------------------------

_OFFICIAL_RENAMES: list[tuple[str, str]] = [
    (r"^x_embedder\.proj\.", "patch_embed."),
    (r"^t_embedder\.mlp\.", "time_embed."),
    (r"^y_embedder\.embedding_table\.", "label_embed."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"blocks.\1.mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.2."),
    (r"^blocks\.(\d+)\.adaLN_modulation\.1\.", r"blocks.\1.modulation."),
    (r"^final_layer\.adaLN_modulation\.1\.", "final.modulation."),
    (r"^final_layer\.linear\.", "final.linear."),
]
_OFFICIAL_FIXED_TABLES = ("pos_embed", "temp_embed")  # fixed sinusoids, computed here


def official_state_dict(loaded: Any) -> dict[str, torch.Tensor]:
    """The weights inside an official training checkpoint `{"model", "ema"}` (EMA preferred, as its
    samplers do), or a bare state dict; DDP's `module.` prefixes removed."""
    from vpt.weights import strip_module_prefix

    if isinstance(loaded, dict) and isinstance(loaded.get("ema"), dict):
        loaded = loaded["ema"]
    elif isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict):
        raise UsageError("not a Latte checkpoint: expected a state dict or {'model', 'ema'}")
    return strip_module_prefix(loaded)


def convert_official_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Latte weights -> `LatteDiT` names, in the conventions of this model:
    the Conv patch kernel (D, c, p, p) becomes the Linear over (ph pw c); the first time-MLP weight's
    columns swap halves ([cos | sin] features -> [sin | cos]); the fixed tables are dropped."""
    converted = {}
    for key, value in state.items():
        if key in _OFFICIAL_FIXED_TABLES:
            continue
        new_key = key
        for pattern, replacement in _OFFICIAL_RENAMES:
            new_key = re.sub(pattern, replacement, new_key)
        if new_key == "patch_embed.weight":
            value = rearrange(value, "d c ph pw -> d (ph pw c)")
        elif new_key == "time_embed.0.weight":
            value = torch.cat(value.chunk(2, dim=1)[::-1], dim=1)
        converted[new_key] = value
    return converted


def config_from_official_state(state: dict[str, torch.Tensor], beside: dict[str, Any] | None = None) -> dict[str, Any]:
    """LatteConfig fields read off official weights. The heads are not in them: `beside` (a config.json's
    model settings) gives `num_heads` (and `head_dim`, default width / heads); without it only a published
    size (width and depth of DiT's table) takes the table's heads, and anything else is a one-line error."""
    hidden, channels, patch, _ = state["x_embedder.proj.weight"].shape
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    beside = beside or {}
    if "num_heads" in beside:
        heads = int(beside["num_heads"])
    else:
        published = {(v["hidden_size"], v["num_layers"]): v["num_heads"] for v in LATTE_WIDTHS.values()}
        if (hidden, depth) not in published:
            raise ConfigError(
                f"Latte weights of width {hidden} and depth {depth} are no published size, and the weights do not "
                "say their attention heads: set model.num_heads in a config.json beside them"
            )
        heads = published[hidden, depth]
    out_values = state["final_layer.linear.weight"].shape[0]
    labels = state.get("y_embedder.embedding_table.weight")
    return {
        "latent_channels": channels,
        "patch_size": patch,
        "hidden_size": hidden,
        "num_heads": heads,
        "head_dim": int(beside.get("head_dim", hidden // heads)),
        "num_layers": depth,
        "timestep_emb_dim": state["t_embedder.mlp.0.weight"].shape[1],
        "num_frames": state["temp_embed"].shape[1] if "temp_embed" in state else 16,
        "num_classes": labels.shape[0] - 1 if labels is not None else 0,
        "learn_sigma": out_values == 2 * patch * patch * channels,
        "position_order": "column",
    }


def _is_vg_state(state: dict[str, Any]) -> bool:
    """Whether a state dict is VideoGeneration-PyTorch's `DITVideo` (its names, before conversion)."""
    return {"patch_embed_layer.patch_embed.0.weight", "t_proj.0.weight"} <= state.keys()


#: VideoGeneration-PyTorch releases: `dit_ckpt.pth` is a flat state dict that names no architecture, so
#: `vpt sample --checkpoint dit_ckpt.pth --release NAME` builds it from the config the release was trained
#: with (model, frame size and resize, evaluation protocol), kept in the repository's configs/latte/.
VG_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "latte"
VG_PRESETS: dict[str, str] = {"vg-ucf": "vg_ucf.yaml", "vg-mnist": "vg_mnist.yaml"}

#: The official releases' evaluation: StyleGAN-V's fvd2048_16f protocol (16-frame clips at 256 px,
#: 2048 generated against 2048 real; which real videos is the user's choice).
OFFICIAL_PROTOCOL = dict(predicted_frames=16, fvd_preset="stylegan-v", clips=2048, image_size=256)


# --- the backend -----------------------------------------------------------------------------------


class Latte(LatentBackend):
    """Latte on the shared backend surface: `loss` (ε-prediction DDPM) and `predict` (generation, or
    prediction of the frames after a context by replacement sampling or trained frame conditioning).

    With a KL autoencoder it trains, like both upstreams, on a fresh draw from the posterior every
    step (`latent_posterior: sample`; cached latents need `vpt save-latents` to have kept the
    log-variance, which it does for KL autoencoders), or on the posterior mean (`mean`)."""

    name = "latte"
    Config = LatteConfig
    generates_without_context = True

    def __init__(self, cfg: LatteConfig, autoencoder: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.denoiser = LatteDiT(cfg)
        self._attach_autoencoder(autoencoder)

    @property
    def takes_class_labels(self) -> bool:  # type: ignore[override]
        return self.cfg.num_classes > 0

    @classmethod
    def needs_captions(cls, cfg: LatteConfig) -> str | None:
        if cfg.class_words:
            return "model.class_words reads each clip's class off its caption"
        return None

    # --- diffusion schedules --------------------------------------------------------------------------
    def _scheduler(self, sampler: str = "ddpm"):
        """A fresh diffusers scheduler with the training betas: linear in β, ε-prediction, no clipping."""
        from diffusers import DDIMScheduler, DDPMScheduler

        common = dict(
            num_train_timesteps=self.cfg.num_timesteps,
            beta_start=self.cfg.beta_start,
            beta_end=self.cfg.beta_end,
            beta_schedule="linear",
            prediction_type="epsilon",
            clip_sample=False,
        )
        if sampler == "ddpm":
            return DDPMScheduler(**common, variance_type="learned_range" if self.cfg.learn_sigma else "fixed_small")
        if sampler == "ddim":
            return DDIMScheduler(**common, set_alpha_to_one=True)
        raise UsageError(f"latte: unknown sampler {sampler!r}; choose ddpm or ddim")

    # --- training -------------------------------------------------------------------------------------
    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """MSE between the noise and its prediction, one step t ~ U{0..T-1} per clip (image frames included).

        Joint training (`num_images > 0`): the last `num_images` frames of every clip are single images.
        With data.joint_images = num_images the loader drew them from random videos of the whole dataset
        (upstream's draw; the batch's "joint_images" says so); otherwise (data.frames = num_frames +
        num_images) the extra frames of every clip are handed to the next clip of the batch, so its
        images come from another video."""
        latents = self._training_latents(batch)  # (B, F, c, h, w)
        video_frames = latents.shape[1] - self.cfg.num_images
        if video_frames < 1:
            raise ConfigError(
                f"clips of {latents.shape[1]} frames leave no video next to model.num_images={self.cfg.num_images}"
            )
        drawn_images = batch.get("joint_images") if isinstance(batch, dict) else None  # (B,) or None
        if drawn_images is not None and bool((drawn_images != self.cfg.num_images).any()):
            raise ConfigError(
                f"data.joint_images={int(drawn_images[0])} must equal model.num_images={self.cfg.num_images}"
            )
        if self.cfg.num_images and drawn_images is None:
            latents = torch.cat([latents[:, :video_frames], latents[:, video_frames:].roll(1, dims=0)], dim=1)
        batch_size = latents.shape[0]
        scheduler = self._scheduler()
        if self.cfg.training_draws == "noise_first":
            noise = torch.randn_like(latents)
            t = torch.randint(0, self.cfg.num_timesteps, (batch_size,), device=latents.device)
        else:
            t = torch.randint(0, self.cfg.num_timesteps, (batch_size,), device=latents.device)
            noise = torch.randn_like(latents)
        noisy = scheduler.add_noise(latents, noise, t)
        labels = self._training_labels(batch, batch_size, latents.device)
        known = self._known_frames(batch_size, latents.shape[1], latents.device)  # (B, F, 1, 1, 1) bool or None
        inputs = noisy if known is None else self._with_known(noisy, latents, known)
        predicted = self.denoiser(inputs, t, labels, num_images=self.cfg.num_images).float()
        scored = torch.ones_like(latents[:, :, :1, :1, :1]) if known is None else (~known).float()

        def mean_over_scored(values: torch.Tensor) -> torch.Tensor:  # (B, F, c, h, w) -> mean over unknown frames
            return (values * scored).sum() / (scored.sum() * values[0, 0].numel())

        eps = predicted[:, :, : latents.shape[2]]
        mse = mean_over_scored((eps - noise) ** 2)
        if not self.cfg.learn_sigma:
            return {"loss": mse}
        vlb = mean_over_scored(
            variance_vlb(scheduler.alphas_cumprod, latents, noisy, t, eps.detach(), predicted[:, :, latents.shape[2] :])
        )
        return {"loss": mse + vlb, "mse": mse.detach(), "vlb": vlb.detach()}

    def _training_latents(self, batch: Any) -> torch.Tensor:
        """The batch's latent clips (B, F, c, h, w), drawn from the autoencoder's posterior when it has
        one and model.latent_posterior is "sample" (global RNG, like the diffusion noise)."""
        clip, is_latent = clip_from_batch(batch)
        sampling = self.cfg.latent_posterior == "sample"
        if is_latent:
            mean, logvar = clip, batch.get("latent_logvar") if isinstance(batch, dict) else None
        elif sampling and getattr(self.autoencoder, "has_posterior", False):
            with torch.no_grad():
                mean, logvar = self.autoencoder.encode_posterior(clip)
        else:
            mean, logvar = self.encode(clip), None
        self._check_latents(mean)
        mean = mean.float()
        if not sampling or logvar is None:
            return mean
        return mean + torch.exp(0.5 * logvar.float()) * torch.randn_like(mean)

    def _known_frames(self, batch_size: int, frames: int, device: torch.device) -> torch.Tensor | None:
        """Training with condition_frames: each clip's first k ~ U{0..condition_frames} frames are known."""
        if not self.cfg.condition_frames:
            return None
        count = torch.randint(0, self.cfg.condition_frames + 1, (batch_size,), device=device)
        return (torch.arange(frames, device=device)[None] < count[:, None]).reshape(batch_size, frames, 1, 1, 1)

    @staticmethod
    def _with_known(noisy: torch.Tensor, clean: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Denoiser input of a frame-conditioned model: known frames clean, plus the mask as one more channel."""
        mask = known.to(noisy.dtype).expand(-1, -1, 1, *noisy.shape[3:])  # (B, F, 1, h, w)
        return torch.cat([torch.where(known, clean, noisy), mask], dim=2)

    def _training_labels(self, batch: Any, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """Class labels of a batch (from captions with `class_words`, else `label`), each replaced by
        "no label" with probability class_dropout."""
        if self.cfg.num_classes == 0:
            return None
        if self.cfg.class_words:
            if not isinstance(batch, dict) or "text" not in batch:
                raise ConfigError("model.class_words reads classes off captions, but the data have none")
            labels = torch.tensor([self.class_of_caption(text) for text in batch["text"]], device=device)
        elif isinstance(batch, dict) and "label" in batch:
            labels = torch.as_tensor(batch["label"], device=device).long()
        else:
            raise ConfigError(
                "model.num_classes > 0 but the batches carry no 'label'; set model.class_words to "
                "read classes off the captions"
            )
        dropped = torch.rand(batch_size, device=device) < self.cfg.class_dropout
        return torch.where(dropped, torch.full_like(labels, self.cfg.num_classes), labels)

    # --- sampling -------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        context: torch.Tensor,
        num_frames: int,
        *,
        prompt: list[str] | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        class_labels: int | str | list | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """(B, n, 3, H, W) context in [-1, 1] (n may be 0) -> (B, num_frames, 3, H, W) frames.

        n = 0 generates videos (of `class_labels` when the model is class-conditional; without them,
        of the "no label" class that label dropout trains). The denoiser always sees whole clips of
        `model.num_frames` frames; with n > 0 the frames after the context are sampled next to it:
        - by replacement ("inpainting") sampling, for models trained without `condition_frames`:
          before every step the known frames are overwritten by the context latents noised to that
          step (q(z_t | z_0), fresh noise each step). Limits: the context steers the unknown frames
          only through attention on its noisy copies (nothing pulls the unknown frames towards
          agreeing with it), so rollouts follow the context less tightly than a model trained to
          condition on frames, and worst at high noise where the copies say little;
        - with the known frames given clean and marked by the mask channel, for models trained with
          `condition_frames` (at most that many context frames are used).
        At most num_frames - 1 context frames are used (the newest); longer predictions continue in
        windows that keep the newest half of a window (at most condition_frames) as the next context.
        Options: `sampler` (ddpm | ddim), `steps`, `class_labels` (one class or one per sample: an
        index, or text naming one of `class_words`, read as training reads captions), `guidance_scale`
        (classifier-free guidance).
        """
        self.check_request(prompt, num_frames)
        batch_size = context.shape[0]
        labels = self._sampling_labels(class_labels, batch_size, context.device)
        if context.shape[1]:
            history = self.encode(context)  # (B, n, c, h, w)
        else:
            history = self._empty_latents(context)
        window = self.cfg.num_frames
        produced = 0
        while produced < num_frames:
            keep = min(
                history.shape[1], window - 1 if produced == 0 else window // 2, self.cfg.condition_frames or window
            )
            known = history[:, history.shape[1] - keep :]
            new = min(window - keep, num_frames - produced)
            self.frames_started(batch_size * new)
            clip = self.sample_latents(
                known,
                keep + new,
                labels,
                steps=steps,
                generator=generator,
                sampler=sampler,
                guidance_scale=guidance_scale,
            )
            history = torch.cat([history, clip[:, keep:]], dim=1)
            produced += new
            self.frames_done(batch_size * new)
        return self.decode(history[:, history.shape[1] - num_frames :])

    def _empty_latents(self, context: torch.Tensor) -> torch.Tensor:
        """(B, 0, c, h, w) for an empty (B, 0, 3, H, W) context: the latent grid of one blank frame."""
        blank = self.encode(context.new_zeros(context.shape[0], 1, *context.shape[2:]))
        return blank[:, :0]

    def class_of_text(self, text: str) -> int | None:
        """Index of the first of `class_words` that is a word of `text` (case-insensitive), or None.
        Training captions and sampling's `class_labels` both go through here, so "left", "Left" and
        "the red square moves left" name the class a clip captioned that way was trained as."""
        words = set(re.findall(r"\w+", text.lower()))
        return next((index for index, word in enumerate(self.cfg.class_words) if word.lower() in words), None)

    def class_of_caption(self, caption: str) -> int:
        """The class of a training clip with this caption (see `class_of_text`)."""
        index = self.class_of_text(caption)
        if index is None:
            raise ConfigError(
                f"caption {caption!r} names none of model.class_words ({', '.join(self.cfg.class_words)})"
            )
        return index

    def _sampling_labels(
        self, class_labels: int | str | list | None, batch_size: int, device: torch.device
    ) -> torch.Tensor | None:
        if class_labels is None:  # class-conditional models then sample the "no label" class
            return None
        if self.cfg.num_classes == 0:
            raise UsageError("this Latte model is unconditional (model.num_classes is 0); drop class_labels")
        names = class_labels if isinstance(class_labels, list) else [class_labels]
        # text (a class word, or a caption naming one) maps to its class as training captions do
        indices = [self.class_of_text(n) if isinstance(n, str) else int(n) for n in names]
        if None in indices:
            raise UsageError(
                f"class_labels {class_labels!r}: names none of model.class_words "
                f"({', '.join(self.cfg.class_words) or 'none'})"
            )
        labels = torch.tensor(indices, device=device).long()
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size or labels.min() < 0 or labels.max() >= self.cfg.num_classes:
            raise UsageError(f"class_labels must be one label or one per sample, each in 0..{self.cfg.num_classes - 1}")
        return labels

    @torch.no_grad()
    def sample_latents(
        self,
        known: torch.Tensor,
        num_frames: int,
        labels: torch.Tensor | None = None,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """Reverse diffusion of a (B, num_frames, c, h, w) latent clip whose first frames are `known`
        (B, k, c, h, w) (k may be 0), returned exactly. They are imposed by replacement (noised to each
        step), or given clean with the mask channel to a model trained with condition_frames >= k."""
        sampler_name = sampler or self.cfg.sampler
        if sampler_name not in ("ddpm", "ddim"):
            raise UsageError(f"latte: unknown sampler {sampler_name!r}; choose ddpm or ddim")
        steps = self.cfg.steps if steps is None else steps
        # IDDPM's respaced process, its tables in float64 and each step in the latents' dtype, as upstream
        kept = space_timesteps(self.cfg.num_timesteps, steps, self.cfg.timestep_spacing)
        betas = torch.linspace(self.cfg.beta_start, self.cfg.beta_end, self.cfg.num_timesteps, dtype=torch.float64)
        table = {name: values.tolist() for name, values in respaced_tables(betas, kept).items()}
        scale = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        count = known.shape[1]
        shape = (known.shape[0], num_frames, *known.shape[2:])
        channels = shape[2]
        draw_device = generator.device if generator is not None else known.device
        draw = lambda size: torch.randn(size, generator=generator, device=draw_device).to(known)  # noqa: E731
        x = draw(shape)
        if count > self.cfg.condition_frames > 0:
            raise UsageError(
                f"this Latte model was trained on up to {self.cfg.condition_frames} known frames, got {count}"
            )
        known_mask = (torch.arange(num_frames, device=known.device) < count).reshape(1, num_frames, 1, 1, 1)
        self.denoiser.eval()
        for done, i in enumerate(reversed(range(len(kept))), start=1):
            abar = table["alphas_cumprod"][i]
            if self.cfg.condition_frames:
                x[:, :count] = known
                inputs = self._with_known(x, x, known_mask.expand(shape[0], -1, -1, -1, -1))
            else:
                if count:  # the known frames noised to this step, q(x_t | x_0)
                    x[:, :count] = math.sqrt(abar) * known + math.sqrt(1.0 - abar) * draw(known.shape)
                inputs = x
            t = torch.full((shape[0],), kept[i], device=known.device, dtype=torch.long)
            out = self._guided_noise(inputs, t, labels, scale)  # (B, F, c or 2c, h, w)
            solver_step(done, len(kept))  # the step's network evaluation, what a step costs
            eps = out[:, :, :channels]
            x0 = math.sqrt(1.0 / abar) * x - math.sqrt(1.0 / abar - 1.0) * eps  # not clipped (clip_denoised=False)
            if sampler_name == "ddim":  # η = 0: deterministic, a learned variance is not used
                eps = (math.sqrt(1.0 / abar) * x - x0) / math.sqrt(1.0 / abar - 1.0)
                prev = table["alphas_cumprod_prev"][i]
                x = x0 * math.sqrt(prev) + math.sqrt(1.0 - prev) * eps
                continue
            mean = table["coef_x0"][i] * x0 + table["coef_xt"][i] * x
            if i == 0:  # the last step adds no noise
                x = mean
                continue
            if self.cfg.learn_sigma:  # IDDPM's learned range between the posterior variance and β'
                frac = (out[:, :, channels:] + 1) / 2
                log_variance = (
                    frac * math.log(table["betas"][i]) + (1 - frac) * table["posterior_log_variance_clipped"][i]
                )
            else:
                name = (
                    "large_log_variance"
                    if self.cfg.variance_type == "fixed_large"
                    else "posterior_log_variance_clipped"
                )
                log_variance = torch.full_like(mean, table[name][i])
            x = mean + torch.exp(0.5 * log_variance) * draw(shape)
        x[:, :count] = known
        return x

    def _guided_noise(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        """ε̂ (and v), with classifier-free guidance ε_∅ + s (ε_y - ε_∅) when the model is class-conditional
        and s != 1; guidance moves the noise channels only, a learned variance is the labelled one."""
        if labels is None or scale == 1.0:
            return self.denoiser(x, t, labels)
        null = torch.full_like(labels, self.cfg.num_classes)
        out_label, out_null = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        channels = self.cfg.latent_channels
        guided = out_null[:, :, :channels] + scale * (out_label[:, :, :channels] - out_null[:, :, :channels])
        return torch.cat([guided, out_label[:, :, channels:]], dim=2)

    # --- published checkpoints -----------------------------------------------------------------------
    @classmethod
    def recognizes_checkpoint(cls, path: Path) -> bool:
        """True for an official Latte checkpoint (`x_embedder`, `t_embedder` and `temp_embed` keys) or a
        VideoGeneration-PyTorch `dit_ckpt.pth` (`patch_embed_layer`, `t_proj` and `layers` keys)."""
        from vpt.weights import UnsafeWeightsError, read_weights

        try:
            state = official_state_dict(read_weights(path, mmap=True))
        except UnsafeWeightsError:
            raise
        except Exception:  # not a torch file, or not Latte's layout
            return False
        return {"x_embedder.proj.weight", "t_embedder.mlp.0.weight", "temp_embed"} <= state.keys() or _is_vg_state(
            state
        )

    @classmethod
    def from_checkpoint(cls, path: Path, *, autoencoder: str | Path | None = None, preset: str | None = None) -> Latte:
        """Published Latte weights with their frame VAE (`autoencoder`):
        - an official checkpoint (e.g. `ucf101.pt`), with the Stable Diffusion VAE folder the release
          ships (`vae/`, latents x 0.18215); samples use 250 DDPM steps and, for class-conditional
          releases, guidance 7 (the published sampling settings);
        - a VideoGeneration-PyTorch `dit_ckpt.pth`, whose flat state dict names no architecture:
          `preset` (vg-ucf, vg-mnist) picks the config it was trained with, and `autoencoder` is the
          release's `vae_autoencoder_ckpt.pth`."""
        from vpt.weights import read_weights, settings_beside

        path = Path(path)
        if not path.is_file():
            raise UsageError(f"checkpoint not found: {path}")
        state = official_state_dict(read_weights(path, mmap=True))
        if _is_vg_state(state):
            return cls._from_vg_state(path, state, autoencoder, preset)
        if preset is not None:
            raise UsageError(
                f"--release names a VideoGeneration-PyTorch release ({', '.join(VG_PRESETS)}); "
                f"{path.name} is an official Latte checkpoint, which needs none"
            )
        if autoencoder is None:
            raise UsageError(
                f"{path.name}: pass --ae with the release's vae/ folder (Stable Diffusion's sd-vae-ft-ema)"
            )
        beside, source = settings_beside(path)
        fields = config_from_official_state(state, beside)
        for key, value in beside.items():
            if key in fields and value != fields[key]:
                raise ConfigError(
                    f"{source}: model.{key} is {value!r}, but the weights in {path.name} have {fields[key]!r}"
                )
        # the official sampler: 250 evenly respaced DDPM steps, fixed_large noise unless the variance is learned
        cfg = LatteConfig(
            **fields, steps=250, variance_type="fixed_large", guidance_scale=7.0 if fields["num_classes"] else 1.0
        )
        model = cls(cfg, autoencoder=build_autoencoder(str(autoencoder)))
        model.denoiser.load_state_dict({key: value.float() for key, value in convert_official_state(state).items()})
        model.frame_size, model.resize = 256, "crop"
        model.published_protocol = EvalProtocol(**OFFICIAL_PROTOCOL)
        return model.eval()

    @classmethod
    def _from_vg_state(
        cls, path: Path, state: dict[str, torch.Tensor], autoencoder: str | Path | None, preset: str | None
    ) -> Latte:
        """A VideoGeneration-PyTorch DiT built from the preset's config (model, frame size, protocol)."""
        import yaml

        from vpt.config import validate

        if preset is None:
            raise UsageError(
                f"{path.name} is a VideoGeneration-PyTorch DiT, whose checkpoint names no architecture; "
                f"pass --release {' or --release '.join(VG_PRESETS)}"
            )
        if preset not in VG_PRESETS:
            raise UsageError(
                f"--release {preset}: not a VideoGeneration-PyTorch release; choose one of {', '.join(VG_PRESETS)}"
            )
        if autoencoder is None:
            raise UsageError(f"{path.name}: pass --ae with the release's frame VAE (its vae_autoencoder_ckpt.pth)")
        config_path = VG_CONFIGS / VG_PRESETS[preset]
        raw = yaml.safe_load(config_path.read_text())
        cfg = validate(LatteConfig, raw["model"], source=str(config_path), prefix="model.")
        converted = convert_vg_state(state)
        with torch.device("meta"):  # compare shapes before building a full-size model
            expected = {key: tuple(value.shape) for key, value in LatteDiT(cfg).state_dict().items()}
        found = {key: tuple(value.shape) for key, value in converted.items()}
        if found != expected:
            differing = sorted(set(found) ^ set(expected)) or [k for k in expected if found[k] != expected[k]]
            raise UsageError(
                f"{path.name} does not fit the {preset} architecture ({config_path.name}): "
                f"{differing[0]} is {found.get(differing[0], 'missing')}, expected {expected.get(differing[0], 'none')}"
            )
        model = cls(cfg, autoencoder=build_autoencoder(str(autoencoder)))
        model.denoiser.load_state_dict({key: value.float() for key, value in converted.items()})
        data = raw.get("data") or {}
        model.frame_size, model.resize = data.get("image_size"), data.get("resize", "squash")
        model.trained_frames = data.get("frames")
        model.published_protocol = validate(
            EvalProtocol, raw.get("eval") or {}, source=str(config_path), prefix="eval."
        )
        return model.eval()

    def default_protocol(self) -> EvalProtocol | None:
        return getattr(self, "published_protocol", None)

    def sample_record(self, **options: Any) -> dict[str, Any]:
        steps = options.get("steps") or self.cfg.steps
        return {
            "sampler": options.get("sampler") or self.cfg.sampler,
            "steps": steps,
            "timestep_spacing": self.cfg.timestep_spacing,
            "variance": "learned_range" if self.cfg.learn_sigma else self.cfg.variance_type,
            "window_frames": self.cfg.num_frames,
            "conditioning": "replacement (context noised to each step)",
            "guidance_scale": options.get("guidance_scale") or self.cfg.guidance_scale,
        }
