"""RSVP-M against RIVER on the built-in shapes data (32 px, 16-frame videos) at an equal wall-clock budget.

Both predict 14 frames from 2 context frames of each test video; the scores are the quickstart's (PSNR,
SSIM, the object's position error and kept fraction), next to copying the last context frame. RSVP-M's
budget includes its MOSO autoencoder and the token caching: the autoencoder gets `--ae-share` of
`--minutes`, the denoiser what is left. Runs that already have checkpoints are only scored, so a run
trained earlier (or by another call of this script) joins the table with `--score NAME=RUN`.

    python benchmarks/shapes_compare.py --out cmp --train-river cmp/river --minutes 14
    python benchmarks/shapes_compare.py --out cmp --train-rsvp cmp/rsvp --minutes 14
    python benchmarks/shapes_compare.py --out cmp --score river=cmp/river --score rsvp=cmp/rsvp/rsvp

Equal wall clock is only equal compute on an equally busy machine: run the trainings side by side (as
above, two processes) or note the load. PVDM is not in the table: its context is a whole 16-frame clip,
so it cannot predict 14 frames from 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import machine, make_shapes_h5  # noqa: E402

SIZE, FRAMES, CONTEXT = 32, 16, 2
SHOWN = ("psnr", "baseline_psnr", "ssim", "baseline_ssim", "position_error", "baseline_position_error", "object_kept")


def trained(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "latest").exists()


def train(backend_cls, run_dir: Path, config: Path, overrides: list[str]) -> None:
    from vpt.commands.train import train_backend, train_schema
    from vpt.runs import start_run

    run, cfg = start_run(train_schema(backend_cls), run_dir=run_dir, config_file=config, overrides=overrides)
    train_backend(backend_cls, cfg, run)


def train_ae(run_dir: Path, data: Path, config: Path, overrides: list[str]) -> None:
    """`vpt train-ae` on the frames in `data` with `config` and `overrides`."""
    from vpt.commands.options import path_setting
    from vpt.commands.train_ae import train_ae_schema, train_autoencoder
    from vpt.runs import start_run

    run, cfg = start_run(
        train_ae_schema(), run_dir=run_dir, config_file=config, overrides=[path_setting("data.path", data), *overrides]
    )
    train_autoencoder(cfg, run)


def budget(minutes: float) -> list[str]:
    """Wall clock decides: a step count no run reaches, no periodic sampling or validation of the denoiser."""
    return [f"train.max_minutes={minutes}", "train.max_steps=1000000", "train.sample_every=0", "train.val_every=0"]


def train_river(run_dir: Path, data: Path, minutes: float) -> None:
    """RIVER on 4x4 pixel patches (48 channels at 8x8), the same 32 px frames, as configs/river/shapes.yaml."""
    from vpt.commands.options import path_setting
    from vpt.models.river import River

    pixels = [
        "model.autoencoder=pixels:4",
        "model.latent_channels=48",
        "model.context_frames=2",
        "data.image_size=32",
        "data.frames=8",
        "eval.context_frames=2",
        "eval.predicted_frames=14",
    ]
    train(
        River, run_dir, ROOT / "configs/river/shapes.yaml", [path_setting("data.path", data), *pixels, *budget(minutes)]
    )


def train_rsvp(run_dir: Path, data: Path, minutes: float, ae_share: float, given_frames: int = CONTEXT) -> Path:
    """MOSO autoencoder -> cached tokens -> RSVP-M with the first `given_frames` of 16 frames given, all
    inside `minutes`."""
    from vpt.commands.options import path_setting
    from vpt.commands.save_latents import encode_dataset
    from vpt.models.rsvp import RSVPM

    started = time.perf_counter()
    ae_dir, latents, model_dir = run_dir / "moso", run_dir / "latents", run_dir / "rsvp"
    train_ae(
        ae_dir,
        data,
        ROOT / "configs/ae/moso_shapes.yaml",
        [f"train.max_minutes={ae_share * minutes}", "train.max_steps=1000000"],
    )
    encode_dataset(ae_dir, data, latents)
    left = minutes - (time.perf_counter() - started) / 60
    train(
        RSVPM,
        model_dir,
        ROOT / "configs/pvdm/rsvp_m_shapes.yaml",
        [
            path_setting("data.path", latents),
            path_setting("model.autoencoder", ae_dir),
            f"model.given_frames={given_frames}",
            "data.frames=1",  # a cached video is one row of tokens
            f"eval.context_frames={given_frames}",
            f"eval.predicted_frames={FRAMES - given_frames}",
            *budget(left),
        ],
    )
    return model_dir


def score(run_dir: Path, data: Path, out: Path) -> dict:
    """The quickstart's evaluation at 32 px: 14 frames from 2, scored against copy-last (HTML report in out)."""
    import vpt.commands.quickstart as quickstart

    quickstart.IMAGE_SIZE, quickstart.VIDEO_FRAMES, quickstart.MISSING_ERROR = SIZE, FRAMES, SIZE / 2
    cfg = types.SimpleNamespace(
        eval=types.SimpleNamespace(context_frames=CONTEXT), model=types.SimpleNamespace(context_frames=CONTEXT)
    )
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    scores = quickstart._evaluate(run_dir, data, cfg, out, "")
    scores["eval_seconds"] = round(time.perf_counter() - begin, 1)
    scores.update(training_record(run_dir))
    return scores


