"""`vpt train-ae`: train an autoencoder (VQGAN, RIVER VQVAE, KL-VAE, Latte VAE, PVDM, MOSO) on the shared loop.

The run's config.yaml has four sections:
    autoencoder:  type (vqgan | river-vqvae | kl-vae | latte-vae | pvdm | moso), arch (the type's settings, or
                  `preset: <name>` plus overrides), init_from (weights to start from), init_optimizer
                  (also the autoencoder optimizer's state of that train-ae run)
    data:         vpt.data.datasets.DataConfig (frames in [-1, 1]; data.frames = 1 trains on single frames)
    loss:         vpt.models.autoencoders.objective.LossConfig
    train:        vpt.training.TrainConfig
Periodic work: `train.val_every` logs val_loss (L1), val_psnr and val_ssim of reconstructions of the
val split; `train.sample_every` writes a PNG grid (originals above reconstructions) into samples/.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vpt.commands.options import (
    ConfigOption,
    ForceOption,
    FreshOption,
    LogEveryOption,
    MaxStepsOption,
    RunOption,
    SetOption,
    ThreadsOption,
    apply_threads,
    flag,
    next_step,
    path_setting,
)

VALIDATION_CLIPS = 32  # val clips whose reconstructions are scored
SAMPLE_CLIPS = 8  # val clips shown in each sample grid


@dataclass
class AutoencoderSection:
    """The `autoencoder:` section."""

    type: str = "vqgan"  # vqgan (taming ldm-vq) | river-vqvae | kl-vae | latte-vae | pvdm
    arch: dict[str, Any] = field(default_factory=dict)  # the type's architecture; `preset: f8_small` etc. fills it
    init_from: str = ""  # start from these weights: a train-ae run, a checkpoint file, a diffusers folder
    # With init_from a train-ae run: also start the autoencoder's AdamW state (moments, step count) from the
    # checkpoint its weights come from, the raw weights rather than an EMA; the discriminators' state starts fresh,
    # and this run's step count and lr schedule from 0 (upstream PVDM's GAN stage after its first stage).
    init_optimizer: bool = False


def train_ae_schema() -> type:
    """The config schema of `vpt train-ae`: autoencoder, data, loss and train sections."""
    from vpt.data.datasets import DataConfig
    from vpt.models.autoencoders.objective import LossConfig
    from vpt.training import TrainConfig

    return dataclasses.make_dataclass(
        "TrainAESchema",
        [
            ("autoencoder", AutoencoderSection, field(default_factory=AutoencoderSection)),
            ("data", DataConfig, field(default_factory=lambda: DataConfig(frames=1))),
            ("loss", LossConfig, field(default_factory=LossConfig)),
            ("train", TrainConfig, field(default_factory=TrainConfig)),
        ],
    )


def train_ae(
    run: RunOption,
    config: ConfigOption = None,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            help="Training frames (sets data.path): HDF5 shards from `vpt convert-h5`, or a train/val/test tree of videos.",
        ),
    ] = None,
    init_from: Annotated[
        Optional[Path],
        typer.Option(
            "--init-from",
            help="Start from these weights (sets autoencoder.init_from): a train-ae run, vqvae.ckpt/.pth, PVDM's model_last.pth, or a diffusers AutoencoderKL folder.",
        ),
    ] = None,
    init_optimizer: Annotated[
        Optional[bool],
        flag(
            "--init-optimizer/--no-init-optimizer",
            "With --init-from a train-ae run: also start from its autoencoder optimizer's state "
            "(sets autoencoder.init_optimizer).",
        ),
    ] = None,
    set_: SetOption = None,
    max_steps: MaxStepsOption = None,
    log_every: LogEveryOption = None,
    fresh: FreshOption = False,
    force: ForceOption = False,
    threads: ThreadsOption = 0,
) -> None:
    """Train an autoencoder; the run directory resumes where it stopped."""
    from vpt.runs import start_run

    apply_threads(threads)
    overrides = list(set_ or [])
    if data is not None:
        overrides.append(path_setting("data.path", data))
    if init_from is not None:
        overrides.append(path_setting("autoencoder.init_from", init_from))
    if init_optimizer is not None:
        overrides.append(f"autoencoder.init_optimizer={str(init_optimizer).lower()}")
    run_dir, cfg = start_run(
        train_ae_schema(),
        run_dir=run,
        config_file=config,
        overrides=overrides,
        max_steps=max_steps,
        log_every=log_every,
        fresh=fresh,
        force=force,
    )
    train_autoencoder(cfg, run_dir)


def train_autoencoder(cfg: Any, run: Any) -> int:
    """Build the autoencoder, its objective and the data of a resolved config; run the shared loop."""
    from vpt.console import info, warn
    from vpt.data.datasets import ClipDataset
    from vpt.errors import UsageError
    from vpt.models.autoencoders.objective import check_loss_config, load_perceptual
    from vpt.training import seed_everything
    from vpt.training import train as train_loop

    seed_everything(cfg.train.seed)  # the model's (and discriminator's) initialisation follows the config's seed
    optimizer_source = _optimizer_source(cfg.autoencoder, run)
    autoencoder = _autoencoder(cfg, run)
    check_loss_config(cfg.loss, autoencoder)
    dataset = ClipDataset(cfg.data)
    if dataset.is_latent:
        raise UsageError(f"{cfg.data.path} holds latents; an autoencoder trains on frames (HDF5 from `vpt convert-h5`)")
    k, context = autoencoder.frames_per_latent, autoencoder.context_frames
    if (cfg.data.frames - 2 * context) % k or cfg.data.frames < k + 2 * context:
        plus = f", plus the {context} frame(s) it reads on each side" if context else ""
        raise UsageError(
            f"data.frames={cfg.data.frames} is not a multiple of the {k} frames {autoencoder.type} encodes at once{plus}"
        )
    perceptual, reason = load_perceptual(cfg.loss)
    if perceptual is None and cfg.loss.perceptual_weight > 0:
        warn(f"training without LPIPS: {reason}")
        _record_event(run, {"event": "lpips_disabled", "reason": reason})
    objective = autoencoder.build_objective(cfg.loss, grad_accum=cfg.train.grad_accum, perceptual=perceptual)
    if run.latest_checkpoint() is None:
        objective.start()  # e.g. PVDM's discriminators from loss_last.pth; a resume has them in its checkpoint
    validation = _validation_data(cfg)
    hooks = _hooks(cfg, validation) if validation is not None else None
    info(
        f"Training {autoencoder.type} ({_millions(autoencoder)}M parameters) on {len(dataset)} videos "
        f"from {cfg.data.path} -> {run.root}"
    )
    step = train_loop(objective, dataset, cfg.train, run, hooks, init_optimizer_from=optimizer_source)
    info(f"{run.root}: step {step}")
    data = Path(cfg.data.path)
    next_step(f"vpt save-latents --ae {run.root} --data {data} --out {data.parent / (data.name + '-latents')}")
    return step


def _autoencoder(cfg: Any, run: Any):
    """A fresh model from `type`/`arch`, or on a run's first start the `init_from` weights (whose type
    and architecture are then written into the run's config, so a resume does not need the source)."""
    from vpt.config import config_to_dict
    from vpt.console import info, is_main_process
    from vpt.errors import ConfigError
    from vpt.models.autoencoders import autoencoder_class, build_autoencoder, load_autoencoder, resolve_arch

    section = cfg.autoencoder
    if not section.init_from or run.latest_checkpoint() is not None:
        return build_autoencoder(section.type, section.arch, source="autoencoder.arch")
    # A bare weights file gets the config's arch for what tensor shapes cannot tell (e.g. pvdm's checkpointing);
    # loading still checks every shape against it. A run or diffusers folder carries its own architecture.
    source = (
        load_autoencoder(section.init_from, arch=section.arch or None)
        if Path(section.init_from).is_file()
        else load_autoencoder(section.init_from, ema=not section.init_optimizer)  # the weights the moments belong to
    )
    if autoencoder_class(section.type).type != source.type:
        raise ConfigError(f"autoencoder.init_from is a {source.type} but autoencoder.type is {section.type}")
    if section.arch and config_to_dict(resolve_arch(section.type, section.arch)) != config_to_dict(source.config):
        raise ConfigError("autoencoder.arch differs from the architecture of autoencoder.init_from; leave arch empty")
    section.type, section.arch = source.type, config_to_dict(source.config)
    if is_main_process():
        run.write_config(config_to_dict(cfg))
    info(f"Starting from {source.provenance['source']}")
    return source.train().requires_grad_(True)


