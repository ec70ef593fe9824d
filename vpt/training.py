"""The one training loop, on accelerate, shared by `vpt train-ae` and `vpt train <backend>`.

A model only supplies `loss(batch) -> {"loss": scalar, ...}` (and optionally `param_groups()` when
parts of it need their own learning rate). The loop never looks at what the model is.

Exact resume: the data order is a pure function of (seed, global sample position), every sample gets
its own seed from the sampler, the DataLoader has a private generator, and every RNG state is
checkpointed, so N straight steps and N/2 + resume + N/2 steps produce the same losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from vpt.console import info, warn
from vpt.errors import Interrupted, TrainingDiverged
from vpt.progress import ProgressBar
from vpt.runs import Run


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
    min_lr_ratio: float = 0.0  # cosine / polynomial decay to lr * min_lr_ratio
    lr_power: float = 1.0  # polynomial: lr factor (1 - progress) ** lr_power (RIVER: 0.5)
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 autocast where the device has bf16 units
    ema_decay: float = 0.0  # 0 turns EMA off
    ema_start: int = 0  # EMA copies the weights until this step, then averages
    ema_every: int = 1  # EMA update every this many optimiser steps (PVDM upstream: 25)
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
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "ema_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if len(self.betas) != 2:
            raise ValueError(f"train.betas needs two values, got {self.betas}")


class SampleKey(NamedTuple):
    """What the training sampler hands a dataset: which item, and a seed for its random choices."""

    index: int
    seed: int


class ResumableSampler(Sampler[SampleKey]):
    """An endless, seeded shuffle; position `p` of the global stream is a pure function of the seed.

    Process `rank` of `world` takes positions rank, rank + world, ...; resuming at `start` (a global
    position) continues the same stream, so a resumed run sees exactly the samples it would have.
    """

    def __init__(self, num_items: int, *, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        if num_items < 1:
            raise ValueError("the training set is empty")
        self.num_items, self.seed, self.rank, self.world, self.start = num_items, seed, rank, world, start

    def _order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[SampleKey]:
        position = self.start + (self.rank - self.start) % self.world
        epoch, order = -1, None
        while True:
            if position // self.num_items != epoch:
                epoch = position // self.num_items
                order = self._order(epoch)
            index = int(order[position % self.num_items])
            yield SampleKey(index, (self.seed * 2_654_435_761 + position) % (2**63 - 1))
            position += self.world

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


class EMA:
    """Exponential moving average of the trainable weights, kept in float32.

    Under FSDP2 the parameters are DTensor shards; the shadow copies them and so is sharded the same way.
    """

    def __init__(self, model: nn.Module, decay: float, start: int = 0):
        self.decay, self.start = decay, start
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def load(self, path: Path, device: torch.device) -> None:
        """Take the averaged weights a checkpoint kept (ema.safetensors, always the full tensors)."""
        from vpt.weights import read_weights

        full = read_weights(path)
        self.shadow = {name: _shard_like(full[name].to(device).float(), kept) for name, kept in self.shadow.items()}

    def full_state(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """The whole averaged weights on the CPU, or {} where not `keep` (a collective under FSDP: every
        process takes part, and one gathered tensor at a time occupies the device)."""
        gathered = {}
        for name, value in self.shadow.items():
            full = _full_tensor(value)
            if keep:
                gathered[name] = full.to("cpu")
        return gathered

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = self.decay if step >= self.start else 0.0
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


class _LossModule(nn.Module):
    """Routes `forward` to `model.loss` so DDP's gradient sync and torch.compile see the real work."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.model.loss(batch)


@dataclass
class Hooks:
    """Optional periodic work the calling command provides; each receives the (EMA) model."""

    validate: Callable[[nn.Module], dict[str, float]] | None = None
    sample: Callable[[nn.Module, int, Path], None] | None = None


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then constant, cosine or polynomial decay to `min_lr_ratio`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.lr_schedule == "polynomial":  # as transformers' get_polynomial_decay_schedule_with_warmup
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * (1.0 - min(1.0, progress)) ** cfg.lr_power
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device). Call it before building a model: its random
    initialisation is then a function of the config's seed, so two fresh runs are identical."""
    from accelerate.utils import set_seed

    set_seed(seed)


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


