"""`vpt sample`: predict frames with any backend through `Backend.predict`.

The model comes from a training run (`--run`, default the newest under ./runs; its latest checkpoint,
or the one `--step` or a `checkpoints/step_NNNNNN` folder names) or from published upstream weights
(`--checkpoint`, for backends with a converter). The context comes from images, a
video, or one video of an HDF5/video dataset. Backend-specific sampling options are keyword arguments
of that backend's `predict` (e.g. `guidance_scale`, `warm_start`): `--guidance-scale` and
`--option NAME=VALUE` reach only backends whose `predict` names them, anything else is an error
that names the backend. The output is enlarged for viewing and labelled (`--view-height`). Next to it,
`<out>.json` records every setting needed to redo it and the legend of the picture.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vpt.commands.options import VIEW_HEIGHT, Precision, ThreadsOption, ViewHeightOption, apply_threads, flag
from vpt.commands.predictor import AutoencoderOption, BackendOption, CheckpointOption, StepOption, load_predictor


def sample(
    run: Annotated[
        Optional[Path],
        typer.Option(
            "--run",
            rich_help_panel="Model",
            help="Run directory of `vpt train`, or one of its checkpoints/step_NNNNNN folders. Default: the newest run under ./runs.",
        ),
    ] = None,
    step: StepOption = None,
    checkpoint: CheckpointOption = None,
    backend: BackendOption = None,
    release: Annotated[
        Optional[str],
        typer.Option(
            "--release",
            "--preset",
            rich_help_panel="Model",
            help="Which release --checkpoint is, where its weights cannot tell (RIVER: bair64 or kth; a VideoGeneration-PyTorch Latte dit_ckpt.pth: vg-ucf or vg-mnist); sets its architecture where needed, frame size and protocol.",
        ),
    ] = None,
    ae: AutoencoderOption = None,
    image: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--image",
            rich_help_panel="Context",
            help="Context image(s), in order (repeat the option for several frames).",
        ),
    ] = None,
    video: Annotated[
        Optional[Path],
        typer.Option(
            "--video",
            rich_help_panel="Context",
            help="Context video file; its first --context-frames frames are the context.",
        ),
    ] = None,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            rich_help_panel="Context",
            help="Dataset (HDF5 shards or video tree); with --index, its first frames are the context and the rest the truth.",
        ),
    ] = None,
    index: Annotated[
        int, typer.Option("--index", rich_help_panel="Context", help="Video number in --data.", min=0)
    ] = 0,
    split: Annotated[str, typer.Option("--split", rich_help_panel="Context", help="Split of --data.")] = "test",
    context_frames: Annotated[
        Optional[int],
        typer.Option(
            "--context-frames",
            rich_help_panel="Context",
            help="Frames of --video/--data given as context. Default: the model's context_frames (the whole --video when it names none).",
            min=1,
        ),
    ] = None,
    frames: Annotated[
        Optional[int],
        typer.Option(
            "--frames",
            rich_help_panel="Sampling",
            help="Frames to predict. Default: the training clip length minus the context (15 without a run config).",
            min=1,
        ),
    ] = None,
    steps: Annotated[
        Optional[int],
        typer.Option(
            "--steps", rich_help_panel="Sampling", help="Sampling steps. Default: the model's own setting.", min=1
        ),
    ] = None,
    num_samples: Annotated[
        int,
        typer.Option(
            "--num-samples",
            rich_help_panel="Sampling",
            help="Predictions from the same context (different noise).",
            min=1,
        ),
    ] = 1,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size", rich_help_panel="Sampling", help="Samples per forward pass. Default: all at once.", min=1
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", rich_help_panel="Sampling", help="Random seed (noise of every sample).")
    ] = 0,
    prompt: Annotated[
        Optional[str],
        typer.Option(
            "--prompt",
            rich_help_panel="Sampling",
            help="Text instruction, for backends that take text. Default for --data: the video's caption.",
        ),
    ] = None,
    guidance_scale: Annotated[
        Optional[float],
        typer.Option(
            "--guidance-scale",
            rich_help_panel="Sampling",
            help="Classifier-free guidance scale, for backends that use it. Default: the model's own.",
        ),
    ] = None,
    option: Annotated[
        Optional[list[str]],
        typer.Option(
            "--option",
            rich_help_panel="Sampling",
            help="Backend sampling option NAME=VALUE, a keyword of its predict (e.g. warm_start=0.5 for river; upsample=4 for neuralsde: 4 frames per predicted frame, the in-between ones decoded from the SDE state, linear between accepted steps of the adaptive solver); repeatable.",
        ),
    ] = None,
    size: Annotated[
        Optional[int],
        typer.Option(
            "--size",
            rich_help_panel="Output",
            help="Resize context frames to SIZE x SIZE. Default: the run's data.image_size (the input size without one).",
            min=8,
        ),
    ] = None,
    fps: Annotated[
        float, typer.Option("--fps", rich_help_panel="Output", help="Frame rate of a .mp4/.gif output.")
    ] = 4.0,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            rich_help_panel="Output",
            help="Output: .mp4 or .gif (samples side by side) or .png (one strip per sample); context frames have a red border, true frames a green one.",
        ),
    ] = Path("prediction.mp4"),
    view_height: ViewHeightOption = VIEW_HEIGHT,
    device: Annotated[
        str,
        typer.Option("--device", rich_help_panel="Resources", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    ] = "auto",
    precision: Annotated[
        Optional[Precision],
        typer.Option(
            "--precision",
            rich_help_panel="Resources",
            help="fp32, or bf16 autocast. Default with --checkpoint (published weights): fp32 on every device, as upstream samples. Default with --run: bf16 where the device has bf16 units (CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or AMX), fp32 elsewhere. The choice is recorded in the output's .json (eval-fvd defaults to fp32).",
        ),
    ] = None,
    compile_sampler: Annotated[
        bool,
        flag(
            "--compile/--no-compile",
            "torch.compile the sampler's network call (CUDA graphs on CUDA); pays off on long rollouts. Backends with `model.compile_sampler`.",
            rich_help_panel="Resources",
        ),
    ] = False,
    threads: ThreadsOption = 0,
) -> None:
    """Predict the next frames of a context with a trained (or published) model."""
    import torch

    apply_threads(threads)
    from vpt.config import config_to_dict
    from vpt.console import info
    from vpt.errors import UsageError
    from vpt.fsutil import atomic_write_text, ensure_writable
    from vpt.models.backend import run_protocol
    from vpt.precision import default_precision, resolve_device

    started = time.perf_counter()
    if out.suffix.lower() not in (".mp4", ".gif", ".png", ".mov", ".mkv"):
        raise UsageError(f"--out {out}: use a .mp4, .gif or .png file")
    ensure_writable(out.parent, "--out")
    torch_device = resolve_device(device)
    model, origin, run_config = load_predictor(run, checkpoint, backend, ae, release, step=step)
    # published weights are sampled as upstream samples them; a run's own weights where the device is fastest
    published = not run_config
    precision_name = (precision.value if precision else None) or (
        "fp32" if published else default_precision(torch_device)
    )
    sources = [name for name, given in (("--image", image), ("--video", video), ("--data", data)) if given]
    if len(sources) > 1 or (not sources and not model.generates_without_context):
        raise UsageError(
            "give the context with exactly one of --image FILE..., --video FILE or --data DIR --index I"
            + (f" (got {', '.join(sources)})" if sources else "")
        )
    predict_kwargs = _predict_kwargs(model, prompt, guidance_scale, option or [])
    if compile_sampler:
        model.compile_sampler()
    model.to(torch_device).eval()
    protocol = run_protocol(run_config, model)
    info(
        f"{type(model).name} on {torch_device} ({precision_name}); protocol: {protocol['context_frames']} context -> "
        f"{protocol['predicted_frames']} predicted frames at {protocol['image_size'] or 'the input size'}"
    )

    size = size or protocol["image_size"]
    wanted_context = context_frames or protocol["context_frames"]
    context, truth, context_record, caption = _read_context(
        image, video, data, index, split, wanted_context, size, model.resize, blank=None if sources else size
    )
    if caption and prompt is None and model.takes_text:
        predict_kwargs["prompt"] = caption
    num_context = context.shape[0]
    frames = frames or protocol["predicted_frames"]

    predictions = _predict(
        model,
        context.to(torch_device),
        frames,
        num_samples=num_samples,
        batch_size=batch_size or num_samples,
        steps=steps,
        seed=seed,
        kwargs=predict_kwargs,
        precision=precision_name,
    )

    from vpt.data.video import to_uint8_frames
    from vpt.visualize import save_prediction

    # A backend may return U frames per requested one (e.g. NeuralSDE's `upsample`: states in between);
    # the known frames are then repeated U times so the video keeps one frame rate, U times --fps.
    upsample = max(1, len(predictions[0]) // frames)
    context_shown = context.repeat_interleave(upsample, dim=0)
    rows = [to_uint8_frames(torch.cat([context_shown, p])) for p in predictions]
    truth_row = (
        to_uint8_frames(truth[: num_context + frames].repeat_interleave(upsample, dim=0)) if truth is not None else None
    )
    legend = save_prediction(
        out, rows, num_context * upsample, fps=fps * upsample, truth=truth_row, view_height=view_height
    )
    options = {k: v for k, v in predict_kwargs.items() if k != "prompt"}
    record = {
        "command": "vpt sample",
        "argv": sys.argv[1:],
        "backend": type(model).name,
        **origin,
        "context": context_record,
        "context_frames": num_context,
        "image_size": size,
        "resize": model.resize,
        "frames": frames,
        "steps": steps,
        "num_samples": num_samples,
        "batch_size": batch_size or num_samples,
        "seed": seed,
        "prompt": predict_kwargs.get("prompt"),
        "guidance_scale": guidance_scale,
        "options": options,
        "sampler": model.sample_record(steps=steps, **options),
        "protocol": protocol,
        "device": str(torch_device),
        "precision": precision_name,
        "fps": fps * upsample,
        "upsample": upsample,
        "out": str(out.resolve()),
        "view_height": view_height,
        "legend": legend,
        "model_config": config_to_dict(model.cfg),
        "versions": _versions(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    record_path = out.with_name(out.name + ".json")
    atomic_write_text(record_path, json.dumps(record, indent=2, default=str) + "\n")
    info(f"Wrote {out} ({num_samples} sample(s): {num_context} context + {frames} predicted frames) and {record_path}")


# --- backend options -----------------------------------------------------------------------------------------


def _predict_kwargs(model: Any, prompt: str | None, guidance_scale: float | None, options: list[str]) -> dict[str, Any]:
    """Keyword arguments for `model.predict`, checked against what this backend's predict accepts."""
    import typing

    from vpt.config import typed_value
    from vpt.errors import UsageError

    name = type(model).name
    accepted = model.sampling_options()
    kwargs: dict[str, Any] = {}
    if prompt is not None:
        if not model.takes_text:
            raise UsageError(f"backend '{name}' takes no text prompt; drop --prompt")
        kwargs["prompt"] = prompt
    if guidance_scale is not None:
        if "guidance_scale" not in accepted:
            raise UsageError(f"backend '{name}' has no guidance scale; drop --guidance-scale")
        kwargs["guidance_scale"] = guidance_scale
    for text in options:
        key, sep, raw = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--option {text!r}: expected NAME=VALUE")
        if key not in accepted:
            known = ", ".join(sorted(accepted)) or "none"
            raise UsageError(f"--option {key}: backend '{name}' has no such sampling option (it has: {known})")
        declared = typing.get_type_hints(type(model).predict).get(key, Any)
        kwargs[key] = typed_value(declared, raw, source=f"--option {key}", key=key)  # YAML tags are never built
    return kwargs


