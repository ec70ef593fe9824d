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
            image[y : y + height, x : x + width] = frame
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
        held = (
            np.concatenate([video, np.repeat(video[-1:], length - len(video), axis=0)])
            if len(video) < length
            else video
        )
        out[:, :, i * (width + GAP) : i * (width + GAP) + width] = held
    return out


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3) image atomically (format from the suffix: .png, .jpg ...)."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


def save_prediction(
    path: str | os.PathLike,
    samples: list[np.ndarray],
    num_context: int,
    *,
    fps: float = 4.0,
    truth: np.ndarray | None = None,
) -> Path:
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


CHART_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def line_charts(
    panels: dict[str, dict[str, list[float]]], *, x_label: str = "predicted frame", width: int = 320, height: int = 200
) -> np.ndarray:
    """Small line charts side by side as one uint8 image: per panel title, {series label: y values}
    (x = 1, 2, ...). Drawn with Pillow alone, so reports need no plotting library."""
    from PIL import Image, ImageDraw

    margin_left, margin_right, margin_top, margin_bottom = 44, 10, 22, 34
    image = Image.new("RGB", (width * len(panels), height), "white")
    draw = ImageDraw.Draw(image)
    for p, (title, series) in enumerate(panels.items()):
        left, right = p * width + margin_left, (p + 1) * width - margin_right
        top, bottom = margin_top, height - margin_bottom
        values = [v for ys in series.values() for v in ys if np.isfinite(v)]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        count = max(len(ys) for ys in series.values())
        to_x = lambda i: left + (right - left) * (i / max(1, count - 1))  # noqa: E731
        to_y = lambda v: bottom - (bottom - top) * ((v - low) / (high - low))  # noqa: E731
        draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
        draw.text((left, 4), title, fill="black")
        draw.text((p * width + 2, top), f"{high:.3g}", fill="black")
        draw.text((p * width + 2, bottom - 10), f"{low:.3g}", fill="black")
        draw.text((left, bottom + 4), f"1 ... {count}  {x_label}", fill="black")
        for k, (label, ys) in enumerate(series.items()):
            colour = CHART_COLOURS[k % len(CHART_COLOURS)]
            points = [(to_x(i), to_y(v)) for i, v in enumerate(ys) if np.isfinite(v)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            draw.text((left + 4 + 110 * k, bottom + 18), label, fill=colour)
    return np.asarray(image)