def train(model: nn.Module, dataset: Dataset, cfg: TrainConfig, run: Run, hooks: Hooks | None = None) -> int:
    """Train `model` on `dataset` until `cfg.max_steps`, resuming from the run's latest checkpoint.

    Returns the final step. Raises TrainingDiverged (after keeping the last good checkpoint) when the
    loss or the gradient becomes NaN or infinite, and Interrupted after writing a checkpoint when the
    user pressed Ctrl-C (a second Ctrl-C aborts at once).
    """
    hooks = hooks or Hooks()
    accelerator = _accelerator(cfg, run)
    state = TrainingState(model, None, accelerator, cfg, run, best=_read_best(run))
    if hooks.sample and cfg.sample_every and _sharded(accelerator):
        warn("train.sample_every is skipped under FSDP: sample strips run on the main process alone, which a "
             "sharded model cannot; `vpt sample` reads any checkpoint's full weights")
        hooks = dataclasses.replace(hooks, sample=None)
    model.to(accelerator.device)
    state.optimizer = _optimizer(model, cfg, accelerator.device)
    loss_module = torch.compile(_LossModule(model)) if cfg.compile else _LossModule(model)
    # FSDP shards the parameters here, so the checkpoint is loaded into the prepared objects.
    loss_module, state.optimizer = accelerator.prepare(loss_module, state.optimizer)
    state.loss_module = loss_module
    latest = run.latest_checkpoint()
    if latest is not None:
        state.step = _load_checkpoint(latest, state)
        info(f"Resuming {run.root} from step {state.step} ({latest.name})")
        if accelerator.is_main_process:
            run.truncate_metrics(after_step=state.step)
    # The EMA starts from the loaded weights (or the checkpoint's own EMA), never from the random init.
    if cfg.ema_decay > 0:
        state.ema = EMA(model, cfg.ema_decay, cfg.ema_start)
        if latest is not None and (latest / "ema.safetensors").exists():
            state.ema.load(latest / "ema.safetensors", accelerator.device)
    accelerator.wait_for_everyone()

    batches = _batches(dataset, cfg, accelerator, start_step=state.step)
    if latest is not None:
        _restore_rng(latest, accelerator.process_index)
    if cfg.log_with and accelerator.is_main_process:
        accelerator.init_trackers(run.root.name, config=dataclasses.asdict(cfg))

    started, started_step = time.perf_counter(), state.step
    try:
        with _TrainingBar(accelerator.is_main_process, cfg, state.step) as progress, _StopRequests() as ctrl_c:
            while state.step < cfg.max_steps:
                reduced = _optimizer_step(state, loss_module, batches)
                state.step += 1
                if state.ema is not None and state.step % cfg.ema_every == 0:
                    state.ema.update(model, state.step)
                _log(state, reduced, (state.step - started_step) / max(time.perf_counter() - started, 1e-9))
                progress.step(state.step, reduced["loss"].item())
                evaluated = _periodic_work(state, hooks, progress)
                out_of_time, interrupted = _stop_votes(cfg, started, ctrl_c.requested, accelerator)
                if state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps or out_of_time or interrupted:
                    _save_checkpoint(state, evaluated.get(cfg.best_metric))
                if interrupted:
                    raise Interrupted(f"stopped at step {state.step} (Ctrl-C); checkpoint "
                                      f"{run.latest_checkpoint()} is kept: run the same command to continue")
                if out_of_time:
                    info(f"train.max_minutes={cfg.max_minutes:g} reached at step {state.step}; the checkpoint is "
                         f"kept (run the same command to continue)")
                    break
    except BaseException:
        for tracker in accelerator.trackers:  # the logs so far are kept; the processes exit on the error
            tracker.finish()
        raise
    accelerator.wait_for_everyone()
    accelerator.end_training()  # trackers closed, and the process group shut down before interpreter exit
    return state.step


def _accelerator(cfg: TrainConfig, run: Run):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from vpt.models.precision import training_precision

    _forget_previous_accelerator_settings()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accelerator = Accelerator(
        cpu=device.type == "cpu",  # lets `accelerate launch --multi_gpu` run gloo on CPUs
        mixed_precision=training_precision(cfg.precision, device),
        log_with=_available_trackers(cfg.log_with) or None,
        project_dir=str(run.root),
    )
    _check_parallelism(accelerator)
    # vpt writes the full model weights beside accelerate's state (model.safetensors), so plain and DDP
    # runs keep no second copy in it; FSDP keeps its sharded copy, which these hooks never see.
    accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())
    set_seed(cfg.seed + accelerator.process_index)  # the loss's own draws differ per process
    return accelerator