def _optimizer_source(section: AutoencoderSection, run: Any) -> Path | None:
    """With `init_optimizer`, the checkpoint of the `init_from` run whose optimizer state a fresh run starts
    from (the one `load_autoencoder` takes the weights from: the latest); None otherwise and on a resume."""
    from vpt.errors import ConfigError, UsageError
    from vpt.runs import Run

    if not section.init_optimizer:
        return None
    if not section.init_from:
        raise ConfigError("autoencoder.init_optimizer needs autoencoder.init_from (--init-from a train-ae run)")
    if run.latest_checkpoint() is not None:
        return None
    source = Run(section.init_from)
    if not source.config_path.is_file():
        raise ConfigError(
            f"autoencoder.init_optimizer: {section.init_from} is not a `vpt train-ae` run; only a run's "
            "checkpoints hold the optimizer state"
        )
    checkpoint = source.latest_checkpoint()
    if checkpoint is None:
        raise UsageError(f"{source.root} has no finished checkpoint yet")
    return checkpoint


def _record_event(run: Any, record: dict) -> None:
    """Note something about the run in metrics.jsonl once (at the step it was first seen)."""
    from vpt.console import is_main_process

    if is_main_process() and not any(r.get("event") == record["event"] for r in run.read_metrics()):
        run.log_metrics({"step": run.latest_step(), **record})


