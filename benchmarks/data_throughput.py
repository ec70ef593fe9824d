"""Data pipeline throughput: extract-frames, convert-h5 (vpt vs RIVER layout) and the training loader.

    python benchmarks/data_throughput.py [--videos 24] [--frames 32] [--clip-frames 16] [--sizes 64,128,256]
                                         [--workers N] [--seconds 4]

Source: synthetic 256x256 H.264 clips with texture (a panned smooth random field plus noise, so PNG
and LZF have real work to do). For every size S the script times, in frames/s:
  extract-frames   mp4 -> PNG frame folders at S (all workers)
  convert-h5       PNG frame folders -> shards at S: vpt layout (lzf, and uncompressed), RIVER layout (all workers), and two
                   single-process baselines: upstream RIVER's loop (Pillow, img.getdata(), one LZF dataset per
                   frame) and a lean Pillow loop (np.asarray, one dataset per video)
  loader           ClipDataset clips of `--clip-frames` frames, batch 8, DataLoader with `--workers` processes, from the
                   vpt shards, the RIVER shards and the PNG folders; upstream's reader pattern (open the shard
                   file for every item, read frames one by one) single-process; and the ceiling of the DataLoader
                   itself (a dataset returning a constant float32 / uint8 clip: worker -> main shared memory)
Figures are throughput, not start-up: extract-frames and convert-h5 also run on a source of one video
per worker (start-up plus one round of work) and the rate comes from the difference (pool start, file
discovery and progress bar cancel out; the start-up seconds are in the notes); a loader row starts its
clock after its first workers x prefetch + 1 batches (worker start, file opening and the queue filled
meanwhile) and then runs for `--seconds`.
It prints one table and the machine it ran on. Targets (issue 3): convert-h5 >= 3x the single-process
Pillow loop; loader >= 5,000 frames/s of 128x128 clips on 2 cores.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from common import cpu_name, textured_video
from PIL import Image

from vpt.data.convert import convert_h5
from vpt.data.datasets import ClipDataset, DataConfig
from vpt.data.extract import extract_frames
from vpt.data.parallel import default_workers
from vpt.data.sources import discover_videos, frame_files
from vpt.data.video import write_video
from vpt.training.sampler import SampleKey

BATCH = 8


def machine_line() -> str:
    import av
    import decord

    return (
        f"{cpu_name()}, {default_workers()} usable cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}, h5py {h5py.__version__}, PyAV {av.__version__}, "
        f"decord {decord.__version__}"
    )


def timed(fn, out: Path, repeats: int = 2) -> float:
    """Best of `repeats` runs of fn(out) into a fresh folder (shared machines are noisy)."""
    best = float("inf")
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        fn(out)
        best = min(best, time.perf_counter() - start)
    return best


def upstream_loop(frames_root: Path, out: Path, size: int) -> None:
    """RIVER's converter loop re-expressed: Pillow per frame, getdata(), one LZF dataset per frame."""
    for split_dir in sorted(p for p in frames_root.iterdir() if p.is_dir()):
        (out / split_dir.name).mkdir(parents=True)
        with h5py.File(out / split_dir.name / "shard_0001.hdf5", "w") as f:
            f.create_group("len")
            f.create_group("videos")
            for index, video in enumerate(sorted(p for p in split_dir.iterdir() if p.is_dir())):
                images = [Image.open(p).convert("RGB").resize((size, size)) for p in sorted(video.glob("*.png"))]
                seq = [np.array(img.getdata()).reshape(img.size[1], img.size[0], 3) for img in images]
                f["len"].create_dataset(str(index), data=len(seq))
                group = f.create_group(str(index))
                for j, frame in enumerate(seq):
                    group.create_dataset(str(j), data=frame, dtype="uint8", compression="lzf")


def lean_pillow_loop(frames_root: Path, out: Path, size: int) -> None:
    """The same single-process Pillow decode, with np.asarray and one chunked dataset per video."""
    for split_dir in sorted(p for p in frames_root.iterdir() if p.is_dir()):
        (out / split_dir.name).mkdir(parents=True)
        with h5py.File(out / split_dir.name / "shard_0001.hdf5", "w") as f:
            for index, video in enumerate(sorted(p for p in split_dir.iterdir() if p.is_dir())):
                clip = np.stack(
                    [np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in frame_files(video)]
                )
                f.create_dataset(f"videos/{index}", data=clip, chunks=(1, size, size, 3), compression="lzf")


