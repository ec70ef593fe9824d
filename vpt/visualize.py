"""Pictures of predictions: frame strips and side-by-side videos with the given (context) frames marked.

Everything works on uint8 `(T, H, W, 3)` frames (see `vpt.data.video.to_uint8_frames`) and is shared by
`vpt sample`, the periodic sampling of `vpt train` and the quickstart report, so every picture vpt
writes reads the same way: a red border means "this frame was given to the model".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vpt.errors import UsageError
from vpt.fsutil import atomic_path

CONTEXT_COLOR = (220, 40, 40)  # border of frames the model was given
GAP = 2  # pixels between tiles
GAP_COLOR = 255


def mark_context(frames: np.ndarray, num_context: int, *, width: int | None = None) -> np.ndarray:
    """A copy of `frames` (T, H, W, 3) whose first `num_context` frames get a red border drawn inside."""
    frames = frames.copy()
    width = width or max(1, min(frames.shape[1:3]) // 32)
    border = frames[:num_context]  # a view into the copy
    border[:, :width] = CONTEXT_COLOR
    border[:, -width:] = CONTEXT_COLOR
    border[:, :, :width] = CONTEXT_COLOR
    border[:, :, -width:] = CONTEXT_COLOR
    return frames


def strip(rows: list[np.ndarray], num_context: int | list[int]) -> np.ndarray:
    """One image: each row is a video (T_i, H, W, 3) laid out left to right, context frames marked."""
    counts = num_context if isinstance(num_context, list) else [num_context] * len(rows)
    height, width = rows[0].shape[1:3]
    columns = max(len(r) for r in rows)
    image = np.full((len(rows) * (height + GAP) - GAP, columns * (width + GAP) - GAP, 3), GAP_COLOR, np.uint8)
    for i, (row, count) in enumerate(zip(rows, counts)):
        for j, frame in enumerate(mark_context(row, count)):
            y, x = i * (height + GAP), j * (width + GAP)
            image[y:y + height, x:x + width] = frame
    return image


def side_by_side(videos: list[np.ndarray], num_context: int | list[int]) -> np.ndarray:
    """Videos (T_i, H, W, 3) -> one video whose frame t shows every video's frame t left to right.

    A shorter video holds its last frame; context frames are marked.
    """
    counts = num_context if isinstance(num_context, list) else [num_context] * len(videos)
    marked = [mark_context(v, c) for v, c in zip(videos, counts)]
    length = max(len(v) for v in marked)
    height, width = marked[0].shape[1:3]
    out = np.full((length, height, len(marked) * (width + GAP) - GAP, 3), GAP_COLOR, np.uint8)
    for i, video in enumerate(marked):
        held = np.concatenate([video, np.repeat(video[-1:], length - len(video), axis=0)]) if len(video) < length else video
        out[:, :, i * (width + GAP):i * (width + GAP) + width] = held
    return out


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3) image atomically (format from the suffix: .png, .jpg ...)."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


def save_prediction(path: str | os.PathLike, samples: list[np.ndarray], num_context: int, *, fps: float = 4.0,
                    truth: np.ndarray | None = None) -> Path:
    """Write predicted videos as .png (one strip row per sample, truth on top) or .mp4/.gif (side by side).

    `samples`: videos (T, H, W, 3) that start with their `num_context` context frames.
    """
    from vpt.data.video import write_video

    path = Path(path)
    rows = ([truth] if truth is not None else []) + list(samples)
    suffix = path.suffix.lower()
    if suffix == ".png":
        return save_image(path, strip(rows, num_context))
    if suffix in (".mp4", ".gif", ".mov", ".mkv"):
        return write_video(path, side_by_side(rows, num_context), fps=fps)
    raise UsageError(f"{path}: unknown output format '{suffix}' (use .mp4, .gif or .png)")