def _millions(module: Any) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}"


def _validation_data(cfg: Any):
    from vpt.console import warn
    from vpt.data.datasets import ClipDataset
    from vpt.errors import UsageError

    if not (cfg.train.val_every or cfg.train.sample_every):
        return None
    try:
        return ClipDataset(dataclasses.replace(cfg.data, split="val", hflip=False))
    except UsageError as exc:
        warn(f"no validation or sample grids: {exc}")
        return None


def _hooks(cfg: Any, validation: Any):
    """PSNR/SSIM of val reconstructions, and PNG grids of originals over reconstructions."""
    import torch
    from einops import rearrange
    from torch.utils.data import default_collate

    from vpt.data.video import to_uint8_frames
    from vpt.metrics.frames import psnr, ssim
    from vpt.precision import inference_autocast
    from vpt.training import Hooks
    from vpt.visualize import save_image, strip

    def clips(count: int):
        indices = list(range(min(count, len(validation))))
        for start in range(0, len(indices), cfg.train.batch_size):
            yield default_collate([validation[i] for i in indices[start : start + cfg.train.batch_size]])["video"]

    def frames_and_reconstructions(autoencoder, video):
        """(B, T, C, H, W) -> the encoded frames (without context frames) and their reconstructions as
        (N, C, H, W) in [-1, 1]."""
        device = next(autoencoder.parameters()).device
        video = video.to(device)
        with inference_autocast(device):
            reconstruction = autoencoder.reconstruct(video).float().clamp(-1.0, 1.0)  # (B, n k, C, H, W)
        target = autoencoder.without_context(autoencoder.to_clips(video))  # (B n, k, C, H, W)
        return rearrange(target, "n k c h w -> (n k) c h w"), rearrange(reconstruction, "b t c h w -> (b t) c h w")

    def validate(objective) -> dict[str, float]:
        l1, psnrs, ssims = [], [], []
        for video in clips(VALIDATION_CLIPS):
            target, reconstruction = frames_and_reconstructions(objective.autoencoder, video)
            l1.append((reconstruction - target).abs().flatten(1).mean(1).cpu())
            unit_target, unit_reconstruction = (target + 1) / 2, (reconstruction + 1) / 2
            psnrs.extend(psnr(unit_reconstruction, unit_target).tolist())
            if min(target.shape[-2:]) >= 11:
                ssims.extend(ssim(unit_reconstruction, unit_target).tolist())
        record = {"val_loss": float(torch.cat(l1).mean()), "val_psnr": sum(psnrs) / len(psnrs)}
        if ssims:
            record["val_ssim"] = sum(ssims) / len(ssims)
        return record

    def sample(objective, step: int, out_dir: Path) -> None:
        video = next(clips(SAMPLE_CLIPS))
        target, reconstruction = frames_and_reconstructions(objective.autoencoder, video)
        rows = [to_uint8_frames(target), to_uint8_frames(reconstruction)]
        save_image(out_dir / f"step_{step:06d}.png", strip(rows, 0))

    return Hooks(validate=validate if cfg.train.val_every else None, sample=sample if cfg.train.sample_every else None)
