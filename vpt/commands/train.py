"""`vpt train BACKEND`: train any registered backend on the shared loop.

Nothing here knows a backend by name. The config schema is built per backend:
`{backend, model: <Backend>.Config, data: DataConfig, train: TrainConfig}`. Batches carry the clip
under "video" (frames in [-1, 1]) or, for latent HDF5 written by `vpt save-latents`, under "latents";
a backend with a frozen autoencoder (a `model.autoencoder` field) encodes frames itself and only needs
the autoencoder for sampling when it trains on latents.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

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
    next_step,
    path_setting,
)
from vpt.models.registry import backend_names

VALIDATION_CLIPS = 64  # clips scored by the periodic validation loss
SAMPLE_CLIPS = 4  # val clips predicted by the periodic sampling


def train_schema(backend_cls: type) -> type:
    """The config schema of `vpt train <backend>`: backend name, model, data, train and eval sections."""
    from vpt.data.datasets import DataConfig
    from vpt.models.backend import EvalProtocol
    from vpt.training import TrainConfig

    return dataclasses.make_dataclass(
        f"{backend_cls.__name__}TrainSchema",
        [
            ("backend", Literal[backend_cls.name], dataclasses.field(default=backend_cls.name)),
            ("model", backend_cls.Config, dataclasses.field(default_factory=backend_cls.Config)),
            ("data", DataConfig, dataclasses.field(default_factory=DataConfig)),
            ("train", TrainConfig, dataclasses.field(default_factory=TrainConfig)),
            ("eval", EvalProtocol, dataclasses.field(default_factory=EvalProtocol)),
        ],
    )


def train(
    backend: Annotated[str, typer.Argument(help=f"Backend to train: {', '.join(backend_names())}.")],
    run: RunOption,
    config: ConfigOption = None,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            help="Training data (sets data.path): HDF5 shards of frames or of latents from `vpt save-latents`, or a train/val/test tree of videos.",
        ),
    ] = None,
    ae: Annotated[
        Optional[Path],
        typer.Option(
            "--ae",
            help="Frozen autoencoder for backends that use one (sets model.autoencoder): a `vpt train-ae` run or published AE weights. Default for latent data: the autoencoder that wrote them.",
        ),
    ] = None,
    set_: SetOption = None,
    max_steps: MaxStepsOption = None,
    log_every: LogEveryOption = None,
    fresh: FreshOption = False,
    force: ForceOption = False,
    threads: ThreadsOption = 0,
) -> None:
    """Train a backend on the shared loop; the run directory resumes where it stopped."""
    from vpt.models.registry import get_backend
    from vpt.runs import start_run

    apply_threads(threads)
    backend_cls = get_backend(backend)
    overrides = list(set_ or [])
    if data is not None:
        overrides.append(path_setting("data.path", data))
    if ae is not None:
        if not backend_cls.uses_autoencoder:
            from vpt.errors import UsageError

            raise UsageError(f"backend '{backend}' has no autoencoder to set; drop --ae")
        overrides.append(path_setting("model.autoencoder", ae))
    run_dir, cfg = start_run(
        train_schema(backend_cls),
        run_dir=run,
        config_file=config,
        overrides=overrides,
        max_steps=max_steps,
        log_every=log_every,
        fresh=fresh,
        force=force,
        complete=lambda cfg: check_training_data(backend_cls, cfg),
    )
    train_backend(backend_cls, cfg, run_dir)


def train_backend(backend_cls: type, cfg: Any, run: Any) -> int:
    """Build the datasets and the model of a resolved config, then run the shared loop. Returns the final step."""
    from vpt.console import info
    from vpt.data.datasets import ClipDataset
    from vpt.training import seed_everything
    from vpt.training import train as train_loop

    seed_everything(cfg.train.seed)  # the model's initialisation follows the config's seed
    dataset = ClipDataset(cfg.data, uint8_frames=True)  # frames become floats on the training device
    model = backend_cls(cfg.model)
    validation = _validation_data(cfg)
    hooks = _hooks(cfg, validation) if validation is not None else None
    kind = "latents" if dataset.is_latent else "frames"
    info(f"Training {backend_cls.name} on {len(dataset)} {kind} videos from {cfg.data.path} -> {run.root}")
    step = train_loop(model, TrainingData(dataset), cfg.train, run, hooks)
    context = '--image FRAME.png --prompt "INSTRUCTION"' if backend_cls.takes_text else "--video CLIP.mp4"
    info(f"{run.root}: step {step}")
    next_step(f"vpt sample --run {run.root} {context} --out prediction.mp4")
    return step


def check_training_data(backend_cls: type, cfg: Any) -> None:
    """What the data must give the backend, checked before the run's config is written or a model is
    built (so a refused start leaves no config behind and costs no model loading): captions where the
    backend trains on them, and the frozen autoencoder (see `resolve_autoencoder`)."""
    from vpt.data.datasets import ClipDataset
    from vpt.errors import UsageError

    why_captions = backend_cls.needs_captions(cfg.model)
    if why_captions is None and not backend_cls.uses_autoencoder:
        return
    dataset = ClipDataset(cfg.data)
    if why_captions is not None and not dataset.has_text:
        raise UsageError(
            f"{cfg.data.path} has no captions, but {cfg.backend} needs them ({why_captions}): add captions.json "
            "or captions.csv beside the videos and convert again (docs/your-data.md#captions)"
        )
    if backend_cls.uses_autoencoder:
        resolve_autoencoder(cfg, dataset)


def resolve_autoencoder(cfg: Any, dataset: Any) -> None:
    """Fill `model.autoencoder` from the latents' attributes when unset; check it is there for frames."""
    from vpt.errors import UsageError

    if dataset.is_latent:
        recorded = dataset.source.attrs.get("autoencoder_path") or None
        if cfg.model.autoencoder is None and recorded is not None:
            cfg.model.autoencoder = str(recorded)
            return
        if recorded is not None and Path(cfg.model.autoencoder).resolve() != Path(recorded).resolve():
            from vpt.console import warn

            warn(
                f"{cfg.data.path} was encoded by {recorded} but model.autoencoder is {cfg.model.autoencoder}; "
                f"samples are only right if both are the same autoencoder"
            )
        return
    if cfg.model.autoencoder is None:
        raise UsageError(
            f"{cfg.backend} on frame data needs a frozen autoencoder: pass --ae RUN "
            f"(a `vpt train-ae` run), or train on latents written by `vpt save-latents`"
        )


