"""Devices and numerical precision for inference (sampling, encoding latents, reconstructions, evaluation).

One resolver for every `--device` option and one precision switch for every `--precision` option, so
`vpt sample`, the samples written during training and `vpt eval-fvd` run a model the same way.
"""

from __future__ import annotations

import contextlib
import os
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


def has_bf16_units(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (CUDA GPUs from Ampere on; CPUs with AVX512-BF16 or AMX).
    Elsewhere bf16 is emulated: autocast then runs slower than fp32 (4x on an AVX2 CPU), not faster.
    The environment variable VPT_BF16=0 (or 1) overrides the answer, e.g. to keep a machine on fp32."""
    forced = os.environ.get("VPT_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu  # these probes are underscored in torch; absent in an older torch means "no"
        return any(
            getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        )
    return False


def default_precision(device: torch.device) -> Precision:
    """bf16 where the device has bf16 units, fp32 elsewhere."""
    return "bf16" if has_bf16_units(device) else "fp32"


def training_precision(setting: str, device: torch.device) -> str:
    """`train.precision` as accelerate's `mixed_precision`: `auto` is bf16 where the device has bf16 units
    and no (fp32) elsewhere; `no`, `bf16` and `fp16` are taken as they are."""
    if setting != "auto":
        return setting
    return "bf16" if has_bf16_units(device) else "no"


def inference_autocast(device: torch.device, precision: Precision | None = None):
    """The autocast context of `precision` (default: `default_precision(device)`); fp32 is a no-op."""
    precision = precision or default_precision(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
