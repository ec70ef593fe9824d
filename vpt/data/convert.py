"""`vpt convert-h5`: a train/val/test tree of frame folders or video files (or UCF-101 / SkyTimelapse as
released) -> HDF5 shards per split.

Worker processes decode and resize whole videos; the main process appends them, in source order,
to the shard being written. Shards are the unit of resume: each is written to a hidden temp file
and renamed when complete, and `DST/.vpt-convert.json` records the settings (a resumed run must use
the same ones, or shard boundaries would move) and, per finished shard, its size, video count and
which of its videos failed. A resumed run re-checks every finished shard against that record and
converts a damaged one (truncated, unreadable) again. The settings include everything the shards
hold besides the frames' source: the options, the videos per split, `--splits`, and a digest of the
captions, so a rerun after adding `captions.json` or with another `--image-size` is refused (or,
with `overwrite`, converted again from scratch) instead of keeping shards that no longer match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpt.console import warn
from vpt.data.extract import RunSummary, shown_setting, write_failures
from vpt.data.h5 import CompressedChunks, Layout, ShardWriter, compress_chunks, shard_damage, shard_name
from vpt.data.parallel import MediaProgress, parallel_map
from vpt.data.sources import (
    SPLITS,
    assign_split,
    caption_for,
    check_split_sizes,
    dataset_splits,
    discover_videos,
    frame_files,
    load_captions,
    split_dirs,
)
from vpt.data.video import ResizeMode, VideoReadError, iter_frames, read_image
from vpt.errors import UsageError
from vpt.fsutil import (
    LOCK_FILE,
    atomic_write_text,
    disk_full_is_an_error,
    ensure_writable,
    exclusive_lock,
    remove_stale_temps,
)

STATE_FILE = ".vpt-convert.json"
DEFAULT_VIDEOS_PER_SHARD = {"vpt": 1000, "river": 100_000}  # river: upstream's value
# The option (or input) behind each recorded setting, for the refusal message.
SETTING_OPTIONS = {
    "layout": "--layout",
    "image_size": "--image-size",
    "resize": "--resize",
    "extension": "--extension",
    "fps": "--fps",
    "videos_per_shard": "--videos-per-shard",
    "compression": "--compression",
    "videos": "videos per split in --data-dir",
    "splits": "--splits",
    "captions": "captions (captions.json/.csv)",
    "dataset": "--dataset",
    "fold": "--fold",
}


@dataclass(frozen=True)
class _Job:
    shard: str  # "train/shard_0001.hdf5"
    name: str  # relative to the split folder
    text: str | None
    path: Path
    kind: str  # "video" | "frames"
    size: int | None
    resize: ResizeMode
    fps: float | None
    ext: str | None  # frame-file extension; None: any image file
    compression: str | None  # vpt layout: compress chunks in the worker ("none" too); None for the RIVER layout


def _load(job: _Job) -> tuple[_Job, np.ndarray | CompressedChunks | None, str | None]:
    """Decode, resize and (vpt layout) compress one video in a worker.

    Returns (job, video, error): video is uint8 (T, H, W, 3) for the RIVER layout, compressed chunks
    for the vpt layout, None when the video failed (error says why).
    """
    try:
        if job.kind == "video":
            frames = list(iter_frames(job.path, size=job.size, resize=job.resize, fps=job.fps))
        else:
            frames = [read_image(f, job.size, job.resize) for f in frame_files(job.path, job.ext)]
        if not frames:
            raise VideoReadError("no decodable frames")
        if any(f.shape != frames[0].shape for f in frames):
            raise VideoReadError("frames differ in size (pass --image-size)")
        video = np.stack(frames)
        return job, video if job.compression is None else compress_chunks(video, job.compression), None
    except (VideoReadError, OSError, ValueError) as exc:
        text = str(exc).replace(f"{job.path}: ", "").strip()
        return job, None, (text.splitlines()[0] if text else type(exc).__name__)[:300]


_Entry = tuple[str, Path, str, str | None]  # (name relative to the split, path, "video" | "frames", caption)


def _split_entries(
    src: Path, ext: str, splits: tuple[float, float, float] | None
) -> dict[str, list[tuple[str, Path, str]]]:
    present = split_dirs(src)
    if splits is not None:
        if present:
            raise UsageError(f"{src} already has {'/'.join(present)} folders; --splits is for a flat folder")
        grouped: dict[str, list] = {"train": [], "val": [], "test": []}
        for name, path, kind in discover_videos(src, ext):
            grouped[assign_split(name, splits)].append((name, path, kind))
        return grouped
    if not present:
        raise UsageError(f"{src} has no train/val/test folders; pass --splits 0.9,0.05,0.05 to split a flat folder")
    return {split: discover_videos(folder, ext) for split, folder in present.items()}


def _folder_entries(src: Path, ext: str, splits: tuple[float, float, float] | None) -> dict[str, list[_Entry]]:
    """A train/val/test tree (or a flat folder split by hash), captions from captions.json/csv."""
    found = _split_entries(src, ext, splits)
    captions = load_captions(src, *(src / split for split in found))
    return {
        split: [(name, path, kind, caption_for(captions, name, split)) for name, path, kind in videos]
        for split, videos in found.items()
    }


def _dataset_entries(src: Path, dataset: str, fold: int) -> dict[str, list[_Entry]]:
    """A released dataset's own layout; its splits come from the dataset (UCF-101: the fold files)."""
    return {
        split: [(source.name(i), source.paths[i], source.kinds[i], source.text(i)) for i in range(len(source))]
        for split, source in dataset_splits(src, dataset, fold).items()
    }


