"""Devices and numerical precision for inference (sampling, encoding latents, reconstructions, evaluation).

One resolver for every `--device` option and one precision switch for every `--precision` option, so
`vpt sample`, the samples written during training and `vpt eval-fvd` run a model the same way.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N` -> a device; a bad name is one line."""
    from vpt.errors import UsageError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available")
    return device


def default_precision(device: torch.device) -> Precision:
    """bf16 on CUDA devices that support it, fp32 elsewhere."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def inference_autocast(device: torch.device, precision: Precision | None = None):
    """The autocast context of `precision` (default: `default_precision(device)`); fp32 is a no-op."""
    precision = precision or default_precision(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
