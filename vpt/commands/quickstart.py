"""`vpt quickstart`: the whole path on a CPU in minutes, with no downloads.

make-data shapes -> convert-h5 -> train-ae -> save-latents -> train river -> predict the test clips ->
PSNR/SSIM and the object's position error next to copying the last context frame -> an HTML report
with GIFs and per-frame charts. Every stage writes into `--out` and skips or resumes what an earlier
call finished. Training runs fixed step counts (`train.max_steps` of configs/ae/quickstart.yaml and
configs/river/shapes.yaml), so the result does not depend on how busy the machine is; `--minutes`
is an optional cap that says so when it cut training short.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vpt.commands.options import ThreadsOption

AE_SHARE, EVAL_SHARE = 0.35, 0.12  # of a --minutes cap; RIVER may train until only the evaluation share is left
NUM_VIDEOS, VIDEO_FRAMES, IMAGE_SIZE = 500, 16, 64
EVAL_CLIPS, REPORT_CLIPS = 50, 8
MISSING_ERROR = IMAGE_SIZE / 2  # position error (px) of a frame whose object the prediction lost
KEPT_FRACTION = 0.3  # the object is kept when >= 30 % of its true pixel count has its colour


def quickstart(
    out: Annotated[
        Path, typer.Option("--out", help="Working folder: data/, runs/ae, runs/river, report.html, metrics.json.")
    ] = Path("quickstart"),
    minutes: Annotated[
        Optional[float],
        typer.Option(
            "--minutes",
            help="Optional wall-clock cap: 35% for the autoencoder, RIVER until 12% is left for the evaluation; the result then depends on machine speed (it says so). Default: the configs' fixed step counts (about 9 minutes on 2 quiet cores).",
            min=0.2,
        ),
    ] = None,
    num_videos: Annotated[
        int, typer.Option("--num-videos", help="Built-in shapes videos to make (80/10/10 train/val/test).", min=20)
    ] = NUM_VIDEOS,
    ae_steps: Annotated[
        Optional[int],
        typer.Option(
            "--ae-steps",
            help="Autoencoder training steps. Default: configs/ae/quickstart.yaml's train.max_steps.",
            min=1,
        ),
    ] = None,
    river_steps: Annotated[
        Optional[int],
        typer.Option(
            "--river-steps",
            help="RIVER training steps. Default: configs/river/shapes.yaml's train.max_steps (more continues an earlier run).",
            min=1,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Training seed of the autoencoder and RIVER (the data stay the same).")
    ] = 0,
    threads: ThreadsOption = 0,
) -> None:
    """Make data, train a small autoencoder and RIVER on it, and score predictions against a baseline."""
    from vpt.commands.options import apply_threads
    from vpt.console import info, warn

    apply_threads(threads)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str, fn, *args, **kwargs):
        begin = time.perf_counter()
        info(f"[bold]quickstart[/]: {name}")
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - begin, 1)
        return result

    _check_seed(out, seed)
    frames_h5 = stage("data", _make_data, out / "data", num_videos)
    latents = out / "data" / "latents"
    if _latents_started(latents):  # the autoencoder is frozen once RIVER's latents come from it
        ae_run = out / "runs" / "ae"
        info(f"quickstart: autoencoder {ae_run} kept as is (its latents are in {latents})")
    else:
        ae_run = stage(
            "autoencoder", _train_autoencoder, out, frames_h5, ae_steps, minutes and AE_SHARE * minutes, seed
        )
    stage("latents", _save_latents, ae_run, frames_h5, latents)
    river_minutes = minutes and max(0.1 * minutes, (1 - EVAL_SHARE) * minutes - (time.perf_counter() - started) / 60)
    river_run, cfg = stage("river", _train_river, out, latents, ae_run, river_steps, river_minutes, seed)
    truncated = _truncated(ae_run, river_run) if minutes else ""
    if truncated:
        warn(
            f"--minutes {minutes:g} cut training short ({truncated}): these scores depend on this machine's speed; "
            f"run without --minutes (or again: training continues) for the reference result"
        )
    metrics = stage("evaluation", _evaluate, river_run, frames_h5, cfg, out, truncated)

    metrics.update(
        {
            "minutes": round((time.perf_counter() - started) / 60, 2),
            "stage_seconds": timings,
            # float rounding, and so the trained path, depends on both: bf16 autocast where the CPU has bf16 units
            "threads": _torch_threads(),
            "training_precision": _training_precision(cfg),
            "ae_run": str(ae_run),
            "river_run": str(river_run),
            "truncated_by_minutes": truncated or None,
        }
    )
    from vpt.fsutil import atomic_write_text

    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    _print_table(metrics)
    gain = metrics["psnr"] - metrics["baseline_psnr"]
    placement = (
        f"object position error {metrics['position_error']:.2f} vs {metrics['baseline_position_error']:.2f} px, "
        f"object kept in {metrics['object_kept']:.0%} of predicted frames"
    )
    if metrics["beats_baseline"]:
        info(f"RIVER beats copying the last frame: {gain:+.2f} dB PSNR, {placement}. Report: {out / 'report.html'}")
    else:
        warn(
            f"RIVER does NOT beat copying the last frame ({gain:+.2f} dB PSNR, {placement}): it needs more "
            f"training (`--river-steps N` with N above the current step continues it). Report: {out / 'report.html'}"
        )
    info(f"Finished in {metrics['minutes']:.1f} min; metrics in {out / 'metrics.json'}")


# --- stages -------------------------------------------------------------------------------------------


def _make_data(root: Path, num_videos: int) -> Path:
    from vpt.data.convert import convert_h5
    from vpt.data.shapes import make_shapes

    make_shapes(root / "shapes", num_videos=num_videos, frames=VIDEO_FRAMES, size=IMAGE_SIZE)
    convert_h5(root / "shapes", root / "h5", image_size=IMAGE_SIZE)
    return root / "h5"


def _config_file(*parts: str) -> Path:
    """A config shipped in the repository's configs/ folder."""
    from vpt.errors import UsageError

    path = Path(__file__).resolve().parents[2].joinpath("configs", *parts)
    if not path.is_file():
        raise UsageError(f"{path} is missing; quickstart needs the configs/ folder of a vpt checkout")
    return path