def _forget_previous_accelerator_settings() -> None:
    """One process may train several models in turn (quickstart: autoencoder, then predictor) with
    different precisions. Accelerate keeps its settings in a process-wide singleton and has no public
    call to change them, so the previous run's settings are dropped (the distributed state stays).
    This is the one private accelerate call in vpt."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


def _check_parallelism(accelerator) -> None:
    """FSDP2 and DDP are what the loop supports; the others are refused with the reason."""
    from accelerate.utils import DistributedType

    from vpt.errors import ConfigError

    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError("vpt trains under FSDP version 2 only (per-player gradient clipping and the EMA need "
                          "DTensor parameters): set fsdp_version: 2 in the accelerate config")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError("vpt does not train under DeepSpeed yet: its engine steps inside backward(), past vpt's "
                          "per-player clipping and its stop-before-the-update check; use FSDP "
                          "(configs/accelerate/fsdp_8gpu.yaml), which shards like ZeRO-3, or like ZeRO-2 with "
                          "fsdp_reshard_after_forward: false")


def _optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW over the model's parameter groups (one per player for a GAN: each is clipped on its own)."""
    groups = model.param_groups() if hasattr(model, "param_groups") else [
        {"params": [p for p in model.parameters() if p.requires_grad]}
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    for group in optimizer.param_groups:
        group.setdefault("lr_scale", 1.0)
        group["base_lr"] = cfg.lr * group["lr_scale"]
    return optimizer


def _batches(dataset: Dataset, cfg: TrainConfig, accelerator, *, start_step: int) -> Iterator[Any]:
    """The endless stream of this process's micro-batches from global position `start_step`, on the device."""
    from accelerate.utils import send_to_device

    device, world = accelerator.device, accelerator.num_processes
    sampler = ResumableSampler(len(dataset), seed=cfg.seed, rank=accelerator.process_index, world=world,
                               start=start_step * cfg.batch_size * cfg.grad_accum * world)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
        collate_fn=getattr(dataset, "collate", None), pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0, drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )
    on_device = getattr(dataset, "on_device", lambda batch: batch)  # e.g. uint8 -> float on the GPU
    for batch in loader:
        yield on_device(send_to_device(batch, device, non_blocking=True))


