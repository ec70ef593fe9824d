"""`vpt extract-frames`: every video under a folder -> one folder of numbered frames per video.

Frames go to a hidden `.<name>.partial` folder; after the last frame a done-marker
(`.vpt-done.json`: frame count, frame format, the source's size and mtime) is written into it and
the folder is renamed into place. An interrupted run leaves only hidden leftovers (which every reader
skips and the next run replaces). A rerun trusts a final folder only when its marker matches the
source and the frames present, and extracts anything else again.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vpt.data.parallel import MediaProgress, parallel_map
from vpt.data.sources import CAPTION_FILES, assign_split, discover_videos
from vpt.data.video import ResizeMode, VideoReadError, iter_frames
from vpt.errors import UsageError
from vpt.fsutil import (
    atomic_write_text,
    disk_full_is_an_error,
    ensure_writable,
    exclusive_lock,
    fsync_dir,
    out_of_space,
)

FAILED_FILE = "failed.txt"
DONE_MARKER = ".vpt-done.json"


@dataclass
class RunSummary:
    """What a conversion did; `failed` holds (name, reason) for each video that could not be read."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    redone: int = 0  # outputs that looked finished but were not (now done again)
    frames: int = 0
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    name: str
    source: Path
    target: Path
    size: int | None
    resize: ResizeMode
    fps: float | None
    ext: str


def _save_frame(frame, path: Path, ext: str) -> None:
    image = Image.fromarray(frame)
    if ext == "png":
        image.save(path, format="PNG", compress_level=1)  # level 1: ~5x faster than the default, ~10 % larger
    else:
        image.save(path, format="JPEG", quality=95)


def _extract_one(job: _Job) -> tuple[str, int, str | None]:
    """Decode one video into `job.target`; returns (name, frames written, error or None).

    A full disk is not the video's fault: it is raised (after cleaning up) and stops the run.
    """
    partial = job.target.with_name(f".{job.target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        count = _write_frames(job, partial)
        _write_marker(partial, count, job.ext, job.source)
        # Rename is atomic against a kill; frames are not fsynced one by one (that would cost more than decoding).
        os.replace(partial, job.target)
    except (VideoReadError, OSError, ValueError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if out_of_space(exc):
            raise
        return job.name, 0, _one_line(exc, job.source)
    fsync_dir(job.target.parent)
    return job.name, count, None


def _write_frames(job: _Job, folder: Path) -> int:
    count = 0
    for frame in iter_frames(job.source, size=job.size, resize=job.resize, fps=job.fps):
        _save_frame(frame, folder / f"{count:05d}.{job.ext}", job.ext)
        count += 1
    if count == 0:
        raise VideoReadError("no decodable frames")
    # Zero-padded names keep lexicographic order = frame order (RIVER sorts names); past 99,999 frames
    # the padding has to grow, so the frames are renamed to the wider width.
    if count > 99_999:
        for k in range(count):
            os.replace(folder / f"{k:05d}.{job.ext}", folder / f"{k:0{len(str(count - 1))}d}.{job.ext}")
    return count


def _source_stamp(source: Path) -> dict[str, int]:
    stat = source.stat()
    return {"source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}


def _write_marker(folder: Path, count: int, ext: str, source: Path) -> None:
    (folder / DONE_MARKER).write_text(json.dumps({"frames": count, "ext": ext} | _source_stamp(source)) + "\n")


def _is_complete(folder: Path, source: Path) -> bool:
    """True when `folder` holds a done-marker that matches `source` and every frame it counts."""
    try:
        marker = json.loads((folder / DONE_MARKER).read_text())
        stamp = _source_stamp(source)
        suffix = f".{marker['ext']}"
        frames = sum(1 for e in os.scandir(folder) if e.name.endswith(suffix) and not e.name.startswith("."))
        return all(marker.get(k) == v for k, v in stamp.items()) and marker["frames"] == frames
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _one_line(exc: Exception, source: Path) -> str:
    text = str(exc).replace(f"{source}: ", "").strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def plan_targets(
    src: Path, dst: Path, splits: tuple[float, float, float] | None, *, ext: str | None = None, videos_only: bool = True
) -> list[tuple[str, Path, str, Path]]:
    """(name, source, kind, target-without-extension) for every video under `src`, target under `dst`.

    With `splits`, a flat folder is spread over dst/train, dst/val, dst/test by a hash of each name.
    """
    found = [item for item in discover_videos(src, ext) if item[2] == "video" or not videos_only]
    planned = []
    for name, path, kind in found:
        stem = os.path.splitext(name)[0] if kind == "video" else name
        relative = f"{assign_split(name, splits)}/{stem}" if splits else stem
        planned.append((name, path, kind, dst / relative))
    return planned


def write_failures(dst: Path, failed: list[tuple[str, str]]) -> None:
    """`dst/failed.txt`: one `name<TAB>reason` line per failed video; removed when nothing failed."""
    path = dst / FAILED_FILE
    if failed:
        atomic_write_text(path, "".join(f"{name}\t{reason}\n" for name, reason in sorted(failed)))
    elif path.exists():
        path.unlink()


def copy_captions(src: Path, dst: Path) -> None:
    """Captions beside the videos travel with the frames (keys match with or without extensions)."""
    for name in CAPTION_FILES:
        if (src / name).is_file():
            atomic_write_text(dst / name, (src / name).read_text(encoding="utf-8"))


def extract_frames(
    src: str | Path,
    dst: str | Path,
    *,
    size: int | None = None,
    resize: ResizeMode = "squash",
    fps: float | None = None,
    ext: str = "png",
    workers: int = 1,
    splits: tuple[float, float, float] | None = None,
) -> RunSummary:
    """Extract every video under `src` into `dst/<relative path without extension>/00000.<ext>`."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UsageError(f"--video-dir {src}: not a directory")
    if ext not in ("png", "jpg"):
        raise UsageError(f"--ext must be png or jpg, got {ext!r}")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise UsageError("--out-dir must not be inside --video-dir")
    planned = plan_targets(src, dst, splits)
    if not planned:
        raise UsageError(f"{src}: no video files found (extensions: mp4, avi, mkv, webm, mov, mpg, m4v, gif, ...)")
    ensure_writable(dst, "--out-dir")
    with exclusive_lock(dst), disk_full_is_an_error(dst, kept="videos"):
        summary = RunSummary(total=len(planned))
        jobs = []
        for name, path, _, target in planned:
            if target.is_symlink() and not (target.is_dir() and _is_complete(target, path)):
                raise UsageError(
                    f"{target} is a symbolic link and no finished extraction of {name}; extract-frames "
                    "never deletes through a link: remove it or choose another --out-dir"
                )
            if target.is_dir():
                if _is_complete(target, path):
                    summary.skipped += 1
                    continue
                shutil.rmtree(target)  # a kill or a hand edit left it incomplete
                summary.redone += 1
            jobs.append(_Job(name, path, target, size, resize, fps, ext))
        with MediaProgress(len(jobs), "extract-frames") as progress:
            for name, count, error in parallel_map(_extract_one, jobs, min(workers, max(1, len(jobs))), ordered=False):
                if error is None:
                    summary.done += 1
                    summary.frames += count
                else:
                    summary.failed.append((name, error))
                progress.advance(1, count)
            summary.seconds = progress.elapsed
        write_failures(dst, summary.failed)
        copy_captions(src, dst)
    return summary
