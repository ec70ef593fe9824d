"""Built-in instructed data: one coloured shape per clip whose motion its instruction names.

"the red square moves left" moves at a constant speed to the left; "the blue circle falls" drops
from rest under constant gravity and bounces off the floor. Speed and gravity are fixed per frame
size, and start positions are chosen so a directional move never reaches a wall within the clip
(when the clip is long enough to reach one, the shape bounces elastically). So the first frame plus
the instruction determine the whole clip - a small model can learn it on a CPU, and a test can check
a prediction by the shape's centroid (`shape_centroid`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpt.data.parallel import MediaProgress, default_workers, parallel_map
from vpt.data.video import write_video
from vpt.errors import UsageError
from vpt.fsutil import LOCK_FILE, atomic_write_text, check_output_dir, exclusive_lock

COLOURS = {
    "red": (230, 45, 45),
    "green": (45, 200, 70),
    "blue": (60, 100, 245),
    "yellow": (235, 215, 45),
    "magenta": (220, 60, 220),
    "cyan": (45, 210, 225),
    "orange": (245, 140, 35),
    "white": (235, 235, 235),
}
SHAPES = ("square", "circle", "triangle")
MOTIONS = ("left", "right", "up", "down", "falls")
BACKGROUND = (16, 16, 24)
SPEED = 2.0  # px per frame at 64 px, scaled with the frame size
GRAVITY = 0.25  # px per frame^2 at 64 px
FLOOR_RESTITUTION = 0.6
SUPERSAMPLE = 4  # sub-pixel positions are anti-aliased by rendering at 4x and averaging
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
CRF = 10  # near-lossless H.264, so decoded frames stay close to the rendered ones


@dataclass(frozen=True)
class ShapeClip:
    """Everything that defines one clip; `render` turns it into frames."""

    shape: str
    colour: str
    motion: str
    x: float  # centre at frame 0, px from the left
    y: float  # centre at frame 0, px from the top
    vx: float  # px / frame
    vy: float
    gravity: float  # px / frame^2, downwards
    radius: float  # half the side of a square, the radius of a circle, the circumradius of a triangle

    @property
    def instruction(self) -> str:
        verb = "falls" if self.motion == "falls" else f"moves {self.motion}"
        return f"the {self.colour} {self.shape} {verb}"


def sample_clip(
    rng: np.random.Generator,
    *,
    size: int = 64,
    frames: int = 16,
    motion: str | None = None,
    shape: str | None = None,
    colour: str | None = None,
) -> ShapeClip:
    """Draw one clip; `motion`, `shape`, `colour` fix those choices (e.g. for an instruction test)."""
    motion = motion or MOTIONS[int(rng.integers(len(MOTIONS)))]
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    colour = colour or list(COLOURS)[int(rng.integers(len(COLOURS)))]
    if motion not in MOTIONS or shape not in SHAPES or colour not in COLOURS:
        raise UsageError(f"unknown shape/colour/motion: {shape}/{colour}/{motion}")
    scale = size / 64
    radius = float(rng.uniform(6.0, 8.0)) * scale  # 12-16 px across at 64 px
    low, high = radius + 1.0, size - radius - 1.0  # centre positions that keep the shape inside
    speed, travel = SPEED * scale, SPEED * scale * (frames - 1)

    def start_for(direction: int) -> float:
        # direction +1: needs room ahead of it; pick from the part of the frame the whole move fits in
        if travel <= high - low:
            return float(rng.uniform(low, high - travel)) if direction > 0 else float(rng.uniform(low + travel, high))
        return float(rng.uniform(low, high))  # too long to fit: it will bounce

    across = float(rng.uniform(low, high))
    if motion in ("left", "right"):
        direction = 1 if motion == "right" else -1
        return ShapeClip(shape, colour, motion, start_for(direction), across, direction * speed, 0.0, 0.0, radius)
    if motion in ("up", "down"):
        direction = 1 if motion == "down" else -1
        return ShapeClip(shape, colour, motion, across, start_for(direction), 0.0, direction * speed, 0.0, radius)
    top = float(rng.uniform(low, max(low, size / 2 - radius)))  # falls: from rest in the upper half
    return ShapeClip(shape, colour, motion, across, top, 0.0, 0.0, GRAVITY * scale, radius)


def trajectory(clip: ShapeClip, frames: int, size: int) -> np.ndarray:
    """Centre (x, y) per frame, (T, 2): constant velocity plus gravity, bouncing off the walls."""
    position = np.array([clip.x, clip.y], dtype=np.float64)
    velocity = np.array([clip.vx, clip.vy], dtype=np.float64)
    low, high = clip.radius, size - clip.radius
    centres = np.empty((frames, 2))
    for t in range(frames):
        centres[t] = position
        velocity[1] += clip.gravity
        position = position + velocity
        for axis in (0, 1):
            if position[axis] < low:
                position[axis], velocity[axis] = 2 * low - position[axis], -velocity[axis]
            elif position[axis] > high:
                restitution = FLOOR_RESTITUTION if axis == 1 and clip.gravity > 0 else 1.0
                position[axis] = high - (position[axis] - high) * restitution
                velocity[axis] = -velocity[axis] * restitution
    return centres


def _coverage(shape: str, cx: float, cy: float, radius: float, size: int) -> tuple[slice, slice, np.ndarray]:
    """(rows, cols, coverage): the fraction of each pixel in the shape's bounding box that it covers, by supersampling."""
    reach = radius * 1.25  # covers the triangle's corners too
    x0, x1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 2)
    y0, y1 = max(0, int(cy - reach)), min(size, int(cy + reach) + 2)
    x = (np.arange(x0 * SUPERSAMPLE, x1 * SUPERSAMPLE) + 0.5)[None, :] / SUPERSAMPLE - cx
    y = (np.arange(y0 * SUPERSAMPLE, y1 * SUPERSAMPLE) + 0.5)[:, None] / SUPERSAMPLE - cy
    if shape == "square":
        inside = (np.abs(x) <= radius) & (np.abs(y) <= radius)
    elif shape == "circle":
        inside = x * x + y * y <= radius * radius
    else:  # upward equilateral triangle: inside all three edge half-planes
        r = radius * 1.2  # similar area to the square and circle
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        corners = np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)
        inside = np.ones((len(y), x.shape[1]), dtype=bool)
        for k in range(3):
            (ax, ay), (bx, by) = corners[k], corners[(k + 1) % 3]
            inside &= (bx - ax) * (y - ay) - (by - ay) * (x - ax) >= 0
    coverage = inside.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean(axis=(1, 3), dtype=np.float32)
    return slice(y0, y1), slice(x0, x1), coverage


