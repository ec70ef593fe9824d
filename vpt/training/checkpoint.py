"""Checkpoints of a training run: writing one atomically, resuming from one, and the RNG state.

step_NNNNNN/
  model.safetensors, ema.safetensors   full weights for inference, gathered when sharded
  config.json                          the run's config, so the weights stand on their own
  trainer_state.json                   step, samples seen, world size, best score
  rng_state_<rank>.pt                  every generator of each process (tensors only)
  training_state/                      accelerate's save_state: optimizer (sharded under FSDP),
                                       grad scaler, and under FSDP the sharded model
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from vpt.console import warn
from vpt.distributed import any_process, is_sharded, local
from vpt.errors import TrainingDiverged, VptError
from vpt.fsutil import umask_mode
from vpt.runs import Run
from vpt.training.config import TrainConfig
from vpt.training.ema import EMA
from vpt.weights import UnsafeWeightsError, check_training_state, read_weights

TRAINING_STATE = "training_state"  # accelerate's save_state folder inside a checkpoint


@dataclass
class TrainingState:
    """What one training run steps and what its checkpoints hold (apart from the weights' layout)."""

    model: nn.Module
    optimizer: Any
    accelerator: Any
    cfg: TrainConfig
    run: Run
    ema: EMA | None = None
    loss_module: nn.Module | None = None  # the model as accelerate prepared it (wrapped, maybe sharded)
    step: int = 0
    best: float | None = None  # lowest `cfg.best_metric` so far


def diverged(state: TrainingState, what: str) -> TrainingDiverged:
    kept = state.run.latest_checkpoint()
    return TrainingDiverged(
        f"{what} at step {state.step + 1}; stopped before the update (last good checkpoint: "
        f"{kept if kept else 'none was written yet'}). Lower train.lr or set train.grad_clip"
    )


def save_checkpoint(state: TrainingState, score: float | None) -> None:
    """Write checkpoint `state.step` (the layout above) into a pending directory on every process, then
    commit it. The EMA and the sampler are not registered with accelerate's checkpointing: accelerate unpickles
    registered objects without torch's weights_only guard, the EMA is kept as safetensors anyway, and the
    sampler's position is a function of the step.
    Weights that are not finite are never written: the last checkpoint is always one to go back to.
    """
    run, accelerator, step = state.run, state.accelerator, state.step
    bad = [name for name, p in state.model.named_parameters() if not torch.isfinite(local(p)).all()]
    if any_process(accelerator, bool(bad)):
        raise diverged(state, f"weights became non-finite ({bad[0] if bad else 'on another process'}, ...)")
    is_best = score is not None and (state.best is None or score < state.best)
    state.best = score if is_best else state.best
    weights = _full_weights(state)  # collectives under FSDP: every process takes part
    ema = state.ema.full_state(keep=accelerator.is_main_process) if state.ema is not None else None
    pending = run.pending_dir(step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pending.mkdir(parents=True, exist_ok=False)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(pending / TRAINING_STATE))
    torch.save(_rng_state(), pending / f"rng_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # accelerate's own RNG files pickle numpy arrays, which only an extended allow-list reads back;
        # vpt's rng_state files hold the same generators as tensors, so nothing here needs one.
        for file in (pending / TRAINING_STATE).glob("random_states_*.pkl"):
            file.unlink()
        save_file(_contiguous(weights), pending / "model.safetensors")
        umask_mode(pending / "model.safetensors")
        if ema is not None:
            save_file(_contiguous(ema), pending / "ema.safetensors")
            umask_mode(pending / "ema.safetensors")
        (pending / "config.json").write_text(json.dumps(_run_config(state), indent=2))
        cfg = state.cfg
        record = {
            "step": step,
            "samples_seen": step * cfg.batch_size * cfg.grad_accum * accelerator.num_processes,
            "world_size": accelerator.num_processes,
            "sharded": is_sharded(accelerator),
            "best": state.best,
            "precision": accelerator.mixed_precision,
            "lr": state.optimizer.param_groups[0]["lr"],
        }
        (pending / "trainer_state.json").write_text(json.dumps(record, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run.commit_checkpoint(step, keep_last=state.cfg.keep_last, is_best=is_best)
    accelerator.wait_for_everyone()


def _full_weights(state: TrainingState) -> dict[str, torch.Tensor]:
    """The model's whole state dict under its own names (on the main process when sharded)."""
    if not is_sharded(state.accelerator):
        return state.model.state_dict()
    gathered = state.accelerator.get_state_dict(state.loss_module)  # names of the _LossModule wrapper
    return {name.replace("_orig_mod.", "").removeprefix("model."): value for name, value in gathered.items()}


def _run_config(state: TrainingState) -> dict[str, Any]:
    if state.run.config_path.is_file():
        return state.run.read_config()
    return {"train": dataclasses.asdict(state.cfg)}  # a run driven from Python without a config file


def load_checkpoint(path: Path, state: TrainingState) -> int:
    """Load weights, optimizer and grad-scaler state of checkpoint `path` into the prepared objects;
    returns its step. Every file accelerate will unpickle is checked by vpt.weights first."""
    accelerator = state.accelerator
    record = Run.read_trainer_state(path)
    if bool(record.get("sharded", False)) != is_sharded(accelerator):
        raise VptError(
            f"{path} was written {'with' if record.get('sharded') else 'without'} FSDP; resume it with "
            f"the accelerate config that wrote it"
        )
    if (path / TRAINING_STATE).is_dir():
        check_training_state(path / TRAINING_STATE)
        if not is_sharded(accelerator):  # FSDP loads its sharded copy inside load_state
            state.model.load_state_dict(read_weights(path / "model.safetensors"))
        accelerator.load_state(str(path / TRAINING_STATE))
    else:
        _load_flat_layout(path, state)
    for group in state.optimizer.param_groups:  # the schedule is recomputed from this run's config
        group["base_lr"] = state.cfg.lr * group.get("lr_scale", 1.0)
    if record.get("world_size", 1) != accelerator.num_processes:
        warn(
            f"{path.name} was written by {record['world_size']} processes, resuming with "
            f"{accelerator.num_processes}: the data order changes from here on"
        )
    return int(record["step"])


def _load_flat_layout(path: Path, state: TrainingState) -> None:
    """Checkpoints of vpt before it kept accelerate's state: optimizer.pt and scaler.pt beside the weights."""
    state.model.load_state_dict(read_weights(path / "model.safetensors"))
    state.optimizer.load_state_dict(read_weights(path / "optimizer.pt"))
    if state.accelerator.scaler is not None and (path / "scaler.pt").exists():
        state.accelerator.scaler.load_state_dict(read_weights(path / "scaler.pt"))


def carry_optimizer_state(checkpoint: Path, state: TrainingState) -> None:
    """Start this run's optimizer from the AdamW state that `checkpoint` (of another run) holds for its first
    parameter group: each parameter's moments and step count, matched by position (the bias correction goes on
    from that count). The group's settings (lr, betas, weight decay) stay this run's config, and every other
    group (a discriminator the earlier run may not have had) starts fresh. This is upstream PVDM's GAN stage,
    which loads the autoencoder's optimizer (`opt.pth`) but not the discriminators' (`d_opt.pth`).
    """
    record = Run.read_trainer_state(checkpoint)
    if record.get("sharded", False) or is_sharded(state.accelerator):
        raise VptError(f"{checkpoint}: optimizer states are carried between runs without FSDP only")
    file = checkpoint / TRAINING_STATE / "optimizer.bin"
    if not file.is_file():
        file = checkpoint / "optimizer.pt"  # the flat layout of older checkpoints
    if not file.is_file():
        raise VptError(f"{checkpoint} holds no optimizer state (no {TRAINING_STATE}/optimizer.bin)")
    saved = read_weights(file)
    try:
        saved_ids, saved_moments = saved["param_groups"][0]["params"], saved["state"]
    except (KeyError, IndexError, TypeError):
        raise VptError(f"{file}: not an optimizer state") from None
    current = state.optimizer.state_dict()
    ids, params = current["param_groups"][0]["params"], state.optimizer.param_groups[0]["params"]
    if len(saved_ids) != len(ids):
        raise VptError(
            f"{checkpoint}: its optimizer's first group holds {len(saved_ids)} parameters, this model's {len(ids)}"
        )
    for position, (saved_id, new_id, param) in enumerate(zip(saved_ids, ids, params)):
        moments = saved_moments.get(saved_id)
        if moments is None:  # a parameter the earlier run never updated starts fresh
            continue
        wrong = [tuple(value.shape) for key, value in moments.items() if key != "step" and value.shape != param.shape]
        if wrong:
            raise VptError(
                f"{checkpoint}: the optimizer state of parameter {position} has shape {wrong[0]}, "
                f"this model's parameter {tuple(param.shape)}"
            )
        current["state"][new_id] = moments
    state.optimizer.load_state_dict(current)


def read_best(run: Run) -> float | None:
    best = run.best_checkpoint()
    if best is None:
        return None
    return Run.read_trainer_state(best).get("best")


def _rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values, so that it reads back with weights_only."""
    version, words, gauss = random.getstate()
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": [version, torch.tensor(words, dtype=torch.int64), gauss],
        "numpy": [bit_generator, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(path: Path, rank: int) -> None:
    file = path / f"rng_state_{rank}.pt"
    if not file.exists():
        file = path / "rng_state_0.pt"
    if not file.exists():  # e.g. deleted because an older vpt wrote it as a pickle this one refuses
        warn(
            f"{path.name} has no random-generator state: training continues, but not bit-identical to an "
            f"uninterrupted run"
        )
        return
    try:
        state = read_weights(file)
    except UnsafeWeightsError as exc:
        raise UnsafeWeightsError(
            f"{exc}. If vpt 0.1 before its safe RNG format wrote this run, delete "
            f"{path}/rng_state_*.pt to resume (then not bit-identical)"
        ) from None
    try:
        version, words, gauss = state["python"]
        random.setstate((version, tuple(words.tolist()), gauss))
        bit_generator, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((bit_generator, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        torch.set_rng_state(state["torch"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise VptError(f"{file}: not a vpt random-generator state ({type(exc).__name__}: {exc})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage; a copy per tensor makes every entry standalone.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
