"""Does the tiny Seer follow instructions? Train it on `vpt make-data shapes`, then ask "moves left" and
"moves right" from the same first frame and measure where the shape goes.

    python benchmarks/seer_instructions.py [--work runs/seer_instructions] [--steps 1500] [--videos 400]

1. `make-data shapes` (32 px, 16 frames; instructions "the red square moves left", "... falls", ...).
2. `vpt train seer --config configs/seer/tiny.yaml` shrunk for a CPU: 16 px, 4-frame clips (1 reference
   + 3 predicted) every 4th source frame, UNet levels 32/32/64. Resumes when run again.
3. 16 first frames with the shape near the middle (every shape and colour mixed); for each, one sample
   per instruction (same seed). A frame pair counts when the shape's centroid in the last predicted
   frame lies left of the first frame for "moves left" and right of it for "moves right".
Target (issue 7): at least 12 of 16. Every kept checkpoint (one per 250 steps) is scored, so the table
shows how many steps the instruction takes to learn.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import run_vpt

from vpt.data.shapes import COLOURS, SHAPES, ShapeClip, render, shape_centroid
from vpt.data.video import resize_frames
from vpt.models.backend import Backend

TINY = Path(__file__).resolve().parents[1] / "configs" / "seer" / "tiny.yaml"
SOURCE_SIZE, SIZE, FRAMES, SKIP = 32, 16, 4, 3
OVERRIDES = [
    f"model.frames={FRAMES}",
    f"data.frames={FRAMES}",
    f"data.frame_skip={SKIP}",
    f"data.image_size={SIZE}",
    "model.unet.block_out_channels=[32,32,64]",
    "train.batch_size=8",
    "train.lr=1e-3",
    "train.checkpoint_every=250",
    "train.keep_last=1000",
    "train.log_every=50",
    "train.sample_every=0",
    "train.val_every=0",
]


def first_frames(count: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """(first frame (1, SIZE, SIZE, 3) uint8, "the <colour> <shape>") with the shape near the centre."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        shape, colour = SHAPES[k % len(SHAPES)], list(COLOURS)[k % len(COLOURS)]
        radius = float(rng.uniform(6.0, 8.0)) * SOURCE_SIZE / 64
        x, y = (float(rng.uniform(0.4, 0.6)) * SOURCE_SIZE for _ in range(2))
        clip = ShapeClip(shape, colour, "left", x, y, 0.0, 0.0, 0.0, radius)
        frames.append((resize_frames(render(clip, 1, SOURCE_SIZE), SIZE), f"the {colour} {shape}"))
    return frames


def evaluate(
    run: Path,
    count: int,
    seed: int,
    guidance_scale: float | None = None,
    checkpoint: Path | None = None,
    pair: tuple[str, str, int] = ("left", "right", 0),
) -> tuple[int, list[tuple[float, float]]]:
    """Successes and (shift for "moves <negative>", for "moves <positive>") per first frame, in source pixels
    of SIZE along the centroid axis of `pair` = (negative direction, positive direction, axis: 0 x, 1 y)."""
    negative, positive, axis = pair
    model = Backend.from_run(run, checkpoint=checkpoint)
    successes, moves = 0, []
    for k, (frame, subject) in enumerate(first_frames(count, seed)):
        context = torch.from_numpy(frame).permute(0, 3, 1, 2).float().div(127.5).sub(1)[None]  # (1, 1, 3, H, W)
        start = shape_centroid(frame)[0, axis]
        shifts = []
        for direction in (negative, positive):
            predicted = model.predict(
                context,
                FRAMES - 1,
                prompt=f"{subject} moves {direction}",
                generator=torch.Generator().manual_seed(seed + k),
                guidance_scale=guidance_scale,
            )
            shifts.append(float(shape_centroid(predicted[0, -1:])[0, axis] - start))
        moves.append((shifts[0], shifts[1]))
        successes += shifts[0] < 0 < shifts[1]  # NaN (no shape found) compares False: a miss
    return successes, moves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/seer_instructions"))
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the model's (tiny.yaml: 2.0)")
    args = parser.parse_args()
    data, run = args.work / "shapes", args.work / "run"
    if not (data / "captions.json").is_file():
        run_vpt(
            ["make-data", "shapes", "--out", str(data), "--num-videos", str(args.videos), "--size", str(SOURCE_SIZE)]
        )
    started = time.perf_counter()
    run_vpt(
        [
            "train",
            "seer",
            "--config",
            str(TINY),
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
        earlier, _ = evaluate(run, args.pairs, args.seed, args.guidance_scale, checkpoint)
        print(f"  {checkpoint.name}: instruction followed in {earlier} of {args.pairs}")
    successes, moves = evaluate(run, args.pairs, args.seed, args.guidance_scale)
    print(f"final step {args.steps}:")
    for k, (left, right) in enumerate(moves):
        print(f"  frame {k:2d}: 'moves left' dx {left:+.2f} px, 'moves right' dx {right:+.2f} px")
    print(
        f"instruction followed (left < 0 < right) in {successes} of {len(moves)} first frames (target >= 12), "
        f"guidance scale {args.guidance_scale or 'of the model'}"
    )


if __name__ == "__main__":
    main()