def render(clip: ShapeClip, frames: int = 16, size: int = 64) -> np.ndarray:
    """The clip's frames, uint8 (T, size, size, 3)."""
    background = np.asarray(BACKGROUND, dtype=np.float32)
    colour = np.asarray(COLOURS[clip.colour], dtype=np.float32)
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    video[:] = np.asarray(BACKGROUND, dtype=np.uint8)
    for t, (cx, cy) in enumerate(trajectory(clip, frames, size)):
        rows, cols, alpha = _coverage(clip.shape, cx, cy, clip.radius, size)
        alpha = alpha[..., None]  # (h, w, 1) over the shape's bounding box
        video[t, rows, cols] = np.rint(background * (1 - alpha) + colour * alpha).astype(np.uint8)
    return video


def shape_centroid(frames: np.ndarray, threshold: float = 40.0) -> np.ndarray:
    """(x, y) centroid per frame of the pixels that differ from the background, (T, 2); NaN where none do.

    Same coordinates as `trajectory`: pixel (i, j) spans [j, j + 1) x [i, i + 1), so its centre is j + 0.5.

    `frames` is uint8 (T, H, W, 3) - or float (T, 3, H, W) in [-1, 1], as models output.
    """
    frames = np.asarray(frames.detach().cpu() if hasattr(frames, "detach") else frames)
    if frames.dtype != np.uint8:
        frames = np.clip((frames.transpose(0, 2, 3, 1) + 1) * 127.5, 0, 255)
    distance = np.abs(frames.astype(np.float32) - np.asarray(BACKGROUND, np.float32)).sum(axis=-1)  # (T, H, W)
    weight = np.where(distance > threshold, distance, 0.0)
    total = weight.sum(axis=(1, 2))
    ys, xs = np.arange(frames.shape[1]) + 0.5, np.arange(frames.shape[2]) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (weight.sum(axis=1) * xs).sum(axis=1) / total
        cy = (weight.sum(axis=2) * ys).sum(axis=1) / total
    return np.stack([cx, cy], axis=1)


def colour_mask(frames: np.ndarray, colour: str, threshold: float = 150.0) -> np.ndarray:
    """(T, H, W) bool: the pixels whose summed |RGB - colour| is below `threshold` (see `colour_centroid`).
    `frames` as in `shape_centroid`."""
    frames = np.asarray(frames.detach().cpu() if hasattr(frames, "detach") else frames)
    if frames.dtype != np.uint8:
        frames = np.clip((frames.transpose(0, 2, 3, 1) + 1) * 127.5, 0, 255)
    distance = np.abs(frames.astype(np.float32) - np.asarray(COLOURS[colour], np.float32)).sum(axis=-1)  # (T, H, W)
    return distance < threshold


