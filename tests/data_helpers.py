"""Small media builders shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vpt.data.video import write_video


def moving_clip(frames: int = 12, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3): a textured square drifting over a gradient, so every frame differs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), (xx + yy) % 256], -1).astype(
        np.uint8
    )
    side = max(4, min(16, height // 2, width // 2) // 4 * 4)
    texture = np.kron(
        rng.integers(0, 256, (side // 4, side // 4, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8)
    )  # 4 px blocks
    video = np.repeat(base[None], frames, axis=0)
    top = min(8, height - side)
    for t in range(frames):
        x = (3 * t) % max(1, width - side)
        video[t, top : top + side, x : x + side] = texture
    return video


def write_clip(path: Path, frames: int = 12, size: int = 64, seed: int = 0) -> Path:
    write_video(path, moving_clip(frames, size, size, seed), fps=8, crf=12)
    return path


def frame_folder(folder: Path, video: np.ndarray, ext: str = "png", pattern: str = "{:05d}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(video):
        Image.fromarray(frame).save(folder / f"{pattern.format(t)}.{ext}")
    return folder


def numbered_video(frames: int, size: int = 8) -> np.ndarray:
    """Frame t is filled with the value t, so a read clip tells which source frames it holds."""
    return np.broadcast_to(np.arange(frames, dtype=np.uint8)[:, None, None, None], (frames, size, size, 3)).copy()


def shapes_h5(root: Path, *, num_videos: int, frames: int, size: int = 32, seed: int = 0) -> Path:
    """`vpt make-data shapes` videos under root/videos converted to HDF5 shards under root/h5 (returned)."""
    from vpt.data.convert import convert_h5
    from vpt.data.shapes import make_shapes

    make_shapes(root / "videos", num_videos=num_videos, frames=frames, size=size, seed=seed, workers=1)
    convert_h5(root / "videos", root / "h5", image_size=size, workers=1)
    return root / "h5"
