"""Numerical precision for inference (sampling, encoding latents, reconstructions)."""

from __future__ import annotations

import contextlib

import torch


def inference_autocast(device: torch.device):
    """bf16 autocast on CUDA devices that support it; a no-op context (full precision) elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