def colour_centroid(frames: np.ndarray, colour: str, threshold: float = 150.0) -> tuple[np.ndarray, np.ndarray]:
    """Where the object of `colour` is in each frame: (x, y) centroid (T, 2), NaN where absent, and how
    many pixels are close to that colour (T,), so a faded or vanished object shows as a small count.

    `frames` as in `shape_centroid`. A pixel counts when its summed |RGB - colour| is below `threshold`:
    150 is about half the way from the background to the nearest colour, so the colour shift of a lossy
    autoencoder's reconstruction (measured up to ~110) still counts while background and faded pixels do not.
    """
    mask = colour_mask(frames, colour, threshold)  # (T, H, W)
    count = mask.sum(axis=(1, 2))
    ys, xs = np.arange(mask.shape[1]) + 0.5, np.arange(mask.shape[2]) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask.sum(axis=1) * xs).sum(axis=1) / count
        cy = (mask.sum(axis=2) * ys).sum(axis=1) / count
    return np.stack([cx, cy], axis=1), count


# --- the dataset on disk --------------------------------------------------------------------------


def split_counts(num_videos: int) -> dict[str, int]:
    """80/10/10, with at least one val and one test video when there are three or more."""
    val = max(1, round(num_videos * SPLIT_FRACTIONS[1])) if num_videos >= 3 else 0
    test = max(1, round(num_videos * SPLIT_FRACTIONS[2])) if num_videos >= 3 else 0
    return {"train": num_videos - val - test, "val": val, "test": test}


def _clip_for(seed: int, number: int, size: int, frames: int) -> ShapeClip:
    # One generator per clip: clip k is the same whatever the number of videos or workers.
    return sample_clip(np.random.default_rng([seed, number]), size=size, frames=frames)


def _make_one(task: tuple[Path, int, int, int, int, float]) -> int:
    path, seed, number, size, frames, fps = task
    write_video(path, render(_clip_for(seed, number, size, frames), frames, size), fps, crf=CRF)
    return frames


def make_shapes(
    out: str | Path,
    *,
    num_videos: int = 1000,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    fps: float = 8.0,
    workers: int | None = None,
) -> dict[str, str]:
    """Write `out/{train,val,test}/NNNNN.mp4`, `out/captions.json`, `out/positions.json` (per video: the
    shape, colour and true centre (x, y) of the object in every frame) and `out/shapes.json` (the settings).

    Re-running with the same settings only writes the videos that are missing. Returns the captions.
    """
    if num_videos < 1 or frames < 2 or size < 16:
        raise UsageError("make-data shapes needs --num-videos >= 1, --frames >= 2 and --size >= 16")
    out = Path(out)
    settings = {
        "generator": "shapes",
        "num_videos": num_videos,
        "frames": frames,
        "size": size,
        "seed": seed,
        "fps": fps,
    }
    check_output_dir(out, "--out")
    with exclusive_lock(out, "the --out folder"):  # creates `out`
        stamp = out / "shapes.json"
        if stamp.is_file() and _stored_settings(stamp) != settings:
            raise UsageError(f"{out} holds shapes made with other settings ({stamp}); choose a new --out")
        if not stamp.is_file() and any(entry.name != LOCK_FILE for entry in out.iterdir()):
            raise UsageError(f"{out} exists and is not empty; choose a new --out")
        atomic_write_text(stamp, json.dumps(settings, indent=2) + "\n")

        captions, positions, tasks, number = {}, {}, [], 0
        for split, count in split_counts(num_videos).items():
            for k in range(count):
                name = f"{split}/{k:05d}.mp4"
                clip = _clip_for(seed, number, size, frames)
                captions[name] = clip.instruction
                positions[name] = {
                    "shape": clip.shape,
                    "colour": clip.colour,
                    "motion": clip.motion,
                    "centre": np.round(trajectory(clip, frames, size), 3).tolist(),
                }
                if not (out / name).is_file():
                    tasks.append((out / name, seed, number, size, frames, fps))
                number += 1
        workers = default_workers() if workers is None else workers
        with MediaProgress(len(tasks), "make-data shapes") as progress:
            for written in parallel_map(_make_one, tasks, min(workers, max(1, len(tasks) // 16)), ordered=False):
                progress.advance(1, written)
        atomic_write_text(out / "captions.json", json.dumps(captions, indent=1) + "\n")
        atomic_write_text(out / "positions.json", json.dumps(positions) + "\n")
    return captions


def _stored_settings(stamp: Path) -> dict | None:
    """What shapes.json records, or None when it cannot be read (then it never equals the settings)."""
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


__all__ = [
    "ShapeClip",
    "sample_clip",
    "trajectory",
    "render",
    "shape_centroid",
    "colour_mask",
    "colour_centroid",
    "make_shapes",
    "split_counts",
    "COLOURS",
    "SHAPES",
    "MOTIONS",
    "BACKGROUND",
]
