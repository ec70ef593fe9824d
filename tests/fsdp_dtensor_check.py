"""Run by tests/test_training.py under `torchrun --nproc_per_node 2` (gloo, CPU): vpt's FSDP2-specific
pieces of the training loop (gathered weights, per-group clipping, EMA) on really sharded (DTensor)
parameters, each against the same computation on an unsharded copy of the model. accelerate uses its
FSDP plugin only on GPUs, so this is what a CPU machine can check of FSDP;
benchmarks/multi_gpu_check.sh runs the whole loop under FSDP2 on GPUs."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from tiny_training import TinyDataset, TinyModel
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from vpt.distributed import local, unsharded
from vpt.training import TrainConfig
from vpt.training.checkpoint import TrainingState, _full_weights
from vpt.training.ema import EMA
from vpt.training.loop import _clip_per_group, _LossModule


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    reference = TinyModel()
    _check_gathered_weights(copy.deepcopy(reference), reference.state_dict(), rank)
    sharded = copy.deepcopy(reference)
    fully_shard(sharded.net)
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    assert local(sharded.net[0].weight).shape[0] == 16 // dist.get_world_size()  # really split over ranks

    data = TinyDataset()
    batch = {"x": data.inputs[:8], "y": data.targets[:8]}
    ema_ref, ema_sharded = EMA(reference, 0.5), EMA(sharded, 0.5)
    for model in (reference, sharded):
        torch.manual_seed(1)  # the loss's noise
        model.loss(batch)["loss"].backward()
    # per-group clipping: the same norms and the same clipped gradients as without sharding
    for model in (reference, sharded):
        model.optimizer = torch.optim.SGD(
            [{"params": list(model.net[0].parameters())}, {"params": list(model.net[2].parameters())}], lr=0.1
        )
    norms = {}
    for name, model in (("reference", reference), ("sharded", sharded)):
        state = SimpleNamespace(
            accelerator=SimpleNamespace(unscale_gradients=lambda: None),
            cfg=TrainConfig(grad_clip=0.05),
            step=0,
            optimizer=model.optimizer,
        )
        norms[name] = _clip_per_group(state)
        model.optimizer.step()
    torch.testing.assert_close(norms["sharded"], norms["reference"])
    assert all(n > 0.05 for n in norms["reference"])  # clipping really happened
    for (name, p), q in zip(reference.named_parameters(), sharded.parameters()):
        torch.testing.assert_close(q.full_tensor(), p.detach(), msg=name)
    # the EMA of sharded parameters gathers to the unsharded EMA, and reloads into the same shards
    ema_ref.update(reference, step=1)
    ema_sharded.update(sharded, step=1)
    full = ema_sharded.full_state()
    for name, value in ema_ref.shadow.items():
        torch.testing.assert_close(full[name], value, msg=name)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in full.items()}, out)
    dist.barrier()
    reloaded = EMA(sharded, 0.5)
    reloaded.load(out, torch.device("cpu"))
    for name, value in reloaded.shadow.items():
        assert isinstance(value, DTensor) and torch.equal(local(value), local(ema_sharded.shadow[name])), name
    dist.barrier()
    if rank == 0:
        print("fsdp2 dtensor checks passed", flush=True)
    dist.destroy_process_group()
    # Every check above has run. About one run in ten, torch 2.13's gloo threads abort the process while the
    # interpreter finalizes (SIGABRT, "terminate called without an active exception") after
    # destroy_process_group; that teardown is torch's, not vpt's, so skip it.
    sys.stdout.flush()
    os._exit(0)


def _check_gathered_weights(model: TinyModel, expected: dict[str, torch.Tensor], rank: int) -> None:
    """model.safetensors under FSDP2: accelerate's own get_state_dict gathers the shards of the wrapped
    loss module, and vpt hands back the model's own parameter names."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    loss_module = _LossModule(model)
    fully_shard(loss_module)
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True)
    accelerator.get_state_dict = lambda module: Accelerator.get_state_dict(accelerator, module)
    state = TrainingState(model, None, accelerator, TrainConfig(), run=None, loss_module=loss_module)
    gathered = _full_weights(state)
    # a validation hook calls the model's own loss, outside the sharded root's forward
    data = TinyDataset()
    batch = {"x": data.inputs[:4], "y": data.targets[:4]}
    expected_loss = _reference_loss(expected, batch)
    torch.manual_seed(2)
    with torch.no_grad():
        loss = unsharded(loss_module, lambda m: m.loss(batch)["loss"], model)
    torch.testing.assert_close(loss, expected_loss)
    assert isinstance(model.net[0].weight, DTensor)  # sharded again afterwards
    if rank == 0:
        assert sorted(gathered) == sorted(expected), sorted(gathered)
        for name, value in expected.items():
            assert torch.equal(gathered[name], value), name


def _reference_loss(weights: dict[str, torch.Tensor], batch) -> torch.Tensor:
    model = TinyModel()
    model.load_state_dict(weights)
    torch.manual_seed(2)
    with torch.no_grad():
        return model.loss(batch)["loss"]


if __name__ == "__main__":
    main(Path(sys.argv[1]))
