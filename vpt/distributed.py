"""Helpers for FSDP2's DTensor parameters and for decisions every process must agree on.

Without torch.distributed (or without sharding) every helper is the identity, so the training loop
reads the same on one CPU and on many GPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn

from vpt.errors import ConfigError


def check_parallelism(accelerator) -> None:
    """FSDP2 and DDP are what the loop supports; the others are refused with the reason."""
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError(
            "vpt trains under FSDP version 2 only (per-player gradient clipping and the EMA need "
            "DTensor parameters): set fsdp_version: 2 in the accelerate config"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            "vpt does not train under DeepSpeed yet: its engine steps inside backward(), past vpt's "
            "per-player clipping and its stop-before-the-update check; use FSDP "
            "(configs/accelerate/fsdp_8gpu.yaml), which shards like ZeRO-3, or like ZeRO-2 with "
            "fsdp_reshard_after_forward: false"
        )


def is_sharded(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def any_process(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum") > 0)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (FSDP2), or the tensor itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (a collective), or the tensor itself."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `like` is: sharded the same way when `like` is a DTensor."""
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements)


def is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support: nothing is ever sharded
        return False
    return isinstance(tensor, DTensor)


def unsharded(loss_module: nn.Module | None, fn: Callable[[nn.Module], Any], model: nn.Module) -> Any:
    """`fn(model)` with FSDP2's root parameters gathered: hooks call the model's own methods, not the
    prepared module's forward, so the root's gather-on-forward would never run (nested FSDP blocks still
    gather themselves when called)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2: nothing is sharded
        FSDPModule = ()
    if not isinstance(loss_module, FSDPModule):
        return fn(model)
    loss_module.unshard()
    try:
        return fn(model)
    finally:
        loss_module.reshard()
