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
import importlib.util
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import send_to_device, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vpt.console import cli_owns_process, info, warn
from vpt.data.parallel import exit_with_parent
from vpt.distributed import any_process, check_parallelism, full_tensor, is_sharded, unsharded
from vpt.errors import Interrupted
from vpt.precision import training_precision
from vpt.progress import ProgressBar
from vpt.runs import Run
from vpt.training.checkpoint import (
    TrainingState,
    carry_optimizer_state,
    diverged,
    load_checkpoint,
    read_best,
    restore_rng,
    save_checkpoint,
)
from vpt.training.config import TrainConfig, lr_factor
from vpt.training.ema import EMA
from vpt.training.sampler import ResumableSampler


@dataclass
class Hooks:
    """Optional periodic work the calling command provides; each receives the (EMA) model."""

    validate: Callable[[nn.Module], dict[str, float]] | None = None
    sample: Callable[[nn.Module, int, Path], None] | None = None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device). Call it before building a model: its random
    initialisation is then a function of the config's seed, so two fresh runs are identical."""
    set_seed(seed)


def train(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    run: Run,
    hooks: Hooks | None = None,
    *,
    checkpoint_on_ctrl_c: bool | None = None,
    init_optimizer_from: Path | None = None,
) -> int:
    """Train `model` on `dataset` until `cfg.max_steps`, resuming from the run's latest checkpoint.

    `checkpoint_on_ctrl_c` (default: only when the `vpt` command owns the process) installs the Ctrl-C
    handler below for the loop's duration and restores the previous one after; a host program that
    calls this keeps its own Ctrl-C.

    `init_optimizer_from` (a checkpoint of an earlier run): on a fresh start, the optimizer's first
    parameter group (the model's own; a GAN objective's autoencoder) takes that checkpoint's AdamW state,
    while the step count and the learning-rate schedule start from 0 (see `carry_optimizer_state`).

    Returns the final step. Raises TrainingDiverged (after keeping the last good checkpoint) when the
    loss or the gradient becomes NaN or infinite, and Interrupted after writing a checkpoint when the
    user pressed Ctrl-C (a second Ctrl-C aborts at once).
    """
    hooks = hooks or Hooks()
    accelerator = _accelerator(cfg, run)
    state = TrainingState(model, None, accelerator, cfg, run, best=read_best(run))
    if hooks.sample and cfg.sample_every and is_sharded(accelerator):
        warn(
            "train.sample_every is skipped under FSDP: sample strips run on the main process alone, which a "
            "sharded model cannot; `vpt sample` reads any checkpoint's full weights"
        )
        hooks = dataclasses.replace(hooks, sample=None)
    model.to(accelerator.device)
    # Training mode through the model's own `train()`, which keeps frozen parts (autoencoders, NeuralSDE's
    # frozen drift unless model.frozen_drift_dropout) in eval mode; a freshly built module is all in training mode.
    model.train()
    state.optimizer = _optimizer(model, cfg, accelerator.device)
    loss_module = torch.compile(_LossModule(model)) if cfg.compile else _LossModule(model)
    # FSDP shards the parameters here, so the checkpoint is loaded into the prepared objects.
    loss_module, state.optimizer = accelerator.prepare(loss_module, state.optimizer)
    state.loss_module = loss_module
    latest = run.latest_checkpoint()
    if latest is not None:
        state.step = load_checkpoint(latest, state)
        info(f"Resuming {run.root} from step {state.step} ({latest.name})")  # Run.open trimmed metrics.jsonl to it
    elif init_optimizer_from is not None:
        carry_optimizer_state(init_optimizer_from, state)
        info(f"Optimizer state of the first parameter group from {init_optimizer_from}")
    # The EMA starts from the loaded weights (or the checkpoint's own EMA), never from the random init.
    if cfg.ema_decay > 0:
        state.ema = EMA(model, cfg.ema_decay, cfg.ema_start, cfg.ema_warmup)
        if latest is not None and (latest / "ema.safetensors").exists():
            state.ema.load(latest / "ema.safetensors", accelerator.device)
    accelerator.wait_for_everyone()

    batches = _batches(dataset, cfg, accelerator, start_step=state.step)
    if latest is not None:
        restore_rng(latest, accelerator.process_index)
    if cfg.log_with and accelerator.is_main_process:
        accelerator.init_trackers(run.root.name, config=dataclasses.asdict(cfg))

    started, started_step = time.perf_counter(), state.step
    try:
        with (
            _TrainingBar(accelerator.is_main_process, cfg, state.step) as progress,
            _StopRequests(cli_owns_process() if checkpoint_on_ctrl_c is None else checkpoint_on_ctrl_c) as ctrl_c,
        ):
            while state.step < cfg.max_steps:
                reduced = _optimizer_step(state, loss_module, batches)
                state.step += 1
                since_offset = state.step - cfg.ema_offset
                if state.ema is not None and since_offset > 0 and since_offset % cfg.ema_every == 0:
                    state.ema.update(model, state.step, count=since_offset // cfg.ema_every)
                _log(state, reduced, (state.step - started_step) / max(time.perf_counter() - started, 1e-9))
                progress.step(state.step, reduced["loss"].item())
                evaluated = _periodic_work(state, hooks, progress)
                out_of_time, interrupted = _stop_votes(cfg, started, ctrl_c.requested, accelerator)
                if state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps or out_of_time or interrupted:
                    save_checkpoint(state, evaluated.get(cfg.best_metric))
                if interrupted:
                    raise Interrupted(
                        f"stopped at step {state.step} (Ctrl-C); checkpoint "
                        f"{run.latest_checkpoint()} is kept: run the same command to continue"
                    )
                if out_of_time:
                    info(
                        f"train.max_minutes={cfg.max_minutes:g} reached at step {state.step}; the checkpoint is "
                        f"kept (run the same command to continue)"
                    )
                    break
    except BaseException:
        for tracker in accelerator.trackers:  # the logs so far are kept; the processes exit on the error
            tracker.finish()
        raise
    accelerator.wait_for_everyone()
    accelerator.end_training()  # trackers closed, and the process group shut down before interpreter exit
    return state.step


class _LossModule(nn.Module):
    """Routes `forward` to `model.loss` so DDP's gradient sync and torch.compile see the real work."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.model.loss(batch)


def mixed_precision(cfg: TrainConfig) -> str:
    """What `train.precision` means on this machine, as accelerate's `mixed_precision` (no, bf16, fp16)."""
    return training_precision(cfg.precision, _training_device())


def _training_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _accelerator(cfg: TrainConfig, run: Run):
    _forget_previous_accelerator_settings()
    accelerator = Accelerator(
        cpu=_training_device().type == "cpu",  # lets `accelerate launch --multi_gpu` run gloo on CPUs
        mixed_precision=mixed_precision(cfg),
        log_with=_available_trackers(cfg.log_with) or None,
        project_dir=str(run.root),
    )
    check_parallelism(accelerator)
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
    AcceleratorState._reset_state(reset_partial_state=False)


def adamw(groups: Any, device: torch.device, **settings: Any) -> torch.optim.AdamW:
    """torch's AdamW with its fused kernel on CUDA and CPU: one pass over all tensors instead of a loop of
    small element-wise ops per parameter (RIVER's quickstart training on 2 CPU threads: 12.3-13.9 -> 14.6-15.5
    steps/s; benchmarks/README.md, "The quickstart")."""
    return torch.optim.AdamW(groups, fused=device.type in ("cuda", "cpu"), **settings)


def _optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW over the model's parameter groups (one per player for a GAN: each is clipped on its own)."""
    groups = (
        model.param_groups()
        if hasattr(model, "param_groups")
        else [{"params": [p for p in model.parameters() if p.requires_grad]}]
    )
    optimizer = adamw(groups, device, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    for group in optimizer.param_groups:
        group.setdefault("lr_scale", 1.0)
        group["base_lr"] = cfg.lr * group["lr_scale"]
    return optimizer


def _batches(dataset: Dataset, cfg: TrainConfig, accelerator, *, start_step: int) -> Iterator[Any]:
    """The endless stream of this process's micro-batches from global position `start_step`, on the device."""
    device, world = accelerator.device, accelerator.num_processes
    sampler = ResumableSampler(
        len(dataset),
        seed=cfg.seed,
        rank=accelerator.process_index,
        world=world,
        start=start_step * cfg.batch_size * cfg.grad_accum * world,
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=getattr(dataset, "collate", None),
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        drop_last=True,
        worker_init_fn=exit_with_parent() if cfg.num_workers > 0 else None,  # workers die with a kill -9 of the loop
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
        raise diverged(state, f"loss became {loss_value}")
    norms = _clip_per_group(state)
    if cfg.precision != "fp16" and not all(math.isfinite(n) for n in norms):
        raise diverged(
            state,
            f"loss is finite ({loss_value:.4g}) but the gradient norm became "
            f"{next(n for n in norms if not math.isfinite(n))}",
        )
    if cfg.skip_first_update and state.step == 0:
        return reduced  # the gradient stays and the next step adds to it; the EMA then averages unchanged weights
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return reduced


def _clip_per_group(state: TrainingState) -> list[float]:
    """Gradient norm of each parameter group (before clipping), clipped to `train.grad_clip` group by group
    (from `train.grad_clip_start` on): the norm rescaled, or with `grad_clip_mode: value` every element clamped.
    A group with `"grad_clip": False` is only measured.

    A group is one player: for a GAN, the autoencoder's step size must not depend on the
    discriminator's gradient (or the other way round), so each is clipped against its own norm.
    Under FSDP2 the gradients are shards and torch returns the group's norm as a DTensor.
    """
    state.accelerator.unscale_gradients()  # fp16: true gradients before measuring them
    clipping = state.cfg.grad_clip > 0 and state.step >= state.cfg.grad_clip_start
    by_value = state.cfg.grad_clip_mode == "value"
    limit = state.cfg.grad_clip if clipping and not by_value else math.inf
    norms = []
    for group in state.optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            clipped = clipping and group.get("grad_clip", True)  # a group may opt out (Seer's FSText)
            group_limit = limit if clipped else math.inf
            norms.append(float(full_tensor(torch.nn.utils.clip_grad_norm_(params, group_limit, foreach=True))))
            if clipped and by_value:
                torch.nn.utils.clip_grad_value_(params, state.cfg.grad_clip, foreach=True)
    return norms


def _log(state: TrainingState, reduced: dict[str, torch.Tensor], steps_per_s: float) -> None:
    cfg = state.cfg
    if state.step % cfg.log_every and state.step != cfg.max_steps:
        return
    record = {
        "step": state.step,
        **{k: v.item() for k, v in reduced.items()},
        "lr": state.optimizer.param_groups[0]["lr"],
        "steps_per_s": steps_per_s,
    }
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
            evaluated = _with_ema(state.ema, state.model, lambda m: unsharded(state.loss_module, hooks.validate, m))
        if state.accelerator.is_main_process:
            run.log_metrics({"step": step, **evaluated})
    if hooks.sample and cfg.sample_every and step % cfg.sample_every == 0 and state.accelerator.is_main_process:
        with progress.paused("sampling"):
            _with_ema(state.ema, state.model, lambda m: hooks.sample(m, step, run.samples_dir))
    return evaluated


class _StopRequests:
    """The first Ctrl-C (SIGINT) asks the loop to finish its step and write a checkpoint; the second
    aborts at once (KeyboardInterrupt). Only the main thread can own the signal; elsewhere, or when not
    `enabled`, this is inert (Ctrl-C then behaves as the host program set it up)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        warn("Ctrl-C: finishing this step and writing a checkpoint (press Ctrl-C again to abort at once)")

    def __enter__(self) -> _StopRequests:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _stop_votes(cfg: TrainConfig, started: float, interrupted: bool, accelerator) -> tuple[bool, bool]:
    """(time budget spent, Ctrl-C pressed) agreed by every process, so all stop at the same step."""
    out_of_time = cfg.max_minutes > 0 and time.perf_counter() - started >= 60.0 * cfg.max_minutes
    return any_process(accelerator, out_of_time), any_process(accelerator, interrupted)


def _with_ema(ema: EMA | None, model: nn.Module, fn: Callable[[nn.Module], Any]) -> Any:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ema.swapped_in(model) if ema is not None else contextlib.nullcontext():
            return fn(model)
    finally:
        model.train(was_training)


def _available_trackers(names: list[str]) -> list[str]:
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
    """Steps with the loss, the rate and the time left: of `max_steps`, or of a `max_minutes` budget."""

    def __init__(self, enabled: bool, cfg: TrainConfig, completed: int):
        self.budget = 60.0 * cfg.max_minutes
        fields = {"loss": "loss -"} | ({"budget": self._budget_left(0.0)} if self.budget else {})
        super().__init__(
            "train", cfg.max_steps, completed=completed, fields=fields, eta=not self.budget, enabled=enabled
        )

    def _budget_left(self, elapsed: float) -> str:
        left = max(0.0, self.budget - elapsed)
        return f"{int(left // 60)}:{int(left % 60):02d} left of the {self.budget / 60:g} min budget"

    def step(self, step: int, loss: float) -> None:
        fields = {"loss": f"loss {loss:.4f}"}
        if self.budget:
            fields["budget"] = self._budget_left(self.elapsed)
        self.update(completed=step, **fields)