class _Constant(torch.utils.data.Dataset):
    """Returns the same clip every time: what the DataLoader itself can move between processes."""

    def __init__(self, frames: int, size: int, dtype: torch.dtype):
        self.clip = torch.zeros(frames, 3, size, size, dtype=dtype)

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, key):
        return {"video": self.clip.clone(), "index": 0}


def loader_rate(
    path: Path | None, clip_frames: int, workers: int, seconds: float, dataset=None, uint8: bool = False
) -> float:
    """Frames/s the training loop receives, including the dataset's `on_device` float conversion."""
    dataset = dataset or ClipDataset(DataConfig(path=str(path), frames=clip_frames), uint8_frames=uint8)
    on_device = getattr(dataset, "on_device", lambda batch: batch)
    keys = [SampleKey(i % len(dataset), i) for i in range(10**6)]
    prefetch = 4
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        sampler=keys,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers else None,
    )
    batches = iter(loader)
    for _ in range(workers * prefetch + 1):  # worker start and file opening, and the queue they filled meanwhile
        next(batches)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += on_device(next(batches))["video"].shape[0]
    return count * clip_frames / (time.perf_counter() - start)


def rate_past_startup(
    run, full: Path, small: Path, out: Path, frames_full: int, frames_small: int
) -> tuple[float, float]:
    """(frames/s, start-up s) of `run(source, out)`, timed on the full source and on a small one (one video per
    worker): the difference is the other videos' work alone. nan when the two cannot be told apart.
    The small run's output goes next to `out`, named `<out>-small`."""
    t_full = timed(lambda dst: run(full, dst), out)
    t_small = timed(lambda dst: run(small, dst), out.with_name(out.name + "-small"))
    if t_full <= t_small:
        return float("nan"), t_small
    per_frame = (t_full - t_small) / (frames_full - frames_small)
    return 1 / per_frame, max(0.0, t_small - frames_small * per_frame)


