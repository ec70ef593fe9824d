"""Seer's noise schedules on diffusers schedulers.

Training noises with SD's DDPM schedule (scaled-linear betas 0.00085 -> 0.012). The released sampler
used a *different* schedule (scaled-linear 1e-4 -> 0.02, LDM's defaults) and LDM's uniform DDIM
timesteps {0, c, 2c, ...} + 1 with c = 1000 // steps, so "30 steps" are 31.
`schedule="upstream"` reproduces that sampler; `schedule="train"` samples with the training betas.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler

TRAIN_TIMESTEPS = 1000
SCHEDULE_BETAS = {"train": (0.00085, 0.012), "upstream": (1e-4, 2e-2)}
Schedule = Literal["train", "upstream"]
Prediction = Literal["epsilon", "v_prediction"]


def training_scheduler(prediction_type: Prediction = "epsilon") -> DDPMScheduler:
    """SD v1.5's scheduler config as used for training: epsilon targets (upstream), uniform t, no offset noise."""
    start, end = SCHEDULE_BETAS["train"]
    return DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule="scaled_linear",
        beta_start=start,
        beta_end=end,
        steps_offset=1,
        clip_sample=False,
        prediction_type=prediction_type,
    )


def upstream_timesteps(steps: int) -> list[int]:
    """LDM's uniform DDIM discretisation, descending: range(0, 1000, 1000 // steps) + 1 (31 values for 30)."""
    if not 1 <= steps < TRAIN_TIMESTEPS:
        raise ValueError(f"DDIM steps must be between 1 and {TRAIN_TIMESTEPS - 1}, got {steps}")
    stride = TRAIN_TIMESTEPS // steps
    return [t + 1 for t in range(0, TRAIN_TIMESTEPS, stride) if t + 1 < TRAIN_TIMESTEPS][::-1]


def sampling_scheduler(steps: int, schedule: Schedule, prediction_type: Prediction = "epsilon") -> DDIMScheduler:
    """A DDIMScheduler (eta is passed to `step`) whose `timesteps` are upstream's list for `steps`.

    `set_timesteps(steps)` fixes diffusers' step gap to 1000 // steps, which is exactly the gap
    between upstream's timesteps; the last step's previous alpha is alphas_cumprod[0] (not 1).
    """
    start, end = SCHEDULE_BETAS[schedule]
    scheduler = DDIMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule="scaled_linear",
        beta_start=start,
        beta_end=end,
        set_alpha_to_one=False,
        clip_sample=False,
        prediction_type=prediction_type,
    )
    scheduler.set_timesteps(steps)
    scheduler.timesteps = torch.tensor(upstream_timesteps(steps), dtype=torch.long)
    return scheduler