def convert_h5(
    src: str | Path,
    dst: str | Path,
    *,
    image_size: int | None = 64,
    resize: ResizeMode = "squash",
    extension: str = "png",
    layout: Layout = "vpt",
    fps: float | None = None,
    videos_per_shard: int | None = None,
    compression: str = "lzf",
    workers: int = 1,
    splits: tuple[float, float, float] | None = None,
    dataset: str = "folders",
    fold: int = 1,
    overwrite: bool = False,
) -> RunSummary:
    """Convert `src` into `dst/<split>/shard_NNNN.hdf5`; resumable; returns what was done and what failed.

    `dataset`: "folders" (a train/val/test tree, or a flat folder with `splits`), or a released dataset's
    own layout, "ucf101" (split by the official fold files of `fold`) or "sky" (SkyTimelapse).
    A `dst` converted with other settings is refused, or with `overwrite` its shards are replaced.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UsageError(f"--data-dir {src}: not a directory")
    if layout == "river" and image_size is None:
        raise UsageError("--layout river stores square frames: give --image-size")
    videos_per_shard = videos_per_shard or DEFAULT_VIDEOS_PER_SHARD[layout]
    if fold != 1 and dataset != "ucf101":
        raise UsageError("--fold is for --dataset ucf101")
    if dataset == "folders":
        entries = _folder_entries(src, extension, splits)
    elif splits is not None:
        raise UsageError(f"--splits is for a flat folder; the {dataset} layout brings its own splits")
    else:
        entries = _dataset_entries(src, dataset, fold)
    if not any(entries.values()):
        raise UsageError(f"{src}: no videos or frame folders (*.{extension}) found")
    check_split_sizes({split: len(found) for split, found in entries.items()}, splits)

    settings = {
        "layout": layout,
        "image_size": image_size,
        "resize": resize,
        "extension": extension,
        "fps": fps,
        "videos_per_shard": videos_per_shard,
        "compression": compression,
        "videos": {split: len(found) for split, found in entries.items()},
    }
    # Each only when it applies, so state files of earlier versions (without these keys) still resume.
    if dataset != "folders":  # a released layout's captions follow from the dataset itself
        settings |= {"dataset": dataset} | ({"fold": fold} if dataset == "ucf101" else {})
    elif any(text is not None for found in entries.values() for *_, text in found):
        settings["captions"] = _captions_digest(entries)
    if splits is not None:
        settings["splits"] = list(splits)
    ensure_writable(dst, "--out-dir")
    with exclusive_lock(dst), disk_full_is_an_error(dst):
        state, replaced = _load_state(dst, settings, overwrite)
        jobs: list[_Job] = []
        shard_sizes: dict[str, int] = {}
        summary = RunSummary(total=sum(len(found) for found in entries.values()), replaced=replaced)
        for split, found in entries.items():
            (dst / split).mkdir(parents=True, exist_ok=True)
            for stale in (dst / split).glob(".shard_*.tmp"):  # temp files of a killed run
                stale.unlink()
            for first in range(0, max(len(found), 1), videos_per_shard):
                shard = f"{split}/{shard_name(first // videos_per_shard + 1)}"
                members = found[first : first + videos_per_shard]
                if _finished(dst, shard, state, len(members)):
                    summary.skipped += len(members)
                    continue
                shard_sizes[shard] = len(members)
                frame_ext = extension if dataset == "folders" else None  # released layouts: any image file is a frame
                jobs += [
                    _Job(
                        shard,
                        name,
                        text,
                        path,
                        kind,
                        image_size,
                        resize,
                        fps,
                        frame_ext,
                        compression if layout == "vpt" else None,
                    )
                    for name, path, kind, text in members
                ]
        attrs = {"source": str(src.resolve()), "resize": resize} | ({"image_size": image_size} if image_size else {})
        _convert(
            jobs, shard_sizes, dst, state, summary, layout=layout, attrs=attrs, compression=compression, workers=workers
        )
        summary.failed = [tuple(f) for record in state["shards"].values() for f in _record(record)["failed"]]
        write_failures(dst, summary.failed)
    return summary


def _convert(
    jobs: list[_Job],
    shard_sizes: dict[str, int],
    dst: Path,
    state: dict,
    summary: RunSummary,
    *,
    layout: Layout,
    attrs: dict,
    compression: str,
    workers: int,
) -> None:
    """Decode `jobs` in workers and write them, shard by shard, recording each finished shard in `state`."""
    writer: ShardWriter | None = None
    with MediaProgress(len(jobs), f"convert-h5 ({layout} layout)") as progress:
        try:
            for shard in [
                s for s, n in shard_sizes.items() if n == 0
            ]:  # an empty split still gets its shard, as upstream
                _new_writer(dst / shard, layout, attrs, compression).close()
                _commit(dst, state, shard, [], videos=0)
            remaining = dict(shard_sizes)
            for job, video, error in parallel_map(_load, jobs, workers):
                if writer is None:
                    writer, failures = _new_writer(dst / job.shard, layout, attrs, compression), []
                if error is None:
                    writer.add(video, text=job.text, name=job.name)
                    summary.done += 1
                    summary.frames += len(video)
                else:
                    failures.append((f"{job.shard.split('/')[0]}/{job.name}", error))
                progress.advance(1, 0 if video is None else len(video))
                remaining[job.shard] -= 1
                if remaining[job.shard] == 0:
                    writer.close()
                    _commit(dst, state, job.shard, failures, videos=len(writer))
                    writer = None
        finally:
            if writer is not None:
                writer.discard()
        summary.seconds = progress.elapsed


def _commit(dst: Path, state: dict, shard: str, failures: list, *, videos: int) -> None:
    state["shards"][shard] = {"size": (dst / shard).stat().st_size, "videos": videos, "failed": failures}
    _save_state(dst, state)


def _record(value: dict | list) -> dict:
    """A shard's entry in the state file; state files of older versions kept only the failures."""
    return value if isinstance(value, dict) else {"size": None, "videos": None, "failed": value}