def _optimizer_step(state: TrainingState, loss_module: nn.Module, batches: Iterator[Any]) -> dict[str, torch.Tensor]:
    """Accumulate `grad_accum` micro-batches, check loss and gradients, clip each group, step.

    Returns the losses averaged over micro-batches and processes. Raises TrainingDiverged before the
    update when the loss or a gradient is not finite (fp16 excepted: its grad scaler skips such steps).
    """
    cfg, accelerator, optimizer = state.cfg, state.accelerator, state.optimizer
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * lr_factor(state.step, cfg)
    totals: dict[str, torch.Tensor] = {}
    for micro in range(cfg.grad_accum):
        batch = next(batches)
        sync = micro == cfg.grad_accum - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(loss_module):
            with accelerator.autocast():
                losses = loss_module(batch)
            accelerator.backward(losses["loss"] / cfg.grad_accum)
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + value.detach().float() / cfg.grad_accum
    reduced = {k: accelerator.reduce(v, reduction="mean") for k, v in totals.items()}
    loss_value = reduced["loss"].item()
    if not math.isfinite(loss_value):
        raise _diverged(state, f"loss became {loss_value}")
    norms = _clip_per_group(state)
    if cfg.precision != "fp16" and not all(math.isfinite(n) for n in norms):
        raise _diverged(state, f"loss is finite ({loss_value:.4g}) but the gradient norm became "
                               f"{next(n for n in norms if not math.isfinite(n))}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return reduced


def _clip_per_group(state: TrainingState) -> list[float]:
    """Gradient norm of each parameter group, clipped to `train.grad_clip` group by group.

    A group is one player: for a GAN, the autoencoder's step size must not depend on the
    discriminator's gradient (or the other way round), so each is clipped against its own norm.
    Under FSDP2 the gradients are shards and torch returns the group's norm as a DTensor.
    """
    state.accelerator.unscale_gradients()  # fp16: true gradients before measuring them
    limit = state.cfg.grad_clip if state.cfg.grad_clip > 0 else math.inf
    norms = []
    for group in state.optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            norms.append(float(_full_tensor(torch.nn.utils.clip_grad_norm_(params, limit, foreach=True))))
    return norms


def _diverged(state: TrainingState, what: str) -> TrainingDiverged:
    kept = state.run.latest_checkpoint()
    return TrainingDiverged(
        f"{what} at step {state.step + 1}; stopped before the update (last good checkpoint: "
        f"{kept if kept else 'none was written yet'}). Lower train.lr or set train.grad_clip"
    )


def _log(state: TrainingState, reduced: dict[str, torch.Tensor], steps_per_s: float) -> None:
    cfg = state.cfg
    if state.step % cfg.log_every and state.step != cfg.max_steps:
        return
    record = {"step": state.step, **{k: v.item() for k, v in reduced.items()},
              "lr": state.optimizer.param_groups[0]["lr"], "steps_per_s": steps_per_s}
    if state.accelerator.is_main_process:
        state.run.log_metrics(record)
        if cfg.log_with:
            state.accelerator.log(record, step=state.step)


def _periodic_work(state: TrainingState, hooks: Hooks, progress: ProgressBar) -> dict[str, float]:
    """Validation (every process) and sample strips (main process) with the EMA weights when kept."""
    cfg, step, run = state.cfg, state.step, state.run
    evaluated: dict[str, float] = {}
    if hooks.validate and cfg.val_every and step % cfg.val_every == 0:
        with progress.paused("validating"):
            evaluated = _with_ema(state.ema, state.model, lambda m: _unsharded(state.loss_module, hooks.validate, m))
        if state.accelerator.is_main_process:
            run.log_metrics({"step": step, **evaluated})
    if hooks.sample and cfg.sample_every and step % cfg.sample_every == 0 and state.accelerator.is_main_process:
        with progress.paused("sampling"):
            _with_ema(state.ema, state.model, lambda m: hooks.sample(m, step, run.samples_dir))
    return evaluated


class _StopRequests:
    """The first Ctrl-C (SIGINT) asks the loop to finish its step and write a checkpoint; the second
    aborts at once (KeyboardInterrupt). Only the main thread can own the signal; elsewhere this is inert."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        warn("Ctrl-C: finishing this step and writing a checkpoint (press Ctrl-C again to abort at once)")

    def __enter__(self) -> _StopRequests:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _stop_votes(cfg: TrainConfig, started: float, interrupted: bool, accelerator) -> tuple[bool, bool]:
    """(time budget spent, Ctrl-C pressed) agreed by every process, so all stop at the same step."""
    out_of_time = cfg.max_minutes > 0 and time.perf_counter() - started >= 60.0 * cfg.max_minutes
    return _any_process(accelerator, out_of_time), _any_process(accelerator, interrupted)


def _any_process(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum") > 0)


# --- checkpoints --------------------------------------------------------------------------------


TRAINING_STATE = "training_state"  # accelerate's save_state folder inside a checkpoint


def _save_checkpoint(state: TrainingState, score: float | None) -> None:
    """Write checkpoint `state.step` into a pending directory on every process, then commit it.

    step_NNNNNN/
      model.safetensors, ema.safetensors   full weights for inference, gathered when sharded
      config.json                          the run's config, so the weights stand on their own
      trainer_state.json                   step, samples seen, world size, best score
      rng_state_<rank>.pt                  every generator of each process (tensors only)
      training_state/                      accelerate's save_state: optimizer (sharded under FSDP),
                                           grad scaler, and under FSDP the sharded model
    The EMA and the sampler are not registered with accelerate's checkpointing: accelerate unpickles
    registered objects without torch's weights_only guard, the EMA is kept as safetensors anyway, and the
    sampler's position is a function of the step.
    Weights that are not finite are never written: the last checkpoint is always one to go back to.
    """
    from safetensors.torch import save_file

    run, accelerator, step = state.run, state.accelerator, state.step
    bad = [name for name, p in state.model.named_parameters() if not torch.isfinite(_local(p)).all()]
    if _any_process(accelerator, bool(bad)):
        raise _diverged(state, f"weights became non-finite ({bad[0] if bad else 'on another process'}, ...)")
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
        if ema is not None:
            save_file(_contiguous(ema), pending / "ema.safetensors")
        (pending / "config.json").write_text(json.dumps(_run_config(state), indent=2))
        cfg = state.cfg
        record = {"step": step, "samples_seen": step * cfg.batch_size * cfg.grad_accum * accelerator.num_processes,
                  "world_size": accelerator.num_processes, "sharded": _sharded(accelerator), "best": state.best,
                  "precision": accelerator.mixed_precision,
                  "lr": state.optimizer.param_groups[0]["lr"]}
        (pending / "trainer_state.json").write_text(json.dumps(record, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run.commit_checkpoint(step, keep_last=state.cfg.keep_last, is_best=is_best)
    accelerator.wait_for_everyone()


def _full_weights(state: TrainingState) -> dict[str, torch.Tensor]:
    """The model's whole state dict under its own names (on the main process when sharded)."""
    if not _sharded(state.accelerator):
        return state.model.state_dict()
    gathered = state.accelerator.get_state_dict(state.loss_module)  # names of the _LossModule wrapper
    return {name.replace("_orig_mod.", "").removeprefix("model."): value for name, value in gathered.items()}


def _run_config(state: TrainingState) -> dict[str, Any]:
    if state.run.config_path.is_file():
        return state.run.read_config()
    return {"train": dataclasses.asdict(state.cfg)}  # a run driven from Python without a config file


def _load_checkpoint(path: Path, state: TrainingState) -> int:
    """Load weights, optimizer and grad-scaler state of checkpoint `path` into the prepared objects;
    returns its step. Every file accelerate will unpickle is checked by vpt.weights first."""
    from vpt.errors import VptError
    from vpt.weights import check_training_state, read_weights

    accelerator = state.accelerator
    record = json.loads((path / "trainer_state.json").read_text())
    if bool(record.get("sharded", False)) != _sharded(accelerator):
        raise VptError(f"{path} was written {'with' if record.get('sharded') else 'without'} FSDP; resume it with "
                       f"the accelerate config that wrote it")
    if (path / TRAINING_STATE).is_dir():
        check_training_state(path / TRAINING_STATE)
        if not _sharded(accelerator):  # FSDP loads its sharded copy inside load_state
            state.model.load_state_dict(read_weights(path / "model.safetensors"))
        accelerator.load_state(str(path / TRAINING_STATE))
    else:
        _load_flat_layout(path, state)
    for group in state.optimizer.param_groups:  # the schedule is recomputed from this run's config
        group["base_lr"] = state.cfg.lr * group.get("lr_scale", 1.0)
    if record.get("world_size", 1) != accelerator.num_processes:
        warn(f"{path.name} was written by {record['world_size']} processes, resuming with "
             f"{accelerator.num_processes}: the data order changes from here on")
    return int(record["step"])


def _load_flat_layout(path: Path, state: TrainingState) -> None:
    """Checkpoints of vpt before it kept accelerate's state: optimizer.pt and scaler.pt beside the weights."""
    from vpt.weights import read_weights

    state.model.load_state_dict(read_weights(path / "model.safetensors"))
    state.optimizer.load_state_dict(read_weights(path / "optimizer.pt"))
    if state.accelerator.scaler is not None and (path / "scaler.pt").exists():
        state.accelerator.scaler.load_state_dict(read_weights(path / "scaler.pt"))


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def load_weights(run: Run, *, ema: bool = True, checkpoint: Path | None = None) -> dict[str, torch.Tensor]:
    """The weights to use for inference: EMA when the run kept one, else the raw model weights."""
    from vpt.weights import read_weights

    path = checkpoint or run.latest_checkpoint()
    if path is None:
        from vpt.errors import UsageError

        raise UsageError(f"{run.root} has no finished checkpoint yet")
    weights = read_weights(path / "model.safetensors")
    if ema and (path / "ema.safetensors").exists():
        weights.update(read_weights(path / "ema.safetensors"))
    return weights


def _read_best(run: Run) -> float | None:
    best = run.best_checkpoint()
    if best is None:
        return None
    return json.loads((best / "trainer_state.json").read_text()).get("best")


def _rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values, so that it reads back with weights_only."""
    version, words, gauss = random.getstate()
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": [version, torch.tensor(words, dtype=torch.int64), gauss],
             "numpy": [bit_generator, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(path: Path, rank: int) -> None:
    from vpt.weights import UnsafeWeightsError, read_weights

    file = path / f"rng_state_{rank}.pt"
    if not file.exists():
        file = path / "rng_state_0.pt"
    if not file.exists():  # e.g. deleted because an older vpt wrote it as a pickle this one refuses
        warn(f"{path.name} has no random-generator state: training continues, but not bit-identical to an "
             f"uninterrupted run")
        return
    try:
        state = read_weights(file)
    except UnsafeWeightsError as exc:
        raise UnsafeWeightsError(f"{exc}. If vpt 0.1 before its safe RNG format wrote this run, delete "
                                 f"{path}/rng_state_*.pt to resume (then not bit-identical)") from None
    try:
        version, words, gauss = state["python"]
        random.setstate((version, tuple(words.tolist()), gauss))
        bit_generator, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((bit_generator, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        torch.set_rng_state(state["torch"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        from vpt.errors import VptError

        raise VptError(f"{file}: not a vpt random-generator state ({type(exc).__name__}: {exc})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (FSDP2), or the tensor itself."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def _full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (a collective), or the tensor itself."""
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


def _shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `like` is: sharded the same way when `like` is a DTensor."""
    if not _is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements)


def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support: nothing is ever sharded
        return False
    return isinstance(tensor, DTensor)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage; a copy per tensor makes every entry standalone.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


# --- helpers ------------------------------------------------------------------------------------


def _with_ema(ema: EMA | None, model: nn.Module, fn: Callable[[nn.Module], Any]) -> Any:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (ema.swapped_in(model) if ema is not None else contextlib.nullcontext()):
            return fn(model)
    finally:
        model.train(was_training)


def _unsharded(loss_module: nn.Module | None, fn: Callable[[nn.Module], Any], model: nn.Module) -> Any:
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


def _available_trackers(names: list[str]) -> list[str]:
    import importlib.util

    module_of = {"tensorboard": "tensorboard", "wandb": "wandb"}
    available = []
    for name in names:
        if name not in module_of:
            warn(f"train.log_with: unknown tracker {name!r} (known: tensorboard, wandb); ignored")
        elif importlib.util.find_spec(module_of[name]) is None:
            warn(f"train.log_with: {name} is not installed (pip install {name}); logging to metrics.jsonl only")
        else:
            available.append(name)
    return available


class _TrainingBar(ProgressBar):
    """Steps with it/s and loss, and the time left: of `max_steps`, or of a `max_minutes` budget."""

    def __init__(self, enabled: bool, cfg: TrainConfig, completed: int):
        self.budget = 60.0 * cfg.max_minutes
        fields = {"rate": "- it/s", "loss": "loss -"} | ({"budget": self._budget_left(0.0)} if self.budget else {})
        super().__init__("train", cfg.max_steps, completed=completed, fields=fields, eta=not self.budget,
                         enabled=enabled)

    def _budget_left(self, elapsed: float) -> str:
        left = max(0.0, self.budget - elapsed)
        return f"{int(left // 60)}:{int(left % 60):02d} left of the {self.budget / 60:g} min budget"

    def step(self, step: int, loss: float) -> None:
        fields = {"rate": f"{self.rate(step - self.first):.2f} it/s", "loss": f"loss {loss:.4f}"}
        if self.budget:
            fields["budget"] = self._budget_left(self.elapsed)
        self.update(completed=step, **fields)


def start_run(
    schema: type,
    *,
    run_dir: Path,
    config_file: Path | None,
    overrides: list[str],
    max_steps: int | None = None,
    log_every: int | None = None,
    fresh: bool = False,
    force: bool = False,
    defaults: dict | None = None,
) -> tuple[Run, Any]:
    """Open (create / resume / restart) a run directory and resolve its config.

    A new run takes defaults <- `config_file` <- `--set` overrides. A resumed run keeps its own
    config.yaml (a different `--config` is reported and ignored) and applies only the overrides, so
    `--max-steps` extends a finished run. The resolved config is written into the run.
    """
    from vpt.config import config_to_dict, load_config
    from vpt.console import is_main_process

    overrides = list(overrides)
    if max_steps is not None:
        overrides.append(f"train.max_steps={max_steps}")
    if log_every is not None:
        overrides.append(f"train.log_every={log_every}")
    run = Run.open(run_dir, fresh=fresh, force=force, is_main=is_main_process())
    if run.config_path.exists():
        stored = run.read_config()
        if config_file is not None:
            requested = config_to_dict(load_config(schema, config_file, defaults=defaults))
            changed = _changed_keys(stored, requested)
            if changed:
                warn(f"{run.root} resumes with its own config.yaml; {config_file} differs in "
                     f"{', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} (use --set to change a value)")
        cfg = load_config(schema, run.config_path, overrides)
    else:
        if config_file is None and defaults is None:
            from vpt.errors import UsageError

            raise UsageError(f"--config is required to start the new run {run_dir}")
        cfg = load_config(schema, config_file, overrides, defaults=defaults)
    if is_main_process():
        run.write_config(config_to_dict(cfg))
    return run, cfg


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [k for key in keys for k in _changed_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]
