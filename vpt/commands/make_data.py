"""`vpt make-data`: built-in datasets that need no download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vpt.commands.options import next_step

app = typer.Typer(help="Generate built-in datasets (no downloads).", no_args_is_help=True)


@app.command("shapes")
def shapes(
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: train/ val/ test/ .mp4 files, captions.json, shapes.json.")
    ],
    num_videos: Annotated[
        int, typer.Option("--num-videos", min=1, help="Videos in total, split 80/10/10 into train/val/test.")
    ] = 1000,
    frames: Annotated[int, typer.Option("--frames", min=2, help="Frames per video.")] = 16,
    size: Annotated[int, typer.Option("--size", min=16, help="Frame height and width in pixels.")] = 64,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed gives the same videos and captions.")
    ] = 0,
    fps: Annotated[float, typer.Option("--fps", min=0.1, help="Frame rate stored in the .mp4 files.")] = 8.0,
    workers: Annotated[
        Optional[int], typer.Option("--workers", min=1, help="Processes rendering and encoding (default: all cores).")
    ] = None,
) -> None:
    """Coloured shapes whose caption names their motion ("the red square moves left", "the blue circle falls")."""
    from vpt.console import info
    from vpt.data.shapes import make_shapes, split_counts

    captions = make_shapes(out, num_videos=num_videos, frames=frames, size=size, seed=seed, fps=fps, workers=workers)
    counts = ", ".join(f"{n} {split}" for split, n in split_counts(num_videos).items())
    info(
        f"Wrote {len(captions)} videos ({counts}) of {frames} frames at {size}x{size} to {out}; captions in {out / 'captions.json'}"
    )
    next_step(f"vpt convert-h5 --data-dir {out} --out-dir {out}-h5 --image-size {size}")