def _finished(dst: Path, shard: str, state: dict, members: int) -> bool:
    """True when `shard` was finished by an earlier run and still is what that run wrote."""
    if shard not in state["shards"]:
        return False
    if not (dst / shard).is_file():
        del state["shards"][shard]
        return False
    record = _record(state["shards"][shard])
    damage = shard_damage(dst / shard, size=record["size"], videos=members - len(record["failed"]))
    if damage is None:
        return True
    warn(f"shard {shard} is damaged ({damage}), converting it again")
    (dst / shard).unlink()
    del state["shards"][shard]
    _save_state(dst, state)
    return False


def _new_writer(path: Path, layout: Layout, attrs: dict, compression: str) -> ShardWriter:
    if layout == "river":
        return ShardWriter(path, layout="river")
    return ShardWriter(path, layout="vpt", kind="frames", attrs=attrs, compression=compression)


def _captions_digest(entries: dict[str, list[_Entry]]) -> str:
    """A short hash of every video's caption (None and "" differ), in conversion order."""
    pairs = [[split, name, text] for split, found in entries.items() for name, _, _, text in found]
    return hashlib.sha256(json.dumps(pairs).encode("utf-8")).hexdigest()[:16]


def _load_state(dst: Path, settings: dict, overwrite: bool) -> tuple[dict, int]:
    """The state to resume from, and how many shards made with other settings were removed (`overwrite`)."""
    path = dst / STATE_FILE
    remove_stale_temps(path)
    if not path.is_file():
        if dst.is_dir() and any(p for p in dst.iterdir() if p.name not in (STATE_FILE, LOCK_FILE)):
            raise UsageError(f"--out-dir {dst} exists and was not written by convert-h5; choose a new one")
        return _new_state(dst, settings), 0
    state = _read_state(path)
    if state["settings"] == settings:
        return state, 0
    if not overwrite:
        raise UsageError(
            f"{dst} was converted with other settings ({_changes(state['settings'], settings)}); "
            "use the same options to resume, pass --overwrite to convert again, or choose a new --out-dir"
        )
    old_shards = []
    for split in SPLITS:  # every split a conversion writes; never a name read from the file
        if (dst / split).is_symlink():
            raise UsageError(f"{dst / split} is a symbolic link; convert-h5 never deletes through a link: remove it")
        old_shards += (dst / split).glob("shard_*.hdf5")
    for shard in old_shards:
        shard.unlink()
    return _new_state(dst, settings), len(old_shards)