class TrainingData:
    """Hands the loop the dataset's items, with a latent clip under "latents" instead of "video"."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.collate = getattr(dataset, "collate", None)
        if not dataset.is_latent and hasattr(dataset, "on_device"):
            self.on_device = dataset.on_device  # e.g. uint8 frames -> [-1, 1] floats on the device

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        item = self.dataset[key]
        if self.dataset.is_latent:
            item = {("latents" if k == "video" else k): v for k, v in item.items()}
        return item


def _validation_data(cfg: Any) -> Any:
    """The val split as clips, or None (with a warning) when the data have no val split."""
    from vpt.console import warn
    from vpt.data.datasets import ClipDataset
    from vpt.errors import UsageError

    try:
        return TrainingData(ClipDataset(dataclasses.replace(cfg.data, split="val", hflip=False)))
    except UsageError as exc:
        warn(f"no validation or periodic samples: {exc}")
        return None


def _hooks(cfg: Any, validation: TrainingData) -> Any:
    """Periodic validation loss on fixed val clips and sample strips of `predict` on val clips."""
    import torch

    from vpt.training import Hooks

    def batches(count: int):
        from torch.utils.data import default_collate

        indices = list(range(min(count, len(validation))))
        for start in range(0, len(indices), cfg.train.batch_size):
            items = [validation[i] for i in indices[start : start + cfg.train.batch_size]]
            yield (validation.collate or default_collate)(items)

    def validate(model) -> dict[str, float]:
        from accelerate.utils import send_to_device

        device = next(model.parameters()).device
        losses = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.train.seed)  # the same draws at every validation
            for batch in batches(VALIDATION_CLIPS):
                losses.append(float(model.loss(send_to_device(batch, device))["loss"]))
        return {"val_loss": sum(losses) / max(1, len(losses))}

    def sample(model, step: int, out_dir: Path) -> None:
        if validation.dataset.is_latent and not model.can_show_latents:
            return  # latents without an autoencoder cannot be shown as frames
        from vpt.data.video import to_uint8_frames
        from vpt.precision import inference_autocast
        from vpt.visualize import save_prediction

        device = next(model.parameters()).device
        clips = next(batches(SAMPLE_CLIPS))
        video = _as_frames(model, clips, validation.dataset.is_latent, device)  # (B, T, 3, H, W)
        num_context = min(model.context_frames, video.shape[1] - 1)
        prompt = clips.get("text") if model.takes_text else None
        generator = torch.Generator(device).manual_seed(cfg.train.seed)
        with inference_autocast(device):
            predicted = model.predict(
                video[:, :num_context], video.shape[1] - num_context, prompt=prompt, generator=generator
            )
        rows = [to_uint8_frames(torch.cat([video[i, :num_context], predicted[i].float()])) for i in range(len(video))]
        truth = [to_uint8_frames(v) for v in video]
        name = out_dir / f"step_{step:06d}"
        save_prediction(name.with_suffix(".png"), [frame for pair in zip(truth, rows) for frame in pair], num_context)
        save_prediction(name.with_suffix(".gif"), rows, num_context, truth=None)

    return Hooks(validate=validate, sample=sample)


def _as_frames(model: Any, clips: dict, is_latent: bool, device) -> Any:
    """Val clips as frames in [-1, 1]: latent clips are decoded with the backend's autoencoder."""
    if is_latent:
        return model.decode(clips["latents"].to(device)).float()
    return clips["video"].to(device)