# --- context ------------------------------------------------------------------------------------------


def _read_context(image, video, data, index, split, wanted, size, resize, *, blank: int | None = None):
    """(context (n, 3, H, W) in [-1, 1], truth (T, 3, H, W) or None, a record of the source, caption or None).

    Without a source (a backend that generates from nothing) the context is empty: (0, 3, S, S)."""
    import numpy as np
    import torch

    from vpt.data.datasets import frames_to_tensor
    from vpt.data.video import read_image, read_video
    from vpt.errors import UsageError

    if not (image or video or data):
        if blank is None:
            raise UsageError("this backend generates without context: give --size (the run's frame size is unknown)")
        return torch.zeros(0, 3, blank, blank), None, {"generated": True}, None
    if image:
        frames = [read_image(path, size, resize) for path in image]
        if len({f.shape for f in frames}) > 1:
            raise UsageError("the --image files differ in size; pass --size S to resize them to S x S")
        context = frames_to_tensor(np.stack(frames))
        return context, None, {"images": [str(p.resolve()) for p in image]}, None
    if video is not None:
        if not video.is_file():
            raise UsageError(f"--video not found: {video}")
        clip = frames_to_tensor(read_video(video, size=size, resize=resize, num_frames=wanted))
        if wanted is not None and len(clip) < wanted:
            raise UsageError(f"{video} has {len(clip)} frames, fewer than the {wanted} context frames asked for")
        return clip, None, {"video": str(video.resolve())}, None
    return _context_from_data(data, index, split, wanted or 1, size, resize)


