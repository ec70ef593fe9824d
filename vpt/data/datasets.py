"""Clip datasets over HDF5 shards (frames or latents), frame folders, video files and SSv2/Bridge/Epic.

`ClipDataset[key]`: `key` is an int (deterministic: clip from frame 0, no flip - for evaluation) or
a `vpt.training.SampleKey(index, seed)` (clip start, flip drawn from a generator seeded by
`key.seed`, never from global RNG, so every worker and every resumed run draws the same clips).
Sources are opened lazily inside each worker (see `VideoH5`), so datasets pickle cheaply.

Item: {"video": float32 (T, C, H, W) - frames in [-1, 1], latents as stored -, "index": int,
       "text": str (only when the data has captions; "" for a video without one),
       "latent_logvar": float32 (T, c, h, w) (only for latents stored with their KL posterior: "video"
       is then the posterior mean; backends that sample from the posterior use both),
       "padded_frames": int (only with data.pad_short: black frames in front of a short video's),
       "joint_images": int (only with data.joint_images: single frames of random videos after the clip's)}

With `uint8_frames=True` (what the training commands use) frames stay uint8 (T, C, H, W) through
the DataLoader and `on_device(batch)` turns them into [-1, 1] floats on the training device: a
quarter of the bytes through worker queues, pinned memory and the host-to-device copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from vpt.console import warn
from vpt.data.h5 import VideoH5, find_split_dir, is_h5_data
from vpt.data.sources import bridge_source, epic_source, folder_source, split_dirs, ssv2_source
from vpt.data.video import resize_frames
from vpt.errors import ConfigError, UsageError, VptError

DataFormat = Literal["auto", "h5", "frames", "ssv2", "bridge", "epic"]


@dataclass
class DataConfig:
    """The `data:` section: where clips come from and how they are cut."""

    path: str = ""  # HDF5 root or split dir (frames or latents), train/val/test tree of videos or frame folders, or an SSv2/Bridge/Epic root
    format: DataFormat = "auto"  # "frames" = video files and/or frame folders; auto detects HDF5, SSv2, Bridge, Epic
    split: str = "train"
    frames: int = 16  # frames per clip
    frame_skip: int = 0  # frames skipped between clip frames (stride = frame_skip + 1), upstream's skip_frames
    clip_sampling: Literal["random", "uniform", "trilinear"] = (
        "random"  # random window | whole video at T evenly spaced frames | Seer's trilinear blend of the whole video
    )
    image_size: Optional[int] = None  # resize frames to S x S; None keeps the stored size (ignored for latents)
    resize: Literal["squash", "crop"] = "squash"  # squash to S x S (RIVER) or short side + centre crop (Seer)
    hflip: bool = False  # flip each training clip horizontally with probability 1/2
    # Image-video joint training (Latte's model.num_images, which must equal it): single frames appended to
    # each clip, each from a video drawn from the whole dataset at a frame drawn from all of its frames, as
    # VideoGeneration-PyTorch's loader draws them. 0: the model takes the extra frames of the next clip instead.
    joint_images: int = 0
    # Keep videos shorter than a clip span (at least half a clip long): half a clip of their frames, padded in
    # front with black frames, as PVDM's SkyTimelapse loader does; items say so, and PVDM zeroes their condition.
    pad_short: bool = False
    # With clip_sampling trilinear, a video shorter than `frames`: blended up to them ("stretch"), or kept frame for
    # frame and followed by frames of zeros in [-1, 1] (mid-grey), as Seer upstream's loader pads it ("pad_end").
    short_videos: Literal["stretch", "pad_end"] = "stretch"

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"data.frames must be >= 1, got {self.frames}")
        if self.frame_skip < 0:
            raise ValueError(f"data.frame_skip must be >= 0, got {self.frame_skip}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {self.image_size}")
        if self.joint_images < 0:
            raise ValueError(f"data.joint_images must be >= 0, got {self.joint_images}")
        if self.pad_short and self.clip_sampling != "random":
            raise ValueError(
                f"data.pad_short pads random clips; clip_sampling {self.clip_sampling!r} already reads whole videos"
            )
        if self.pad_short and self.frames % 2:
            raise ValueError(
                f"data.pad_short needs an even data.frames (half black, half the video's), got {self.frames}"
            )
        if self.short_videos == "pad_end" and self.clip_sampling != "trilinear":
            raise ValueError(
                f"data.short_videos: pad_end pads trilinear clips; clip_sampling {self.clip_sampling!r} does not blend"
            )

    @property
    def span(self) -> int:
        """Source frames one random clip covers: (skip + 1)(T - 1) + 1."""
        return self.span_of(self.frames)

    def span_of(self, frames: int) -> int:
        """Source frames a random window of `frames` frames covers."""
        return (self.frame_skip + 1) * (frames - 1) + 1

    @property
    def shortest(self) -> int:
        """The fewest frames a training video may have: a clip span, or half of one's frames with pad_short."""
        return self.span_of(self.frames // 2) if self.pad_short else self.span


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if is_h5_data(path):
        return "h5"
    if (path / "annotations").is_dir() and any(
        (path / "annotations" / f).is_file() for f in ("train.json", "validation.json")
    ):
        return "ssv2"
    if any(p.is_file() for p in (path / "path_id_bridgedata.txt", path / "dataset" / "path_id_bridgedata.txt")):
        return "bridge"
    if any(path.glob("EPIC_100_*.csv")) or any(path.glob("*/EPIC_100_*.csv")):
        return "epic"
    return "frames"


def open_source(path: str | Path, split: str = "train", format: str = "auto"):
    """The video source (`VideoH5` or `EntrySource`) for one split of the data at `path`."""
    if not str(path):
        raise ConfigError(
            "data.path is empty: point it at HDF5 shards, a folder of videos/frame folders, or use --data"
        )
    path = Path(path)
    if not path.exists():
        raise UsageError(f"data path not found: {path}")
    kind = detect_format(path) if format == "auto" else format
    if kind == "h5":
        return VideoH5(find_split_dir(path, split))
    if kind == "ssv2":
        return ssv2_source(path, split)
    if kind == "bridge":
        return bridge_source(path, split)
    if kind == "epic":
        return epic_source(path, split)
    if kind != "frames":
        raise ConfigError(f"data.format: unknown format {format!r}")
    splits = split_dirs(path)
    if split in splits:
        return folder_source(splits[split], split=split, caption_dirs=[path])
    if splits:
        raise UsageError(f"{path}: no '{split}' folder (found: {', '.join(sorted(splits))})")
    return folder_source(path)  # a flat folder is one split


def clip_indices(length: int, frames: int, frame_skip: int, start: int) -> np.ndarray:
    """Source frame numbers of a strided clip beginning at `start`."""
    return start + np.arange(frames) * (frame_skip + 1)


def clip_start(length: int, span: int, generator: np.random.Generator | None) -> int:
    """Random start uniform over 0 ... length - span inclusive (upstream RIVER stops one short)."""
    if length < span:
        raise VptError(f"a video of {length} frames is shorter than the clip span {span}")
    return 0 if generator is None else int(generator.integers(0, length - span + 1))


def whole_video_indices(length: int, frames: int) -> np.ndarray:
    """`frames` source frames evenly spread over the whole video (nearest, no blending)."""
    return np.minimum(np.floor((np.arange(frames) + 0.5) * length / frames).astype(np.int64), length - 1)


def trilinear_resample(video: torch.Tensor, frames: int) -> torch.Tensor:
    """Seer upstream: linear blend along time to `frames` frames (align_corners=False). (N, C, H, W) -> (T, C, H, W)."""
    stacked = rearrange(video, "n c h w -> 1 c n h w")
    resampled = torch.nn.functional.interpolate(
        stacked, size=(frames, *video.shape[-2:]), mode="trilinear", align_corners=False
    )
    return rearrange(resampled, "1 c t h w -> t c h w")


def pad_end(video: torch.Tensor, frames: int) -> torch.Tensor:
    """Seer upstream's short videos: zero frames after the video's own. (N, C, H, W) -> (frames, C, H, W), N <= frames."""
    return torch.cat([video, video.new_zeros(frames - len(video), *video.shape[1:])])


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in [-1, 1], i.e. x / 127.5 - 1 (one pass; ~2x torch's float().div().sub())."""
    out = np.empty(
        (frames.shape[0], frames.shape[3], frames.shape[1], frames.shape[2]), dtype=np.float32
    )  # (T, C, H, W)
    np.multiply(rearrange(frames, "t h w c -> t c h w"), np.float32(1 / 127.5), out=out, dtype=np.float32)
    out -= 1.0
    return torch.from_numpy(out)


class _SourceDataset(Dataset):
    """Shared plumbing: open the source, decide frames vs latents, turn raw arrays into tensors."""

    def __init__(self, config: DataConfig, source=None, *, uint8_frames: bool = False):
        self.config = config
        self.uint8_frames = uint8_frames
        self.source = source if source is not None else open_source(config.path, config.split, config.format)
        self.is_latent = getattr(self.source, "kind", "frames") == "latents"
        # `vpt save-latents` of a KL autoencoder: every step is mean || log-variance on the channel axis
        self.has_posterior = self.is_latent and bool(getattr(self.source, "attrs", {}).get("latent_posterior", False))
        self.has_text = bool(self.source.has_text)
        if self.is_latent and config.hflip:
            raise ConfigError(
                "data.hflip cannot be used with latent HDF5 (a flipped latent is not the latent of the flipped frames)"
            )
        if self.is_latent and config.pad_short:
            raise ConfigError(
                "data.pad_short pads frames with black frames, which latent HDF5 cannot hold: train on the frames (--ae)"
            )
        if self.is_latent and config.short_videos == "pad_end":
            raise ConfigError(
                "data.short_videos: pad_end pads frames with grey frames, which latent HDF5 cannot hold: "
                "train on the frames (--ae)"
            )

    def _tensors(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        """The item's tensors: {"video"}, or {"video": mean, "latent_logvar"} for posterior latents."""
        if not self.has_posterior:
            return {"video": self._to_tensor(raw)}
        mean, logvar = self._to_tensor(raw).chunk(2, dim=1)  # (T, c, h, w) each
        return {"video": mean, "latent_logvar": logvar}

    def _to_tensor(self, raw: np.ndarray) -> torch.Tensor:
        if self.is_latent:
            return torch.from_numpy(np.ascontiguousarray(raw)).float()  # (T, c, h, w), or (T, c, L) for PVDM
        if self.uint8_frames and self.config.clip_sampling != "trilinear":  # the blend needs floats
            frames = resize_frames(raw, self.config.image_size, self.config.resize)
            return torch.from_numpy(np.ascontiguousarray(rearrange(frames, "t h w c -> t c h w")))  # (T, 3, H, W) uint8
        return frames_to_tensor(resize_frames(raw, self.config.image_size, self.config.resize))  # (T, 3, H, W)

    @staticmethod
    def on_device(batch: dict[str, Any]) -> dict[str, Any]:
        """uint8 frames (B, T, C, H, W) -> float32 in [-1, 1], on whatever device the batch is on."""
        video = batch["video"]
        if video.dtype == torch.uint8:
            batch = {**batch, "video": video.float().div_(127.5).sub_(1.0)}
        return batch

    def _item(self, index: int, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        item: dict[str, Any] = {**tensors, "index": index}
        if self.has_text:
            item["text"] = self.source.text(self._source_index(index)) or ""
        return item

    def _source_index(self, index: int) -> int:
        return index


class ClipDataset(_SourceDataset):
    """Fixed-length clips for training: T frames every `frame_skip + 1` from a random start.

    HDF5 videos shorter than one clip (with `pad_short`: than half of one) are left out (with a
    warning); for folders and video files, whose lengths are only known when read, a short video is an
    error naming it.

    With `pad_short`, a video shorter than the clip span gives half a clip of its frames at the end of
    the clip, after as many black frames; the item's "padded_frames" counts them (0 for a whole clip).
    With `clip_sampling: trilinear` and `short_videos: pad_end`, a video shorter than the clip is followed
    by frames of zeros (`pad_end`).
    With `joint_images`, single frames of random videos follow the clip's frames (`_joint_images`).
    """

    def __init__(self, config: DataConfig, source=None, *, uint8_frames: bool = False):
        super().__init__(config, source, uint8_frames=uint8_frames)
        self._usable = np.arange(len(self.source))
        if config.clip_sampling == "random" and isinstance(self.source, VideoH5):
            long_enough = self.source.lengths >= config.shortest
            if not long_enough.all():
                warn(
                    f"{self.source.path}: {int((~long_enough).sum())} of {len(long_enough)} videos are shorter than "
                    f"{config.shortest} frames ({'half ' if config.pad_short else ''}the clip span) and are left out"
                )
            self._usable = np.flatnonzero(long_enough)
        if len(self._usable) == 0:
            raise UsageError(
                f"{config.path}: no video is long enough for {config.frames} frames with frame_skip {config.frame_skip}"
            )

    def __len__(self) -> int:
        return len(self._usable)

    def _source_index(self, index: int) -> int:
        return int(self._usable[index])

    def __getitem__(self, key) -> dict[str, Any]:
        index, seed = (int(key.index), int(key.seed)) if hasattr(key, "seed") else (int(key), None)
        generator = None if seed is None else np.random.default_rng(seed)
        source_index = self._source_index(index)
        length = self.source.num_frames(source_index)
        cfg = self.config
        padding = 0
        if cfg.clip_sampling == "random":
            padding = cfg.frames // 2 if cfg.pad_short and length < cfg.span else 0
            try:
                start = clip_start(length, cfg.span_of(cfg.frames - padding), generator)
            except VptError as exc:
                raise VptError(f"{self.source.name(source_index) or source_index}: {exc}") from None
            raw = self.source.read(source_index, clip_indices(length, cfg.frames - padding, cfg.frame_skip, start))
            black = np.zeros((padding, *raw.shape[1:]), dtype=raw.dtype)  # pixel 0, i.e. -1 in [-1, 1]
            tensors = self._tensors(np.concatenate([black, raw]))
        elif cfg.clip_sampling == "uniform":
            tensors = self._tensors(self.source.read(source_index, whole_video_indices(length, cfg.frames)))
        else:
            whole = self._tensors(self.source.read(source_index))
            fit = pad_end if cfg.short_videos == "pad_end" and length < cfg.frames else trilinear_resample
            tensors = {name: fit(value, cfg.frames) for name, value in whole.items()}
        if cfg.joint_images:  # an evaluation key (no seed) draws the same images for the same index every time
            images = self._joint_images(generator or np.random.default_rng(index))
            tensors = {name: torch.cat([value, images[name]]) for name, value in tensors.items()}
        if cfg.hflip and generator is not None and generator.random() < 0.5:
            tensors["video"] = tensors["video"].flip(-1)  # frames only: latents refuse hflip
        item = self._item(index, tensors)
        if cfg.pad_short:
            item["padded_frames"] = padding
        if cfg.joint_images:
            item["joint_images"] = cfg.joint_images
        return item

    def _joint_images(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """`data.joint_images` single frames as the item's tensors ((N, C, H, W) each): for each, a video
        uniform over the whole dataset (short ones included), then a frame uniform over all of its frames."""
        images = []
        for _ in range(self.config.joint_images):
            video = int(generator.integers(0, len(self.source)))
            frame = int(generator.integers(0, self.source.num_frames(video)))
            images.append(self._tensors(self.source.read(video, np.array([frame]))))
        return {name: torch.cat([image[name] for image in images]) for name in images[0]}


class VideoDataset(_SourceDataset):
    """Whole videos for evaluation: item i is every frame of video i (at most `max_frames`), in order."""

    def __init__(self, config: DataConfig, source=None, *, max_frames: int | None = None):
        super().__init__(config, source)
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key) -> dict[str, Any]:
        index = int(key.index) if hasattr(key, "index") else int(key)
        length = self.source.num_frames(index)
        count = length if self.max_frames is None else min(length, self.max_frames)
        return self._item(index, self._tensors(self.source.read(index, np.arange(count))))


__all__ = [
    "DataConfig",
    "ClipDataset",
    "VideoDataset",
    "open_source",
    "detect_format",
    "clip_start",
    "clip_indices",
    "whole_video_indices",
    "trilinear_resample",
    "pad_end",
    "frames_to_tensor",
]