def upstream_reader_rate(path: Path, clip_frames: int, seconds: float) -> float:
    """Upstream's HDF5Dataset pattern: open the shard for every item, read each frame dataset separately."""
    shard = path / "shard_0001.hdf5"
    with h5py.File(shard, "r") as f:
        lengths = [int(f["len"][str(i)][()]) for i in range(len(f["len"]))]
    rng = np.random.default_rng(0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        index = int(rng.integers(len(lengths)))
        first = int(rng.integers(0, lengths[index] - clip_frames + 1))  # a clip may end on the last frame
        with h5py.File(shard, "r") as f:
            clip = np.stack([f[str(index)][str(j)][()] for j in range(first, first + clip_frames)])
        video = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1
        count += len(video)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=24, help="source clips (train split; 2 more go to val and test)")
    parser.add_argument("--frames", type=int, default=32, help="frames per source clip")
    parser.add_argument("--clip-frames", type=int, default=16, help="frames per loader clip (at most --frames)")
    parser.add_argument("--sizes", default="64,128,256", help="comma-separated output sizes")
    parser.add_argument("--workers", type=int, default=default_workers(), help="processes for the vpt paths")
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per loader row")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to put the data (default: a temp dir, removed)"
    )
    args = parser.parse_args()
    if not 1 <= args.clip_frames <= args.frames:
        parser.error(
            f"--frames ({args.frames}) must be at least --clip-frames ({args.clip_frames}): the loader cuts clips from them"
        )
    if args.videos <= args.workers:
        parser.error(
            f"--videos ({args.videos}) must exceed --workers ({args.workers}): throughput is measured "
            "past a run of one video per worker"
        )
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vpt-bench-"))
    sizes = [int(s) for s in args.sizes.split(",")]
    try:
        src, small = work / "videos", work / "one-per-worker"
        for offset, (split, count) in enumerate((("train", args.videos), ("val", 1), ("test", 1))):
            for k in range(count):
                write_video(
                    src / split / f"{k:04d}.mp4", textured_video(args.frames, 256, 1000 * offset + k), 25, crf=18
                )
        shutil.copytree(src / "train", small / "train", ignore=lambda _, names: sorted(names)[args.workers :])
        total = sum(1 for _ in discover_videos(src)) * args.frames
        rows: list[tuple[str, int, float, str]] = []
        for size in sizes:
            frames_dir, frames_small = (
                work / f"frames{size}",
                work / f"frames{size}-small",
            )  # the second: extract's small run

            def stage(run, source: Path, source_small: Path, out: Path) -> tuple[float, str]:
                rate, startup = rate_past_startup(run, source, source_small, out, total, args.workers * args.frames)
                return rate, f"{args.workers} workers, start-up {startup:.2f} s excluded"

            extract, extract_note = stage(
                lambda s, out: extract_frames(s, out, size=size, workers=args.workers), src, small, frames_dir
            )
            rows.append(("extract-frames mp4 -> png", size, extract, extract_note))
            vpt, vpt_note = stage(
                lambda s, out: convert_h5(s, out, image_size=size, workers=args.workers),
                frames_dir,
                frames_small,
                work / f"vpt{size}",
            )
            raw, raw_note = stage(
                lambda s, out: convert_h5(s, out, image_size=size, workers=args.workers, compression="none"),
                frames_dir,
                frames_small,
                work / f"raw{size}",
            )
            river, river_note = stage(
                lambda s, out: convert_h5(s, out, image_size=size, layout="river", workers=args.workers),
                frames_dir,
                frames_small,
                work / f"river{size}",
            )
            upstream = total / timed(lambda out: upstream_loop(frames_dir, out, size), work / f"upstream{size}")
            lean = total / timed(lambda out: lean_pillow_loop(frames_dir, out, size), work / f"lean{size}")
            rows += [
                (
                    "convert-h5 png -> vpt layout (lzf)",
                    size,
                    vpt,
                    f"{vpt / lean:.1f}x Pillow loop, {vpt / upstream:.1f}x upstream loop; {vpt_note}",
                ),
                (
                    "convert-h5 png -> vpt layout (no compression)",
                    size,
                    raw,
                    f"{raw / lean:.1f}x Pillow loop, {raw / upstream:.1f}x upstream loop; {raw_note}",
                ),
                ("convert-h5 png -> river layout", size, river, f"{river / upstream:.1f}x upstream loop; {river_note}"),
                ("  baseline: upstream RIVER loop (1 process)", size, upstream, "getdata(), dataset per frame"),
                ("  baseline: Pillow loop (1 process)", size, lean, "np.asarray, lzf dataset per video"),
            ]
            note = f"{args.clip_frames}-frame clips, batch {BATCH}, {args.workers} workers"
            for name, path in (
                ("vpt shards", work / f"vpt{size}"),
                ("river shards", work / f"river{size}"),
                ("png folders", frames_dir),
            ):
                rows.append(
                    (f"loader {name}", size, loader_rate(path, args.clip_frames, args.workers, args.seconds), note)
                )
                rows.append(
                    (
                        f"loader {name}, uint8 + on_device",
                        size,
                        loader_rate(path, args.clip_frames, args.workers, args.seconds, uint8=True),
                        note + " (training path)",
                    )
                )
            rows.append(
                (
                    "  baseline: upstream reader (1 process)",
                    size,
                    upstream_reader_rate(work / f"river{size}" / "train", args.clip_frames, args.seconds),
                    "open file per item",
                )
            )
            for dtype in (torch.float32, torch.uint8):
                rows.append(
                    (
                        f"  ceiling: DataLoader moving {str(dtype)[6:]} clips",
                        size,
                        loader_rate(
                            None, args.clip_frames, args.workers, args.seconds, _Constant(args.clip_frames, size, dtype)
                        ),
                        "constant clip, no I/O",
                    )
                )
        print(f"\nmachine: {machine_line()}")
        print(f"source: {args.videos + 2} clips x {args.frames} frames, 256x256 H.264\n")
        print(f"| {'stage':<46} | {'size':>4} | {'frames/s':>9} | notes")
        print(f"|{'-' * 48}|{'-' * 6}|{'-' * 11}|{'-' * 50}")
        for name, size, rate, note in rows:
            print(f"| {name:<46} | {size:>4} | {rate:>9,.0f} | {note}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