def _context_from_data(data: Path, index: int, split: str, wanted: int, size, resize):
    from vpt.data.datasets import DataConfig, VideoDataset
    from vpt.errors import UsageError

    dataset = VideoDataset(DataConfig(path=str(data), split=split, image_size=size, resize=resize))
    if dataset.is_latent:
        raise UsageError(f"{data} holds latents; sample from frame data (the HDF5 that save-latents read)")
    if index >= len(dataset):
        raise UsageError(f"--index {index} is out of range: split '{split}' of {data} has {len(dataset)} videos")
    item = dataset[index]
    clip = item["video"]  # (T, 3, H, W)
    if len(clip) < wanted:
        raise UsageError(f"video {index} of {data} has {len(clip)} frames, fewer than the {wanted} context frames")
    record = {"data": str(data.resolve()), "split": split, "index": index}
    return clip[:wanted], clip, record, item.get("text") or None


# --- prediction ---------------------------------------------------------------------------------------


def _predict(model, context, frames, *, num_samples, batch_size, steps, seed, kwargs, precision):
    """`num_samples` predictions (F, 3, H, W) on CPU, batched, one generator for the whole run; the bar
    ticks per solver step, with the predicted frames beside it."""
    import torch

    from vpt.precision import inference_autocast
    from vpt.progress import SolverStepBar, listening_to_solver_steps

    device = context.device
    generator = torch.Generator(device).manual_seed(seed)
    prompt = kwargs.get("prompt")
    extra = {k: v for k, v in kwargs.items() if k != "prompt"}
    results = []
    with (
        SolverStepBar("sample", num_samples * frames, transient=True) as bar,
        model.reporting_frames(bar.frames_done, started=bar.frames_started),
        listening_to_solver_steps(bar.solver_step),
    ):
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            batch = context[None].expand(count, *context.shape)  # (B, n, 3, H, W)
            with torch.no_grad(), inference_autocast(device, precision):
                predicted = model.predict(
                    batch,
                    frames,
                    prompt=[prompt] * count if prompt else None,
                    steps=steps,
                    generator=generator,
                    **extra,
                )
            results.extend(predicted.float().clamp(-1, 1).cpu())
    return results


def _versions() -> dict[str, str]:
    import torch

    import vpt

    return {"vpt": vpt.__version__, "torch": torch.__version__}