def _new_state(dst: Path, settings: dict) -> dict:
    state = {"settings": settings, "shards": {}}
    _save_state(dst, state)
    return state


def _changes(recorded: dict, wanted: dict) -> str:
    """'--image-size was 16, now 32; captions (captions.json/.csv) added' for each differing setting."""
    changes = []
    for key in dict.fromkeys([*SETTING_OPTIONS, *recorded, *wanted]):
        old, new = recorded.get(key), wanted.get(key)
        if old == new:
            continue
        option = SETTING_OPTIONS.get(key, key)
        if key == "captions":  # a digest: only whether they came or went says something
            changes.append(f"{option} {'added' if old is None else 'removed' if new is None else 'changed'}")
        else:
            changes.append(f"{option} was {shown_setting(old)}, now {shown_setting(new)}")
    return "; ".join(changes)


def _read_state(path: Path) -> dict:
    """The state file of an earlier run, checked field by field: a damaged or hand-edited one is one line."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _damaged(path, f"not JSON: {str(exc)[:120]}") from None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("settings"), dict)
        or not isinstance(state.get("shards"), dict)
    ):
        raise _damaged(path, "expected an object with 'settings' and 'shards'")
    for shard, value in state["shards"].items():
        record = _record(value)
        counts_ok = all(
            record.get(k) is None or (type(record.get(k)) is int and record[k] >= 0) for k in ("size", "videos")
        )
        failed = record.get("failed")
        failed_ok = isinstance(failed, list) and all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(part, str) for part in f) for f in failed
        )
        if not (isinstance(value, (dict, list)) and counts_ok and failed_ok):
            raise _damaged(path, f"bad record for shard {shard[:80]!r}")
    return state


def _damaged(path: Path, what: str) -> UsageError:
    return UsageError(f"{path} is damaged ({what}); restore it, or convert into a new --out-dir")


def _save_state(dst: Path, state: dict) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dst / STATE_FILE, json.dumps(state, indent=1) + "\n")


__all__ = ["convert_h5", "DEFAULT_VIDEOS_PER_SHARD", "STATE_FILE"]
