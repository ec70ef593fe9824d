"""Discrete-time diffusion maths shared by the DDPM-style backends (PVDM, RSVP-M): the β schedule
tables and upstream's DDIM loop with its time grid and an `after_step` hook (inpainting)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vpt.progress import solver_step


def diffusion_schedule(num_timesteps: int, linear_start: float, linear_end: float) -> dict[str, torch.Tensor]:
    """The float32 tables the loss and the sampler read, computed in float64 from
    β_t = (linspace(√start, √end, T))² (what LDM calls the "linear" schedule)."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    tables = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
    }
    return {name: table.float() for name, table in tables.items()}


SCHEDULE_TABLES = (
    "betas",
    "alphas_cumprod",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
)


class DiffusionTables:
    """Mixin of the diffusion backends: the `diffusion_schedule` tables as non-persistent buffers (they
    follow the model's device and never enter a checkpoint)."""

    def _register_schedule(self, cfg: Any) -> None:  # cfg: num_timesteps, linear_start, linear_end
        for name, table in diffusion_schedule(cfg.num_timesteps, cfg.linear_start, cfg.linear_end).items():
            self.register_buffer(name, table, persistent=False)

    def schedule(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in SCHEDULE_TABLES}


def ddim_time_pairs(num_timesteps: int, steps: int) -> list[tuple[int, int]]:
    """Upstream's DDIM grid: linspace(-1, T-1, steps+1) truncated to integers, newest first, as
    consecutive (t, t_next) pairs ending at t_next = -1 (e.g. 100 steps: 999, 989, ..., 9, -1)."""
    times = torch.linspace(-1, num_timesteps - 1, steps + 1).int().tolist()[::-1]
    return list(zip(times[:-1], times[1:]))


def ddim_sample(
    eps: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    pairs: list[tuple[int, int]],
    schedule: dict[str, torch.Tensor],
    eta: float,
    noise: Callable[[], torch.Tensor],
    *,
    clip_denoised: bool = True,
    after_step: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """DDIM from x = x_T along `pairs`; `eps(x, t)` predicts the noise, `noise()` draws one step's noise.

    Each step estimates x̂0 = √(1/ᾱ_t) x - √(1/ᾱ_t - 1) ε̂, clamped to [-1, 1] unless `clip_denoised`
    is False (ε̂ is kept, not recomputed from the clamped x̂0, as upstream); the last step returns x̂0.
    `after_step` edits every new x, the returned one included (inpainting resets known positions)."""
    keep = after_step or (lambda value: value)
    abar = schedule["alphas_cumprod"]
    for done, (t, t_next) in enumerate(pairs, start=1):
        predicted = eps(x, t)
        x0 = schedule["sqrt_recip_alphas_cumprod"][t] * x - schedule["sqrt_recipm1_alphas_cumprod"][t] * predicted
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        if t_next < 0:
            solver_step(done, len(pairs))
            return keep(x0)
        alpha, alpha_next = abar[t], abar[t_next]
        sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        x = keep(x0 * alpha_next.sqrt() + (1 - alpha_next - sigma**2).sqrt() * predicted + sigma * noise())
        solver_step(done, len(pairs))
    return x