def _train_autoencoder(out: Path, data: Path, steps: int | None, minutes: float | None, seed: int) -> Path:
    from vpt.commands.options import path_setting
    from vpt.commands.train_ae import train_ae_schema, train_autoencoder
    from vpt.runs import start_run

    run_dir = out / "runs" / "ae"
    overrides = [path_setting("data.path", data), *_budget(steps, minutes), *_quiet_overrides(seed)]
    run, cfg = start_run(
        train_ae_schema(), run_dir=run_dir, config_file=_config_file("ae", "quickstart.yaml"), overrides=overrides
    )
    train_autoencoder(cfg, run)
    return run_dir


def _latents_started(latents: Path) -> bool:
    from vpt.data.latents import MANIFEST

    return (latents / MANIFEST).is_file()


def _save_latents(ae_run: Path, data: Path, out: Path) -> Path:
    from vpt.commands.save_latents import encode_dataset

    encode_dataset(ae_run, data, out)
    return out


def _train_river(out: Path, latents: Path, ae_run: Path, steps: int | None, minutes: float | None, seed: int):
    from vpt.commands.options import path_setting
    from vpt.commands.train import train_backend, train_schema
    from vpt.models.river import River
    from vpt.runs import start_run

    run_dir = out / "runs" / "river"
    overrides = [
        path_setting("data.path", latents),
        path_setting("model.autoencoder", ae_run),
        *_budget(steps, minutes),
        *_quiet_overrides(seed),
    ]
    run, cfg = start_run(
        train_schema(River), run_dir=run_dir, config_file=_config_file("river", "shapes.yaml"), overrides=overrides
    )
    train_backend(River, cfg, run)
    return run_dir, cfg


def _budget(steps: int | None, minutes: float | None) -> list[str]:
    """Step count (None: the config's) and wall-clock cap (None: no cap) of one training stage."""
    return [f"train.max_minutes={minutes or 0}"] + ([f"train.max_steps={steps}"] if steps else [])


def _truncated(*runs: Path) -> str:
    """'ae 312/500 steps, ...' for the runs that stopped before their configured step count."""
    from vpt.runs import Run

    short = []
    for run_dir in runs:
        run = Run(run_dir)
        target = int(run.read_config()["train"]["max_steps"])
        if run.latest_step() < target:
            short.append(f"{run_dir.name} {run.latest_step()}/{target} steps")
    return ", ".join(short)


def _check_seed(out: Path, seed: int) -> None:
    """Refuse to continue runs of `out` that were trained with another --seed."""
    from vpt.errors import UsageError
    from vpt.runs import Run

    for name in ("ae", "river"):
        config = out / "runs" / name / "config.yaml"
        if config.is_file() and int(Run(config.parent).read_config()["train"].get("seed", 0)) != seed:
            raise UsageError(f"{config.parent} was trained with another --seed; pass that seed or another --out")


def _quiet_overrides(seed: int) -> list[str]:
    """The training seed, and no periodic sampling (the report at the end shows predictions)."""
    return [f"train.seed={seed}", "train.sample_every=0"]


def _evaluate(river_run: Path, data: Path, cfg: Any, out: Path, truncated: str) -> dict[str, Any]:
    """The quickstart's scores (`_score_rollout` under sampling seed 0) and its HTML report."""
    num_context = cfg.eval.context_frames or cfg.model.context_frames
    scores, video, predicted = _score_rollout(river_run, data, num_context, seed=0)
    _write_report(out, video, predicted, num_context, scores, truncated)
    return scores


def _score_rollout(river_run: Path, data: Path, num_context: int, seed: int):
    """Predict every whole test video from its first `num_context` frames (a rollout longer than the
    training clips), sampling under `seed`, and score it next to copying the last context frame: PSNR/SSIM,
    and where the object is (its colour's centroid against the generator's true centre) and whether it is
    still there. Returns (scores, test videos (N, T, 3, H, W), predicted frames (N, T - num_context, 3, H, W))."""
    import numpy as np
    import torch

    from vpt.data.datasets import frames_to_tensor
    from vpt.data.h5 import VideoH5, find_split_dir
    from vpt.metrics.frames import psnr, ssim
    from vpt.models.backend import Backend

    model = Backend.from_run(river_run)
    source = VideoH5(find_split_dir(data, "test"))
    count = min(EVAL_CLIPS, len(source))
    video = torch.stack([frames_to_tensor(source.read(i)[:VIDEO_FRAMES]) for i in range(count)])  # (N, T, 3, H, W)
    truth_positions = _true_positions(data, [source.name(i) for i in range(count)])
    truth = video[:, num_context:]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        predicted = torch.cat(
            [model.predict(chunk, truth.shape[1], generator=generator) for chunk in video[:, :num_context].split(25)]
        )
    baseline = video[:, num_context - 1 : num_context].expand_as(truth)

    def unit(frames):  # (N, T, 3, H, W) in [-1, 1] -> (N, T, 3, H, W) in [0, 1]
        return ((frames.float() + 1) / 2).clamp(0, 1)

    def per_clip_and_frame(metric, frames):  # (N, T)
        scores = metric(unit(frames).flatten(0, 1), unit(truth).flatten(0, 1))
        return np.asarray(scores, dtype=np.float64).reshape(count, -1)

    errors, kept = _position_scores(predicted, truth, truth_positions, num_context)  # (N, T) each
    baseline_errors, _ = _position_scores(baseline, truth, truth_positions, num_context)
    tables = {
        "psnr": per_clip_and_frame(psnr, predicted),
        "baseline_psnr": per_clip_and_frame(psnr, baseline),
        "ssim": per_clip_and_frame(ssim, predicted),
        "baseline_ssim": per_clip_and_frame(ssim, baseline),
        "position_error": errors,
        "baseline_position_error": baseline_errors,
    }
    curves = {name: table.mean(0) for name, table in tables.items()}  # (T,) mean over clips
    scores = {name: float(np.mean(values)) for name, values in curves.items()}
    # the spread over test clips of each clip's mean score (sample standard deviation)
    scores.update({f"{name}_clip_std": float(table.mean(1).std(ddof=1)) for name, table in tables.items()})
    scores["object_kept"] = float(kept.mean())
    motions = [record["motion"] for record in truth_positions]
    scores["by_motion"] = {}  # where the losses are: each motion of the generator on its own
    for motion in sorted(set(motions)):
        rows = [i for i, name in enumerate(motions) if name == motion]
        scores["by_motion"][motion] = {
            "clips": len(rows),
            "position_error": float(errors[rows].mean()),
            "object_kept": float(kept[rows].mean()),
        }
    # PSNR alone is dominated by the flat background: a model must also place the object better
    scores["beats_baseline"] = bool(
        scores["psnr"] > scores["baseline_psnr"] and scores["position_error"] < scores["baseline_position_error"]
    )
    scores["ahead_at_every_frame"] = bool(
        (curves["position_error"] < curves["baseline_position_error"]).all()
        and (curves["psnr"] > curves["baseline_psnr"]).all()
    )
    scores.update(
        {
            "test_clips": count,
            "context_frames": num_context,
            "predicted_frames": truth.shape[1],
            "river_step": _step(river_run),
            "baseline": "copy the last context frame",
            "per_frame": {name: [round(float(v), 4) for v in values] for name, values in curves.items()},
            "metric_protocol": "mean over test clips and predicted frames; frames in [0, 1]; SSIM 11x11 "
            "Gaussian (sigma 1.5); position error: distance (px) between the centroid of "
            "the object's colour and the generator's true centre, "
            f"{MISSING_ERROR:g} px where the object is lost; object_kept: fraction of "
            f"predicted frames with >= {KEPT_FRACTION:.0%} of the object's true colour pixels; *_clip_std: "
            "sample standard deviation over test clips of each clip's mean; ahead_at_every_frame: lower position "
            "error and higher PSNR than the baseline at every predicted frame; by_motion: position error and "
            "object_kept of the test clips of each motion",
        }
    )
    return scores, video, predicted


def _true_positions(data: Path, names: list[str | None]) -> list[dict]:
    """The generator's record (colour, true centre per frame) of each test video, from positions.json."""
    import json

    from vpt.errors import VptError

    record = data.parent / "shapes" / "positions.json"
    if not record.is_file():
        raise VptError(
            f"{record} is missing: the quickstart data predates position records; delete {data.parent} "
            "and run the quickstart again"
        )
    positions = json.loads(record.read_text())
    return [positions[f"test/{name}"] for name in names]


def _position_scores(frames, truth, records: list[dict], num_context: int, missing_error: float = MISSING_ERROR):
    """Per clip and predicted frame: position error (px) of the object's colour centroid (`missing_error`
    where it is lost), and whether the object is kept (its colour covers at least KEPT_FRACTION of the
    pixels it covers in the truth)."""
    import numpy as np

    from vpt.data.shapes import colour_centroid

    errors, kept = [], []
    for clip, true_clip, record in zip(frames, truth, records):
        centre, pixels = colour_centroid(clip, record["colour"])  # (T, 2), (T,)
        _, true_pixels = colour_centroid(true_clip, record["colour"])
        target = np.asarray(record["centre"])[num_context : num_context + len(clip)]
        distance = np.linalg.norm(centre - target, axis=1)
        present = pixels >= KEPT_FRACTION * np.maximum(true_pixels, 1)
        errors.append(np.where(present & np.isfinite(distance), distance, missing_error))
        kept.append(present)
    return np.stack(errors), np.stack(kept)


def _step(run_dir: Path) -> int:
    from vpt.runs import Run

    return Run(run_dir).latest_step()


# --- report -------------------------------------------------------------------------------------------


def _write_report(out: Path, video, predicted, num_context: int, scores: dict[str, Any], truncated: str) -> None:
    """report.html: the scores, then per clip a GIF of context | truth | prediction (context marked red)."""
    import html

    import torch

    from vpt.data.video import to_uint8_frames, write_video
    from vpt.fsutil import atomic_write_text
    from vpt.visualize import line_charts, save_image, side_by_side

    gifs = out / "report"
    gifs.mkdir(exist_ok=True)
    rows = []
    for i in range(min(REPORT_CLIPS, len(video))):
        context = to_uint8_frames(video[i, :num_context])
        truth = to_uint8_frames(video[i])
        prediction = to_uint8_frames(torch.cat([video[i, :num_context], predicted[i].float()]))
        write_video(gifs / f"clip_{i:02d}.gif", side_by_side([context, truth, prediction], num_context), fps=4)
        rows.append(f'<tr><td>{i}</td><td><img src="report/clip_{i:02d}.gif" width="{3 * 160}"></td></tr>')
    curves = scores["per_frame"]
    save_image(
        gifs / "per_frame.png",
        line_charts(
            {
                metric: {"RIVER": curves[metric], "copy last frame": curves[f"baseline_{metric}"]}
                for metric in ("psnr", "ssim", "position_error")
            }
        ),
    )
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>"
        if isinstance(v, float)
        else f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in scores.items()
        if k != "per_frame"
    )
    cut_short = (
        f'<p style="color:#b00"><b>--minutes cut training short ({html.escape(truncated)}): these scores depend on '
        "the machine's speed.</b></p>"
        if truncated
        else ""
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vpt quickstart</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{padding:2px 12px}} img{{image-rendering:pixelated}}</style></head>
<body><h1>vpt quickstart: RIVER on the built-in shapes</h1>{cut_short}
<table>{table}</table>
<h2>Per predicted frame (mean over test clips)</h2>
<p><img src="report/per_frame.png" alt="PSNR, SSIM and position error per predicted frame"></p>
<h2>Test clips: context | truth | prediction</h2>
<p>Red borders mark the {num_context} context frames the model was given; the rest is predicted.</p>
<table>{"".join(rows)}</table></body></html>
"""
    atomic_write_text(out / "report.html", page)


def _print_table(metrics: dict[str, Any]) -> None:
    from rich.table import Table

    from vpt.console import console

    table = Table(
        title=f"test clips: {metrics['context_frames']} context -> {metrics['predicted_frames']} predicted frames"
    )
    table.add_column("prediction")
    table.add_column("PSNR (dB)", justify="right")
    table.add_column("SSIM", justify="right")
    table.add_column("position error (px)", justify="right")
    table.add_column("object kept", justify="right")

    def spread(name: str, digits: int) -> str:  # mean ± standard deviation over test clips
        return f"{metrics[name]:.{digits}f} ± {metrics[name + '_clip_std']:.{digits}f}"

    for label, prefix, kept in (
        (f"RIVER (step {metrics['river_step']})", "", f"{metrics['object_kept']:.0%}"),
        ("copy last frame", "baseline_", "100%"),
    ):
        table.add_row(
            label,
            spread(f"{prefix}psnr", 2),
            spread(f"{prefix}ssim", 3),
            spread(f"{prefix}position_error", 2),
            kept,
        )
    by_motion = ", ".join(f"{motion} {m['object_kept']:.0%}" for motion, m in metrics["by_motion"].items())
    table.caption = f"mean ± standard deviation over test clips; object kept by motion: {by_motion}"
    console.print(table)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _training_precision(cfg) -> str:
    from vpt.training.loop import mixed_precision

    precision = mixed_precision(cfg.train)
    return "fp32" if precision == "no" else precision