def logged(run_dir: Path) -> tuple[int, float]:
    """Checkpointed step and training minutes of one run: metrics.jsonl's logged intervals, the steps after
    the last log line at the last logged rate."""
    from vpt.runs import Run

    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    minutes, previous, rate = 0.0, 0, None
    for row in (row for row in rows if row.get("steps_per_s")):
        minutes += (row["step"] - previous) / row["steps_per_s"] / 60
        previous, rate = row["step"], row["steps_per_s"]
    step = Run(run_dir).latest_step()
    if rate:
        minutes += (step - previous) / rate / 60
    return step, round(minutes, 2)


def training_record(run_dir: Path) -> dict:
    """A run's steps and minutes; an RSVP-M run's minutes include its autoencoder's (the `moso` next to it)."""
    step, minutes = logged(run_dir)
    record = {"step": step, "train_minutes_logged": minutes}
    if (run_dir.parent / "moso").is_dir():
        ae_step, ae_minutes = logged(run_dir.parent / "moso")
        record.update(
            ae_step=ae_step, ae_minutes_logged=ae_minutes, train_minutes_logged=round(minutes + ae_minutes, 2)
        )
    return record


def table(results: dict[str, dict]) -> str:
    head = f"{'run':<10}{'step':>8}{'min':>7}" + "".join(f"{name[:14]:>15}" for name in SHOWN)
    lines = [head] + [
        f"{name:<10}{r['step']:>8}{r['train_minutes_logged']:>7.1f}" + "".join(f"{r[key]:>15.3f}" for key in SHOWN)
        for name, r in results.items()
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for data/, reports and results.json.")
    parser.add_argument(
        "--data", type=Path, help="HDF5 folder ROOT/h5 with ROOT/shapes/positions.json (default: made in OUT/data)."
    )
    parser.add_argument("--num-videos", type=int, default=200, help="Shapes videos to make when --data is not given.")
    parser.add_argument("--minutes", type=float, default=14.0, help="Wall-clock training budget of each trained run.")
    parser.add_argument("--ae-share", type=float, default=0.3, help="Part of RSVP-M's budget for the MOSO autoencoder.")
    parser.add_argument("--train-river", type=Path, help="RIVER run folder: trained when it has no checkpoint, scored.")
    parser.add_argument("--train-rsvp", type=Path, help="Folder for moso/, latents/, rsvp/: trained when new, scored.")
    parser.add_argument("--score", action="append", default=[], metavar="NAME=RUN", help="Score an existing run.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    data = args.data or make_shapes_h5(args.out / "data", args.num_videos, frames=FRAMES, size=SIZE)
    runs = dict(item.split("=", 1) for item in args.score)
    if args.train_river:
        if not trained(args.train_river):
            train_river(args.train_river, data, args.minutes)
        runs["river"] = args.train_river
    if args.train_rsvp:
        model_dir = args.train_rsvp / "rsvp"
        if not trained(model_dir):
            train_rsvp(args.train_rsvp, data, args.minutes, args.ae_share)
        runs["rsvp-m"] = model_dir
    results = {name: score(Path(run), data, args.out / "reports" / name) for name, run in runs.items()}
    record = {"machine": machine(), "load_average": os.getloadavg(), "data": str(data), "runs": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_{'_'.join(results)}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(machine())
    print(table(results))


if __name__ == "__main__":
    main()
