"""Pictures of predictions: frame strips and side-by-side videos with the given (context) frames marked.

Everything works on uint8 `(T, H, W, 3)` frames (see `vpt.data.video.to_uint8_frames`) and is shared by
`vpt sample`, the periodic sampling of `vpt train` and the quickstart report, so every picture vpt
writes reads the same way: a red border means "this frame was given to the model", a green one "this is
the real frame the model had to predict", no border "predicted". Pictures made for viewing (`vpt sample`,
`vpt eval-fvd --save-samples`) are also enlarged (nearest neighbour, a whole factor, so every model
pixel stays a sharp square) and carry a text label above each video.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from vpt.errors import UsageError
from vpt.fsutil import atomic_path

CONTEXT_COLOR = (220, 40, 40)  # border of frames the model was given
TRUTH_COLOR = (40, 160, 60)  # border of real frames after the context (what the model had to predict)
GAP = 2  # pixels between tiles
GAP_COLOR = 255
LABEL_HEIGHT = 20  # pixels of the text strip above a labelled video
LABEL_FONT_SIZE = 14
BORDER_LEGEND = {
    "red": "context: frames given to the model",
    "green": "truth: the real frames that followed the context",
    "none": "prediction",
}


def mark_frames(frames: np.ndarray, num_context: int, *, truth: bool = False, width: int | None = None) -> np.ndarray:
    """A copy of `frames` (T, H, W, 3) whose first `num_context` frames get a red border drawn inside and,
    for a ground-truth video (`truth`), the frames after them a green one."""
    frames = frames.copy()
    width = width or max(1, min(frames.shape[1:3]) // 32)
    marked = [(frames[:num_context], CONTEXT_COLOR)] + ([(frames[num_context:], TRUTH_COLOR)] if truth else [])
    for border, colour in marked:  # views into the copy
        border[:, :width] = colour
        border[:, -width:] = colour
        border[:, :, :width] = colour
        border[:, :, -width:] = colour
    return frames


def view_scale(height: int, view_height: int) -> int:
    """The whole factor that makes frames `height` px high at least `view_height` px high (1: as they are)."""
    return max(1, math.ceil(view_height / height)) if view_height > 0 else 1


def enlarge(frames: np.ndarray, scale: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, H*scale, W*scale, 3), nearest neighbour."""
    return frames if scale == 1 else frames.repeat(scale, axis=1).repeat(scale, axis=2)


def label_strip(text: str, width: int) -> np.ndarray:
    """(LABEL_HEIGHT, width, 3): `text` in black on white, cut at `width`."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, LABEL_HEIGHT), "white")
    ImageDraw.Draw(image).text((3, 2), text, fill="black", font=ImageFont.load_default(size=LABEL_FONT_SIZE))
    return np.asarray(image)


def strip(
    rows: list[np.ndarray], num_context: int | list[int], *, truth_rows: int = 0, labels: list[str] | None = None
) -> np.ndarray:
    """One image: each row is a video (T_i, H, W, 3) laid out left to right, context frames marked; the
    first `truth_rows` rows are ground truth (marked green after the context); `labels` go above the rows."""
    counts = num_context if isinstance(num_context, list) else [num_context] * len(rows)
    height, width = rows[0].shape[1:3]
    label_height = LABEL_HEIGHT if labels else 0
    row_height = label_height + height
    columns = max(len(r) for r in rows)
    image_width = columns * (width + GAP) - GAP
    image = np.full((len(rows) * (row_height + GAP) - GAP, image_width, 3), GAP_COLOR, np.uint8)
    for i, (row, count) in enumerate(zip(rows, counts)):
        top = i * (row_height + GAP)
        if labels:
            image[top : top + label_height] = label_strip(labels[i], image_width)
        for j, frame in enumerate(mark_frames(row, count, truth=i < truth_rows)):
            y, x = top + label_height, j * (width + GAP)
            image[y : y + height, x : x + width] = frame
    return image


def side_by_side(
    videos: list[np.ndarray],
    num_context: int | list[int],
    *,
    truth_rows: int = 0,
    labels: list[str] | None = None,
) -> np.ndarray:
    """Videos (T_i, H, W, 3) -> one video whose frame t shows every video's frame t left to right.

    A shorter video holds its last frame; context frames are marked, and the frames after the context of
    the first `truth_rows` videos (ground truth); `labels` go above the videos.
    """
    counts = num_context if isinstance(num_context, list) else [num_context] * len(videos)
    marked = [mark_frames(v, c, truth=i < truth_rows) for i, (v, c) in enumerate(zip(videos, counts))]
    length = max(len(v) for v in marked)
    height, width = marked[0].shape[1:3]
    label_height = LABEL_HEIGHT if labels else 0
    out = np.full((length, label_height + height, len(marked) * (width + GAP) - GAP, 3), GAP_COLOR, np.uint8)
    for i, video in enumerate(marked):
        held = (
            np.concatenate([video, np.repeat(video[-1:], length - len(video), axis=0)])
            if len(video) < length
            else video
        )
        left = i * (width + GAP)
        if labels:
            out[:, :label_height, left : left + width] = label_strip(labels[i], width)
        out[:, label_height:, left : left + width] = held
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
    view_height: int = 0,
) -> dict:
    """Write predicted videos as .png (one strip row per sample, truth on top) or .mp4/.gif (side by side),
    and return the legend of what it shows (for the settings record beside it).

    `samples`: videos (T, H, W, 3) that start with their `num_context` context frames. With `view_height`,
    frames are enlarged to at least that many pixels high and every video is labelled (truth, prediction).
    """
    from vpt.data.video import write_video

    path = Path(path)
    rows = ([truth] if truth is not None else []) + list(samples)
    names = (["truth"] if truth is not None else []) + (
        ["prediction"] if len(samples) == 1 else [f"prediction {i + 1}" for i in range(len(samples))]
    )
    scale = view_scale(rows[0].shape[1], view_height)
    rows = [enlarge(row, scale) for row in rows]
    labels = names if view_height > 0 else None
    truth_rows = int(truth is not None)
    suffix = path.suffix.lower()
    if suffix == ".png":
        save_image(path, strip(rows, num_context, truth_rows=truth_rows, labels=labels))
        layout = "rows, top to bottom"
    elif suffix in (".mp4", ".gif", ".mov", ".mkv"):
        write_video(path, side_by_side(rows, num_context, truth_rows=truth_rows, labels=labels), fps=fps)
        layout = "videos, left to right"
    else:
        raise UsageError(f"{path}: unknown output format '{suffix}' (use .mp4, .gif or .png)")
    return {
        "videos": names,
        "layout": layout,
        "labelled": labels is not None,
        "borders": BORDER_LEGEND,
        "scale": scale,  # each model pixel is shown as scale x scale pixels
    }


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
