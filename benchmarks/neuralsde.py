"""NeuralSDE (f + d + g) vs RIVER on the built-in shapes at equal training steps per network.

    python benchmarks/neuralsde.py                      # 2,000 steps per network
    python benchmarks/neuralsde.py --steps 300          # smoke-sized (a few CPU minutes)

Pipeline: `make-data shapes` (32 px, 16 frames) -> HDF5 -> `save-latents` with a frozen tiny KL-VAE
(default: the autoencoder fixture of the tests, 4 x 8 x 8 latents) -> `vpt train river` and
`vpt train neuralsde` stages f, d, g, every network the same size (width 64, 3 transformer layers),
batch, learning rate and number of steps -> predict the test split from 4 context frames.

Reported per sampler setting: PSNR and SSIM of the predicted frames, the shape's position error (the
distance in pixels between the centroids of predicted and true shapes, `shape_centroid`) and network
evaluations per predicted frame (NeuralSDE: drift evaluations, each also runs d and g; RIVER: velocity
evaluations). NeuralSDE at 1, 2, 4, 10 fixed Euler–Maruyama steps and with upstream's adaptive solver
(needs torchsde); RIVER with Euler at 1, 2, 4, 10 steps and RK4 (3/8 rule) at 10 steps; copy-last.
The paper's claim to test: NeuralSDE at a quarter of RIVER's steps or fewer matches its quality.
Writes results.json and prints a markdown table with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, make_shapes_h5  # noqa: E402

from vpt.cli import main as vpt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NETWORK = "latent_channels: 4, inner_dim: 64, depth: 1, mid_depth: 1, heads: 4, dropout: 0.0"
TRAIN = "train: {max_steps: %d, batch_size: 8, lr: 3.0e-3, warmup_steps: 20, log_every: 100, checkpoint_every: 100000}"
CONTEXT = 4


def run_cli(*args) -> None:
    try:
        vpt([str(a) for a in args])
    except SystemExit as exc:
        if exc.code:
            raise SystemExit(f"vpt {' '.join(map(str, args))} failed ({exc.code})") from None


def prepare_data(out: Path, videos: int, autoencoder: Path) -> tuple[Path, Path]:
    if not (out / "latents").is_dir():
        make_shapes_h5(out, videos, frames=16, size=32)
        run_cli("save-latents", "--ae", autoencoder, "--data", out / "h5", "--out", out / "latents", "--workers", 0)
    return out / "h5", out / "latents"


def train_all(
    out: Path,
    latents: Path,
    steps: int,
    *,
    networks: tuple[str, ...] = ("river", "f", "d", "g"),
    context: int = CONTEXT,
    overrides: tuple[str, ...] = (),
) -> dict[str, float]:
    """Train `networks` of RIVER and the three NeuralSDE stages (g needs f and d), each predicting from
    `context` frames, with `overrides` (`--set` items) on top; seconds per run."""
    model = f"{NETWORK}, context_frames: {context}"
    configs = {
        "river": f"backend: river\nmodel: {{{model}}}\ndata: {{frames: 8}}\n{TRAIN % steps}\n",
        "f": f"backend: neuralsde\nmodel: {{stage: f, {model}}}\ndata: {{frames: 8}}\n{TRAIN % steps}\n",
        "d": f"backend: neuralsde\nmodel: {{stage: d, {model}}}\ndata: {{frames: 8}}\n{TRAIN % steps}\n",
        "g": (
            f"backend: neuralsde\nmodel: {{stage: g, f_run: '{out / 'f'}', d_run: '{out / 'd'}', {model}}}\n"
            f"data: {{frames: 8}}\n{TRAIN % steps}\n"
        ),
    }
    seconds = {}
    for name in networks:
        (out / f"{name}.yaml").write_text(configs[name])
        started = time.perf_counter()
        run_cli(
            "train",
            "neuralsde" if name != "river" else "river",
            "--config",
            out / f"{name}.yaml",
            "--data",
            latents,
            "--run",
            out / name,
            *[item for override in overrides for item in ("--set", override)],
        )
        seconds[name] = time.perf_counter() - started
    return seconds


def score(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """(N, T, 3, H, W) in [-1, 1] -> mean PSNR, SSIM and centroid distance (px) over all frames."""
    from vpt.data.shapes import shape_centroid
    from vpt.metrics.frames import psnr, ssim

    unit = lambda x: ((x.flatten(0, 1).double() + 1) / 2).clamp(0, 1)  # noqa: E731
    errors = [np.linalg.norm(shape_centroid(p) - shape_centroid(t), axis=1) for p, t in zip(predicted, truth)]
    return {
        "psnr": float(psnr(unit(predicted), unit(truth)).mean()),
        "ssim": float(ssim(unit(predicted), unit(truth)).mean()),
        "position_error_px": float(np.nanmean(np.concatenate(errors))),
    }


def evaluate(out: Path, frames_h5: Path) -> list[dict]:
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.models.backend import Backend

    test = ClipDataset(DataConfig(path=str(frames_h5), split="test", frames=16))
    video = torch.stack([test[i]["video"] for i in range(len(test))])  # (N, 16, 3, 32, 32)
    context, truth = video[:, :CONTEXT], video[:, CONTEXT:]
    horizon = truth.shape[1]
    rows = [
        {
            "method": "copy last frame",
            "sampler": "-",
            "evaluations_per_frame": 0,
            **score(video[:, CONTEXT - 1 : CONTEXT].expand_as(truth), truth),
        }
    ]

    def add(method: str, sampler: str, predict, evaluations) -> None:
        started = time.perf_counter()
        predicted = predict()
        rows.append(
            {
                "method": method,
                "sampler": sampler,
                "evaluations_per_frame": evaluations(),
                "seconds": round(time.perf_counter() - started, 2),
                **score(predicted, truth),
            }
        )
        print(rows[-1], flush=True)

    sde = Backend.from_run(out / "g")
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    stats = lambda: sde.sampling_stats["drift_evaluations_per_frame"]  # noqa: E731
    for steps in (1, 2, 4, 10):
        add(
            "NeuralSDE f+d+g",
            f"Euler–Maruyama {steps}",
            lambda: sde.predict(context, horizon, steps=steps, sampler="euler", generator=generator()),
            stats,
        )
    try:
        import torchsde  # noqa: F401
    except ImportError:
        print("torchsde not installed: no adaptive row (pip install torchsde)")
    else:
        add(
            "NeuralSDE f+d+g",
            "adaptive (torchsde)",
            lambda: sde.predict(context, horizon, sampler="adaptive", generator=generator()),
            stats,
        )
    river = Backend.from_run(out / "river")
    for sampler, steps, per_step in [("euler", s, 1) for s in (1, 2, 4, 10)] + [("rk4", 10, 4)]:
        add(
            "RIVER",
            f"{sampler} {steps}",
            lambda: river.predict(context, horizon, steps=steps, sampler=sampler, generator=generator()),
            lambda: steps * per_step,
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| method | sampler | net. evals / frame | PSNR | SSIM | position error (px) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        evals = r["evaluations_per_frame"]
        evals = f"{evals:.1f}" if isinstance(evals, float) and not math.isclose(evals, round(evals)) else f"{evals:g}"
        lines.append(
            f"| {r['method']} | {r['sampler']} | {evals} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
            f"{r['position_error_px']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_neuralsde"))
    parser.add_argument("--steps", type=int, default=2000, help="training steps per network")
    parser.add_argument("--videos", type=int, default=200, help="shapes videos (80%% train, 10%% test)")
    parser.add_argument(
        "--ae",
        type=Path,
        default=ROOT / "tests" / "fixtures" / "neuralsde" / "shapes_ae",
        help="frozen autoencoder (a `vpt train-ae` run) for 32 px frames",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    frames_h5, latents = prepare_data(args.out, args.videos, args.ae)
    seconds = train_all(args.out, latents, args.steps)
    rows = evaluate(args.out, frames_h5)
    result = {
        "machine": machine(),
        "steps_per_network": args.steps,
        "videos": args.videos,
        "train_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{machine()}\nsteps per network: {args.steps}; training seconds: {result['train_seconds']}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
