"""`vpt convert-h5`: frame folders or videos -> HDF5 shards (vpt layout, or upstream RIVER's)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vpt.commands.extract_frames import (
    FpsOption,
    OverwriteOption,
    ResizeOption,
    SkipBadOption,
    SplitsOption,
    WorkersOption,
    report,
)
from vpt.commands.options import Compression, Layout, Resize, ThreadsOption, apply_threads, next_step


class Dataset(str, enum.Enum):
    """How `--data-dir` is laid out (`--dataset`)."""

    folders = "folders"  # train/val/test folders (or a flat folder with --splits)
    ucf101 = "ucf101"  # UCF-101/<Class>/*.avi + ucfTrainTestlist/ fold files
    sky = "sky"  # SkyTimelapse: sky_train|sky_test/<video>/<clip>/*.jpg


def convert_h5(
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            help="train/val/test folders of frame folders and/or video files (or a flat folder with --splits).",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Output: OUT_DIR/<split>/shard_0001.hdf5 ...")],
    image_size: Annotated[
        Optional[int],
        typer.Option(
            "--image-size", min=0, help="Resize frames to SIZE x SIZE; 0 keeps the stored size (vpt layout only)."
        ),
    ] = 64,
    resize: ResizeOption = Resize.squash,
    extension: Annotated[
        str,
        typer.Option(
            "--extension", help="Extension of the frame files in frame folders (case-sensitive, as upstream)."
        ),
    ] = "png",
    layout: Annotated[
        Layout,
        typer.Option(
            "--layout",
            help="vpt: one chunked dataset per video (fast); river: upstream RIVER/NeuralSDE layout, one dataset per frame.",
        ),
    ] = Layout.vpt,
    fps: FpsOption = None,
    videos_per_shard: Annotated[
        Optional[int],
        typer.Option(
            "--videos-per-shard",
            min=1,
            help="Videos per shard file; a shard is the unit of resume (default: 1000 for vpt, 100000 for river as upstream).",
        ),
    ] = None,
    compression: Annotated[
        Compression,
        typer.Option("--compression", help="vpt layout frame compression: lzf (fast), gzip (smaller) or none."),
    ] = Compression.lzf,
    workers: WorkersOption = None,
    skip_bad: SkipBadOption = False,
    splits: SplitsOption = None,
    dataset: Annotated[
        Dataset,
        typer.Option(
            "--dataset",
            help="Layout of --data-dir: folders (train/val/test folders); ucf101 (UCF-101/<Class>/*.avi split by ucfTrainTestlist's fold files; caption = class; no val split); sky (SkyTimelapse sky_train/sky_test/<video>/<clip>/*.jpg).",
        ),
    ] = Dataset.folders,
    fold: Annotated[
        int, typer.Option("--fold", help="UCF-101 fold (1, 2 or 3): trainlistNN.txt -> train, testlistNN.txt -> test.")
    ] = 1,
    overwrite: OverwriteOption = False,
    threads: ThreadsOption = 0,
) -> None:
    """Convert videos to HDF5 shards with parallel decoding; an interrupted run resumes at the first unfinished shard."""
    from vpt.data.convert import convert_h5 as run
    from vpt.data.parallel import default_workers
    from vpt.data.sources import parse_splits

    apply_threads(threads)  # before the pool forks: its workers inherit it

    summary = run(
        data_dir,
        out_dir,
        image_size=image_size or None,
        resize=resize.value,
        extension=extension.lstrip("."),
        layout=layout.value,
        fps=fps,
        videos_per_shard=videos_per_shard,
        compression=compression.value,
        workers=workers or default_workers(),
        splits=parse_splits(splits),
        dataset=dataset.value,
        fold=fold,
        overwrite=overwrite,
    )
    report(summary, out_dir, skip_bad, "converted")
    next_step(
        f"vpt train BACKEND --config CONFIG --data {out_dir} (latent backends: vpt train-ae --data {out_dir} first)"
    )
