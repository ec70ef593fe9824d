"""Exponential moving average of a model's trainable weights."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from vpt.distributed import full_tensor, shard_like
from vpt.weights import read_weights


class EMA:
    """Exponential moving average of the trainable weights, kept in float32.

    Under FSDP2 the parameters are DTensor shards; the shadow copies them and so is sharded the same way.
    """

    def __init__(self, model: nn.Module, decay: float, start: int = 0, warmup: bool = False):
        self.decay, self.start, self.warmup = decay, start, warmup
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def load(self, path: Path, device: torch.device) -> None:
        """Take the averaged weights a checkpoint kept (ema.safetensors, always the full tensors)."""
        full = read_weights(path)
        self.shadow = {name: shard_like(full[name].to(device).float(), kept) for name, kept in self.shadow.items()}

    def full_state(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """The whole averaged weights on the CPU, or {} where not `keep` (a collective under FSDP: every
        process takes part, and one gathered tensor at a time occupies the device)."""
        gathered = {}
        for name, value in self.shadow.items():
            full = full_tensor(value)
            if keep:
                gathered[name] = full.to("cpu")
        return gathered

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, count: int = 1) -> None:
        """Average in the weights after optimiser step `step`, the `count`-th update (from 1)."""
        decay = self.decay if step >= self.start else 0.0
        if self.warmup:  # LitEma's ramp; the count follows from the step, so a resumed run continues it
            decay = min(decay, (1 + count) / (10 + count))
        for name, param in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module):
        """Temporarily load the EMA weights into `model` (for sampling and validation)."""
        backup = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.shadow:
                    param.copy_(self.shadow[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in backup:
                        param.copy_(backup[name])
