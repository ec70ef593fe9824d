"""Why does a RIVER rollout lose the object? Sampling-side measurements on a finished `vpt quickstart` folder.

    python benchmarks/quickstart_ablation.py quickstart                        # the default set below
    python benchmarks/quickstart_ablation.py quickstart --run quickstart/runs/other \\
        autoencoder teacher-forced sampler=heun,steps=5 sampler=euler,steps=10 past_horizon=2

Each variant predicts the 50 test clips (2 -> 14 frames) and prints the quickstart's scores (position
error, object kept, PSNR) overall, per predicted frame and per motion:

- `autoencoder`: the true frames encoded and decoded - what the latent space itself loses;
- `teacher-forced`: every frame predicted from the TRUE earlier latents (one step, no feedback), so
  its gap to a rollout is what feeding predictions back costs;
- `key=value,...`: a rollout with those `predict` options (sampler, steps, past_horizon, warm_start).

Training-side hypotheses (context noise, clip length, steps) are separate `vpt train river --set ...` runs
on the quickstart's latents, each scored here. Results: benchmarks/README.md, "The quickstart".
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from vpt.commands.quickstart import VIDEO_FRAMES, _position_scores, _true_positions
from vpt.data.datasets import frames_to_tensor
from vpt.data.h5 import VideoH5, find_split_dir
from vpt.metrics.frames import psnr
from vpt.models.backend import Backend

CONTEXT, CLIPS = 2, 50
DEFAULT_VARIANTS = ["autoencoder", "teacher-forced", "sampler=heun,steps=5", "sampler=euler,steps=10"]


def parse_options(text: str) -> dict:
    options = {}
    for pair in text.split(","):
        key, _, value = pair.partition("=")
        try:
            options[key] = int(value)
        except ValueError:
            try:
                options[key] = float(value)
            except ValueError:
                options[key] = value
    return options


def predict(model, video: torch.Tensor, variant: str, generator: torch.Generator) -> torch.Tensor:
    """(N, T, 3, H, W) test clips -> (N, T - CONTEXT, 3, H, W) frames under one variant."""
    truth = video[:, CONTEXT:]
    if variant == "autoencoder":
        return model.decode(model.encode(truth))
    if variant == "teacher-forced":
        latents = model.encode(video)  # (N, T, c, h, w)
        steps = [model.rollout(latents[:, :k], 1, generator=generator)[:, 0] for k in range(CONTEXT, video.shape[1])]
        return model.decode(torch.stack(steps, dim=1))
    options = parse_options(variant)
    return torch.cat(
        [model.predict(c, truth.shape[1], generator=generator, **options) for c in video[:, :CONTEXT].split(25)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("quickstart", type=Path, help="a finished `vpt quickstart --out` folder")
    parser.add_argument("variants", nargs="*", default=DEFAULT_VARIANTS)
    parser.add_argument("--run", type=Path, help="RIVER run to score (default: the quickstart's runs/river)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = args.quickstart / "data" / "h5"
    model = Backend.from_run(args.run or args.quickstart / "runs" / "river")
    source = VideoH5(find_split_dir(data, "test"))
    count = min(CLIPS, len(source))
    video = torch.stack([frames_to_tensor(source.read(i)[:VIDEO_FRAMES]) for i in range(count)])  # (N, T, 3, H, W)
    records = _true_positions(data, [source.name(i) for i in range(count)])
    truth = video[:, CONTEXT:]
    unit = lambda frames: ((frames.float() + 1) / 2).clamp(0, 1).flatten(0, 1)  # noqa: E731

    for variant in args.variants:
        began = time.perf_counter()
        with torch.no_grad():
            frames = predict(model, video, variant, torch.Generator().manual_seed(args.seed))
        errors, kept = _position_scores(frames, truth, records, CONTEXT)  # (N, T) each
        quality = np.asarray(psnr(unit(frames), unit(truth)), dtype=np.float64)
        print(
            f"{variant}: position error {errors.mean():.2f} px, object kept {kept.mean():.1%}, PSNR {quality.mean():.2f} dB"
            f" ({time.perf_counter() - began:.0f} s)"
        )
        print("  error per frame:", " ".join(f"{e:.1f}" for e in errors.mean(0)))
        print("  kept per frame: ", " ".join(f"{k:.2f}" for k in kept.mean(0)))
        by_motion = defaultdict(list)
        for i, record in enumerate(records):
            by_motion[record["motion"]].append(i)
        for motion, rows in sorted(by_motion.items()):
            print(
                f"  {motion:6s} ({len(rows):2d} clips): error {errors[rows].mean():5.2f} px, kept {kept[rows].mean():.0%}"
            )


if __name__ == "__main__":
    main()
