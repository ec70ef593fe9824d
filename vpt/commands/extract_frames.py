"""`vpt extract-frames`: videos -> frame folders (the input RIVER-style converters expect)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vpt.commands.options import FrameFormat, Resize, ThreadsOption, apply_threads, flag, next_step
from vpt.errors import VptError

SizeOption = Annotated[
    Optional[int], typer.Option("--size", min=1, help="Resize frames to SIZE x SIZE (default: keep the video's size).")
]
ResizeOption = Annotated[
    Resize,
    typer.Option(
        "--resize", help="squash: stretch to SIZE x SIZE as RIVER does; crop: short side to SIZE, centre crop."
    ),
]
FpsOption = Annotated[
    Optional[float], typer.Option("--fps", min=0.01, help="Resample to this frame rate (default: keep every frame).")
]
WorkersOption = Annotated[
    Optional[int], typer.Option("--workers", min=1, help="Decoding processes (default: all cores).")
]
SkipBadOption = Annotated[
    bool,
    flag(
        "--skip-bad/--no-skip-bad",
        "Exit 0 even when some videos could not be read (they are still listed in failed.txt).",
    ),
]
OverwriteOption = Annotated[
    bool,
    flag(
        "--overwrite/--no-overwrite",
        "Redo outputs that an earlier run made with other settings (without it such a rerun is refused; finished work with the same settings is always kept).",
    ),
]
SplitsOption = Annotated[
    Optional[str],
    typer.Option(
        "--splits",
        help="Spread a flat folder over train/val/test with these fractions, e.g. 0.9,0.05,0.05 (deterministic per file name).",
    ),
]


def report(summary, dst: Path, skip_bad: bool, unit: str) -> None:
    """Print the summary; raise (exit 1) when videos failed, unless --skip-bad."""
    from rich.markup import escape

    from vpt.console import console, info, warn

    rate = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    info(
        f"{summary.done} videos {unit} ({summary.frames:,} frames, {rate:,.0f} frames/s), "
        f"{summary.skipped} already done, {len(summary.failed)} failed - {dst}"
    )
    if summary.replaced:
        warn(f"{summary.replaced} outputs made with other settings were replaced (--overwrite)")
    if summary.redone:
        warn(
            f"{summary.redone} of them had an incomplete output folder (an interrupted run or a hand edit) and were {unit} again"
        )
    if summary.failed:
        for name, reason in summary.failed[:10]:
            console.print(f"  [red]failed[/] {escape(name)}: {escape(reason)}", highlight=False)
        if len(summary.failed) > 10:
            console.print(f"  ... and {len(summary.failed) - 10} more", highlight=False)
        if skip_bad:
            warn(f"{len(summary.failed)} videos skipped (--skip-bad); list in {dst / 'failed.txt'}")
        else:
            raise VptError(
                f"{len(summary.failed)} of {summary.total} videos could not be read (listed in {dst / 'failed.txt'}); "
                "fix or remove them, or pass --skip-bad"
            )


def extract_frames(
    video_dir: Annotated[
        Path,
        typer.Option(
            "--video-dir", help="Folder searched recursively for videos (mp4, avi, mkv, webm, mov, mpg, m4v, gif, ...)."
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Output: OUT_DIR/<relative path without extension>/00000.<ext>.")
    ],
    size: SizeOption = None,
    resize: ResizeOption = Resize.squash,
    fps: FpsOption = None,
    ext: Annotated[
        FrameFormat, typer.Option("--ext", help="Frame image format: png (lossless) or jpg (quality 95).")
    ] = FrameFormat.png,
    workers: WorkersOption = None,
    skip_bad: SkipBadOption = False,
    splits: SplitsOption = None,
    overwrite: OverwriteOption = False,
    threads: ThreadsOption = 0,
) -> None:
    """Decode every video into a folder of zero-padded frames; re-running skips finished videos."""
    from vpt.data.extract import extract_frames as run
    from vpt.data.parallel import default_workers
    from vpt.data.sources import SPLITS, parse_splits

    apply_threads(threads)  # before the pool forks: its workers inherit it

    summary = run(
        video_dir,
        out_dir,
        size=size,
        resize=resize.value,
        fps=fps,
        ext=ext.value,
        workers=workers or default_workers(),
        splits=parse_splits(splits),
        overwrite=overwrite,
    )
    report(summary, out_dir, skip_bad, "extracted")
    spread = "" if any((out_dir / split).is_dir() for split in SPLITS) else " --splits 0.9,0.05,0.05"
    next_step(f"vpt convert-h5 --data-dir {out_dir} --out-dir {out_dir}-h5{spread}")
