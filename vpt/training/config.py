"""The `train:` section and the learning-rate schedule it describes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TrainConfig:
    """The `train:` section shared by every training command."""

    max_steps: int = 1000
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much wall time in one invocation; 0 = no limit
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_schedule: Literal["constant", "cosine", "polynomial"] = "constant"
    warmup_steps: int = 0
    # Linear warm-up's first step: False -> lr / warmup_steps; True -> 0, as transformers' and diffusers'
    # schedulers count it (upstream RIVER), so step s of the warm-up runs at lr * s / warmup_steps.
    warmup_from_zero: bool = False
    # Steps the cosine / polynomial decay spans; 0 = max_steps. Upstream Seer's schedule spans twice its training
    # (train.py multiplies the length by the accumulation steps, accelerate steps the schedule once per update).
    lr_schedule_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine / polynomial decay to lr * min_lr_ratio
    lr_power: float = 1.0  # polynomial: lr factor (1 - progress) ** lr_power (RIVER: 0.5)
    grad_clip: float = 1.0  # max gradient norm (or element, see grad_clip_mode); 0 turns clipping off
    # norm: rescale each group's gradient to norm <= grad_clip; value: clamp every gradient element to
    # ±grad_clip (RSVP upstream: clip_grad_value_ at 1.0).
    grad_clip_mode: Literal["norm", "value"] = "norm"
    grad_clip_start: int = 0  # clip from this step on; before it the norm is only measured (official Latte: 100000)
    # The first step only accumulates its gradient, so the first update applies the first two batches'
    # gradients summed (official Latte's train.py updates once train_steps > 0); every later step updates.
    skip_first_update: bool = False
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 autocast where the device has bf16 units
    ema_decay: float = 0.0  # 0 turns EMA off
    ema_start: int = 0  # EMA copies the weights until this step, then averages
    ema_every: int = 1  # EMA update every this many optimiser steps (PVDM upstream: 25)
    # The EMA updates after steps ema_offset + k * ema_every, k >= 1. PVDM upstream: 1 (its loop counts
    # iterations from 0 and skips iteration 0, so its updates follow optimiser steps 26, 51, ...).
    ema_offset: int = 0
    # LitEma's decay ramp (PVDM, latent-diffusion): the n-th update uses min(ema_decay, (1 + n) / (10 + n)).
    ema_warmup: bool = False
    compile: bool = False
    log_every: int = 10
    checkpoint_every: int = 500
    sample_every: int = 0  # 0 = never
    val_every: int = 0  # 0 = never
    best_metric: str = "val_loss"  # lower is better; the checkpoint with the lowest value is kept
    keep_last: int = 3
    seed: int = 0
    num_workers: int = 0
    log_with: list[str] = field(default_factory=list)  # tensorboard, wandb (when installed)

    def __post_init__(self) -> None:
        if self.grad_clip_start < 0:
            raise ValueError(f"train.grad_clip_start must be >= 0, got {self.grad_clip_start}")
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "ema_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_schedule_steps < 0:
            raise ValueError(f"train.lr_schedule_steps must be >= 0, got {self.lr_schedule_steps}")
        if self.ema_offset < 0:
            raise ValueError(f"train.ema_offset must be >= 0, got {self.ema_offset}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not (self.lr >= 0 and math.isfinite(self.lr)):  # 0 is allowed: a run that only evaluates its init
            raise ValueError(f"train.lr must be a finite number >= 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ValueError(f"train.betas needs two values, got {self.betas}")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then constant, cosine or polynomial decay to `min_lr_ratio`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step if cfg.warmup_from_zero else step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, (cfg.lr_schedule_steps or cfg.max_steps) - cfg.warmup_steps)
    if cfg.lr_schedule == "polynomial":  # as transformers' get_polynomial_decay_schedule_with_warmup
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * (1.0 - min(1.0, progress)) ** cfg.lr_power
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine
