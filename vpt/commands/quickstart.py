"""`vpt quickstart`: the whole path on a CPU in minutes, with no downloads.

make-data shapes -> convert-h5 -> train-ae -> save-latents -> train river -> predict the test clips ->
PSNR/SSIM next to copying the last context frame -> an HTML report with GIFs. Every stage writes into
`--out` and skips or resumes what an earlier call finished: running it again continues training RIVER
(the autoencoder is frozen once its latents are cached). The time budget is split between the two
training stages by wall clock (`train.max_minutes`): the autoencoder gets a fixed share, RIVER whatever
is left after a reserve for the evaluation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

AE_SHARE, EVAL_SHARE = 0.35, 0.12  # of --minutes; RIVER trains until only the evaluation share is left
NUM_VIDEOS, VIDEO_FRAMES, IMAGE_SIZE = 500, 16, 64
EVAL_CLIPS, REPORT_CLIPS = 50, 8


def quickstart(
    out: Annotated[Path, typer.Option("--out", help="Working folder: data/, runs/ae, runs/river, report.html, metrics.json.")] = Path("quickstart"),
    minutes: Annotated[float, typer.Option("--minutes", help="Time budget: 35% trains the autoencoder, RIVER trains until 12% is left for the evaluation.", min=0.2)] = 10.0,
    num_videos: Annotated[int, typer.Option("--num-videos", help="Built-in shapes videos to make (80/10/10 train/val/test).", min=20)] = NUM_VIDEOS,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for torch; 0 = torch's default (all cores). On a busy machine 1 is often faster.", min=0)] = 0,
) -> None:
    """Make data, train a small autoencoder and RIVER on it, and score predictions against a baseline."""
    import torch

    from vpt.console import info, warn

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str, fn, *args, **kwargs):
        begin = time.perf_counter()
        info(f"[bold]quickstart[/]: {name}")
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - begin, 1)
        return result

    frames_h5 = stage("data", _make_data, out / "data", num_videos)
    latents = out / "data" / "latents"
    if _latents_started(latents):  # the autoencoder is frozen once RIVER's latents come from it
        ae_run = out / "runs" / "ae"
        info(f"quickstart: autoencoder {ae_run} kept as is (its latents are in {latents})")
    else:
        ae_run = stage("autoencoder", _train_autoencoder, out, frames_h5, AE_SHARE * minutes)
    stage("latents", _save_latents, ae_run, frames_h5, latents)
    river_minutes = max(0.1 * minutes, (1 - EVAL_SHARE) * minutes - (time.perf_counter() - started) / 60)
    river_run, cfg = stage("river", _train_river, out, latents, ae_run, river_minutes)
    metrics = stage("evaluation", _evaluate, river_run, frames_h5, cfg, out)

    metrics.update({"minutes": round((time.perf_counter() - started) / 60, 2), "stage_seconds": timings,
                    "ae_run": str(ae_run), "river_run": str(river_run)})
    from vpt.fsutil import atomic_write_text

    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    _print_table(metrics)
    if metrics["beats_baseline"]:
        info(f"RIVER beats copying the last frame by {metrics['psnr'] - metrics['baseline_psnr']:.2f} dB PSNR. "
             f"Report: {out / 'report.html'}")
    else:
        warn(f"RIVER did NOT beat copying the last frame (PSNR {metrics['psnr']:.2f} vs {metrics['baseline_psnr']:.2f} dB): "
             f"it needs more training. `vpt quickstart --out {out} --minutes {minutes:g}` continues RIVER's run.")
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


def _train_autoencoder(out: Path, data: Path, minutes: float) -> Path:
    from vpt.commands.options import path_setting
    from vpt.commands.train_ae import _schema, train_autoencoder
    from vpt.training import start_run

    run_dir = out / "runs" / "ae"
    overrides = [path_setting("data.path", data), f"train.max_minutes={minutes}",
                 *_quiet_overrides()]
    run, cfg = start_run(_schema(), run_dir=run_dir, config_file=_config_file("ae", "quickstart.yaml"), overrides=overrides)
    train_autoencoder(cfg, run)
    return run_dir


def _latents_started(latents: Path) -> bool:
    from vpt.commands.save_latents import MANIFEST

    return (latents / MANIFEST).is_file()


def _save_latents(ae_run: Path, data: Path, out: Path) -> Path:
    from vpt.commands.save_latents import encode_dataset

    encode_dataset(ae_run, data, out)
    return out


def _train_river(out: Path, latents: Path, ae_run: Path, minutes: float):
    from vpt.commands.options import path_setting
    from vpt.commands.train import train_backend, train_schema
    from vpt.models.river import River
    from vpt.training import start_run

    run_dir = out / "runs" / "river"
    overrides = [path_setting("data.path", latents), path_setting("model.autoencoder", ae_run),
                 f"train.max_minutes={minutes}", *_quiet_overrides()]
    run, cfg = start_run(train_schema(River), run_dir=run_dir, config_file=_config_file("river", "shapes.yaml"),
                         overrides=overrides)
    train_backend(River, cfg, run)
    return run_dir, cfg


def _quiet_overrides() -> list[str]:
    """No periodic sampling during the quickstart: the report at the end shows predictions."""
    return ["train.sample_every=0"]


def _evaluate(river_run: Path, data: Path, cfg: Any, out: Path) -> dict[str, Any]:
    """Predict every whole test video from its first frames (a rollout twice the training clip length);
    PSNR/SSIM over the predicted frames vs copying the last context frame."""
    import torch

    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.metrics.frames import psnr, ssim
    from vpt.models.backend import Backend

    model = Backend.from_run(river_run)
    test = ClipDataset(DataConfig(path=str(data), split="test", frames=VIDEO_FRAMES, image_size=cfg.data.image_size))
    video = torch.stack([test[i]["video"] for i in range(min(EVAL_CLIPS, len(test)))])  # (N, T, 3, H, W), from frame 0
    num_context = cfg.model.context_frames
    truth = video[:, num_context:]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        predicted = torch.cat([model.predict(chunk, truth.shape[1], generator=generator)
                               for chunk in video[:, :num_context].split(25)])
    baseline = video[:, num_context - 1:num_context].expand_as(truth)

    def unit(frames):  # (N, T, 3, H, W) in [-1, 1] -> (N*T, 3, H, W) in [0, 1]
        return ((frames.flatten(0, 1).float() + 1) / 2).clamp(0, 1)

    scores = {
        "psnr": float(psnr(unit(predicted), unit(truth)).mean()), "ssim": float(ssim(unit(predicted), unit(truth)).mean()),
        "baseline_psnr": float(psnr(unit(baseline), unit(truth)).mean()),
        "baseline_ssim": float(ssim(unit(baseline), unit(truth)).mean()),
    }
    scores["beats_baseline"] = scores["psnr"] > scores["baseline_psnr"]
    scores.update({"test_clips": len(video), "context_frames": num_context, "predicted_frames": truth.shape[1],
                   "river_step": _step(river_run), "baseline": "copy the last context frame",
                   "metric_protocol": "mean over test clips and predicted frames; frames in [0, 1]; "
                                      "SSIM 11x11 Gaussian (sigma 1.5)"})
    _write_report(out, video, predicted, num_context, scores)
    return scores


def _step(run_dir: Path) -> int:
    from vpt.runs import Run

    return Run(run_dir).latest_step()


# --- report -------------------------------------------------------------------------------------------


def _write_report(out: Path, video, predicted, num_context: int, scores: dict[str, Any]) -> None:
    """report.html: the scores, then per clip a GIF of context | truth | prediction (context marked red)."""
    import html

    import torch

    from vpt.data.video import to_uint8_frames, write_video
    from vpt.fsutil import atomic_write_text
    from vpt.visualize import side_by_side

    gifs = out / "report"
    gifs.mkdir(exist_ok=True)
    rows = []
    for i in range(min(REPORT_CLIPS, len(video))):
        context = to_uint8_frames(video[i, :num_context])
        truth = to_uint8_frames(video[i])
        prediction = to_uint8_frames(torch.cat([video[i, :num_context], predicted[i].float()]))
        write_video(gifs / f"clip_{i:02d}.gif", side_by_side([context, truth, prediction], num_context), fps=4)
        rows.append(f'<tr><td>{i}</td><td><img src="report/clip_{i:02d}.gif" width="{3 * 160}"></td></tr>')
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" if isinstance(v, float)
                    else f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in scores.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vpt quickstart</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{padding:2px 12px}} img{{image-rendering:pixelated}}</style></head>
<body><h1>vpt quickstart: RIVER on the built-in shapes</h1>
<table>{table}</table>
<h2>Test clips: context | truth | prediction</h2>
<p>Red borders mark the {num_context} context frames the model was given; the rest is predicted.</p>
<table>{''.join(rows)}</table></body></html>
"""
    atomic_write_text(out / "report.html", page)


def _print_table(metrics: dict[str, Any]) -> None:
    from rich.table import Table

    from vpt.console import console

    table = Table(title=f"test clips: {metrics['context_frames']} context -> {metrics['predicted_frames']} predicted frames")
    table.add_column("prediction")
    table.add_column("PSNR (dB)", justify="right")
    table.add_column("SSIM", justify="right")
    table.add_row(f"RIVER (step {metrics['river_step']})", f"{metrics['psnr']:.2f}", f"{metrics['ssim']:.3f}")
    table.add_row("copy last frame", f"{metrics['baseline_psnr']:.2f}", f"{metrics['baseline_ssim']:.3f}")
    console.print(table)
