"""Does a tiny class-conditional Latte generate the motion it is asked for? Train configs/latte/shapes.yaml
(class = the motion word of each caption) on `vpt make-data shapes`, then generate "left" and "right"
clips from the same noise and measure where the shape goes.

    python benchmarks/latte_classes.py [--work runs/latte_classes] [--steps 1500] [--videos 400]

1. `make-data shapes` at 32 px (16 frames; captions "the red square moves left", "... falls", ...).
2. `vpt train latte --config configs/latte/shapes.yaml` shrunk for a CPU: no autoencoder (`pixels:4`:
   4 x 4 pixel patches, 48 x 8 x 8 "latents", DiT patch 1), 8-frame clips every 2nd source frame.
   Resumes when run again.
3. 16 noise seeds; for each, one generated clip of class "left" and one of class "right" (same noise,
   guidance `--guidance-scale`). A pair counts when the shape's centroid moves left (last frame minus
   first) in the "left" clip and right in the "right" clip. The same for "up"/"down" (vertical centroid)
   is printed beside it. Target (issue 15): at least 12 of 16 left/right pairs.
Every kept checkpoint (one per 500 steps) is scored, so the table shows how the conditioning is learnt.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import run_vpt

from vpt.data.shapes import shape_centroid
from vpt.models.backend import Backend

SHAPES_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "latte" / "shapes.yaml"
SIZE, FRAMES, SKIP = 32, 8, 1
OVERRIDES = [
    "model.autoencoder=pixels:4",
    "model.latent_channels=48",
    "model.patch_size=1",
    f"model.num_frames={FRAMES}",
    f"data.frames={FRAMES}",
    f"data.frame_skip={SKIP}",
    f"data.image_size={SIZE}",
    "train.checkpoint_every=500",
    "train.keep_last=1000",
    "train.log_every=50",
    "train.sample_every=0",
    "train.val_every=0",
]
PAIRS = {"horizontal": ("left", "right", 0), "vertical": ("up", "down", 1)}  # (negative, positive, centroid axis)


def displacement(
    model, motion: str, seed: int, guidance_scale: float | None, axis: int, size: int = SIZE, frames: int = FRAMES
) -> float:
    """Centroid shift (last frame minus first, px) along `axis` of one generated clip of class `motion`."""
    empty = torch.zeros(1, 0, 3, size, size)  # no context: generation
    clip = model.predict(
        empty, frames, class_labels=motion, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed)
    )  # (1, frames, 3, size, size)
    centroids = shape_centroid(clip[0])  # (FRAMES, 2), NaN where no shape is visible
    return float(centroids[-1, axis] - centroids[0, axis])


def evaluate(
    run: Path,
    count: int,
    seed: int,
    guidance_scale: float | None,
    checkpoint: Path | None = None,
    size: int = SIZE,
    frames: int = FRAMES,
) -> dict[str, tuple[int, list[tuple[float, float]]]]:
    """Per pair of opposite classes: successes and (shift of the negative class, of the positive) per seed,
    generating clips of `frames` frames at `size` px."""
    model = Backend.from_run(run, checkpoint=checkpoint)
    results = {}
    for name, (negative, positive, axis) in PAIRS.items():
        shifts = [
            (
                displacement(model, negative, seed + k, guidance_scale, axis, size, frames),
                displacement(model, positive, seed + k, guidance_scale, axis, size, frames),
            )
            for k in range(count)
        ]
        results[name] = (sum(low < 0 < high for low, high in shifts), shifts)  # NaN compares False: a miss
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/latte_classes"))
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance of the samples")
    args = parser.parse_args()
    data, run = args.work / "shapes", args.work / "run"
    if not (data / "captions.json").is_file():
        run_vpt(["make-data", "shapes", "--out", str(data), "--num-videos", str(args.videos), "--size", str(SIZE)])
    started = time.perf_counter()
    run_vpt(
        [
            "train",
            "latte",
            "--config",
            str(SHAPES_CONFIG),
            "--data",
            str(data),
            "--run",
            str(run),
            "--max-steps",
            str(args.steps),
            *[item for override in OVERRIDES for item in ("--set", override)],
        ]
    )
    trained = time.perf_counter() - started
    print(f"trained {args.steps} steps ({trained / 60:.1f} min this call), torch threads {torch.get_num_threads()}")
    for checkpoint in sorted((run / "checkpoints").glob("step_*"))[:-1]:
        earlier = evaluate(run, args.pairs, args.seed, args.guidance_scale, checkpoint)
        print(
            f"  {checkpoint.name}: "
            + ", ".join(f"{name} {hits} of {args.pairs}" for name, (hits, _) in earlier.items())
        )
    results = evaluate(run, args.pairs, args.seed, args.guidance_scale)
    print(f"final step {args.steps}, guidance scale {args.guidance_scale}:")
    for k, ((left, right), (up, down)) in enumerate(zip(results["horizontal"][1], results["vertical"][1])):
        print(
            f"  seed {args.seed + k:4d}: left dx {left:+6.2f}, right dx {right:+6.2f}; up dy {up:+6.2f}, down dy {down:+6.2f} px"
        )
    print(
        f"class direction followed: left/right {results['horizontal'][0]} of {args.pairs} (target >= 12), "
        f"up/down {results['vertical'][0]} of {args.pairs}"
    )


if __name__ == "__main__":
    main()
