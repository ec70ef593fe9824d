"""Video and image I/O: decode (decord fast path, PyAV always), resize, fps resampling, encode.

Frames are uint8 arrays `(T, H, W, 3)` in RGB everywhere. decord and PyAV decode through the same
FFmpeg conversion to rgb24, so both backends give identical frames (tests/test_data_video.py checks
it); decord is only preferred because its random access is faster.

Resize policy, shared by every reader (video files, frame folders, HDF5 conversion):
  "squash" - Pillow bicubic straight to S x S, aspect ratio not kept (upstream RIVER / PVG).
  "crop"   - scale the short side to S and keep the centre S x S (Seer, torchvision Resize+CenterCrop);
             done as one Pillow resize of the centre box, so no intermediate image is rounded.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from vpt.errors import UsageError, VptError
from vpt.fsutil import atomic_path

VIDEO_EXTENSIONS = (
    ".mp4",
    ".avi",
    ".mkv",
    ".webm",
    ".mov",
    ".mpg",
    ".mpeg",
    ".m4v",
    ".gif",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
    ".ts",
    ".mts",
    ".m2ts",
    ".vob",
    ".y4m",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
ResizeMode = Literal["squash", "crop"]
Backend = Literal["auto", "pyav", "decord"]

# Containers decord cannot open (it only demuxes through its own video reader).
_DECORD_UNSUPPORTED = (".gif", ".y4m")
_DECORD_AVAILABLE = importlib.util.find_spec("decord") is not None
# Files decord failed on in this process (it rejects some frame widths, e.g. 16, 24, 48, 72 px, with a
# size-mismatch error); they go straight to PyAV next time instead of failing twice.
_DECORD_FAILED: set[str] = set()


class VideoReadError(VptError):
    """A video that cannot be opened or decoded (corrupt, truncated, unknown codec)."""


# --- resize ---------------------------------------------------------------------------------------


def resize_image(image: Image.Image, size: int | None, mode: ResizeMode = "squash") -> Image.Image:
    """Resize one RGB Pillow image to `size` x `size` by the policy in the module docstring."""
    if size is None:
        return image
    width, height = image.size
    if mode == "squash":
        if (width, height) == (size, size):
            return image
        return image.resize((size, size), Image.Resampling.BICUBIC)
    if mode == "crop":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        if side == size and left == int(left) and top == int(top):
            return image.crop((int(left), int(top), int(left) + side, int(top) + side))
        return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    raise UsageError(f"resize must be 'squash' or 'crop', got {mode!r}")


def resize_frames(frames: np.ndarray, size: int | None, mode: ResizeMode = "squash") -> np.ndarray:
    """Resize uint8 frames `(T, H, W, 3)` to `(T, size, size, 3)`; `size=None` returns them as they are."""
    if size is None or (frames.shape[1] == size and frames.shape[2] == size):
        return frames
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        out[t] = np.asarray(resize_image(Image.fromarray(frame), size, mode))
    return out


def read_image(path: str | os.PathLike, size: int | None = None, resize: ResizeMode = "squash") -> np.ndarray:
    """One image file -> uint8 `(H, W, 3)` RGB; see `to_rgb8` for how each image mode is read.

    8-bit PNGs are decoded by FFmpeg's PNG decoder (through PyAV), ~1.5x faster than Pillow and
    bit-identical (PNG is lossless); everything else, and resizing, goes through Pillow.
    """
    try:
        if str(path).lower().endswith(".png"):
            frame = _decode_png(path)
            if frame is not None:
                return resize_frames(frame[None], size, resize)[0]
        with Image.open(path) as image:
            rgb = resize_image(to_rgb8(image), size, resize)
            return np.asarray(rgb)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise VideoReadError(f"{path}: cannot read image ({exc})") from None


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB with each mode's full range mapped onto 0..255 (Pillow's convert("RGB") clips 16-bit to white).

    16-bit grey (I;16*, and I as 16-bit PNGs open) is scaled by 255/65535, so 32768 -> 128; an I image
    outside 0..65535 and 32-bit float (F) images have no known range and are refused. Alpha (RGBA, LA,
    a palette's transparency) is ignored, as FFmpeg's PNG path does; L, P, 1 and CMYK use Pillow's conversion.
    """
    if image.mode in _SIXTEEN_BIT or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"32-bit integer image with values {values.min()}..{values.max()}, not 16-bit; "
                "save it as an 8- or 16-bit PNG"
            )
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")  # uint8 (H, W): mode L
    if image.mode == "F":
        raise ValueError("32-bit float image (its value range is unknown); save it as an 8- or 16-bit PNG")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the palette's colours; going through RGBA avoids Pillow's warning
    return image.convert("RGB")


_PNG_FAST_FORMATS = ("rgb24", "rgba", "gray", "pal8")  # 8-bit layouts whose rgb24 conversion equals Pillow's


def _decode_png(path) -> np.ndarray | None:
    """FFmpeg PNG decode to rgb24, or None when the PNG is one Pillow should handle (16-bit, odd layouts, errors)."""
    import av

    try:
        # A fresh decoder per file: a reused PNG decoder context returns wrong pixels from the second image on.
        frames = av.CodecContext.create("png", "r").decode(av.Packet(Path(path).read_bytes()))
    except av.FFmpegError:
        return None
    if len(frames) != 1 or frames[0].format.name not in _PNG_FAST_FORMATS:
        return None
    return frames[0].to_ndarray(format="rgb24")


def to_uint8_frames(video) -> np.ndarray:
    """A model's video, float `(T, C, H, W)` in [-1, 1] (tensor or array), -> uint8 `(T, H, W, 3)` for writing."""
    array = video.detach().float().cpu().numpy() if hasattr(video, "detach") else np.asarray(video, dtype=np.float32)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"expected a (T, C, H, W) video with C in (1, 3), got shape {array.shape}")
    array = np.clip((array + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if array.shape[1] == 1:
        array = np.repeat(array, 3, axis=1)
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1))  # (T, H, W, 3)


# --- decode ---------------------------------------------------------------------------------------


def video_info(path: str | os.PathLike) -> tuple[int, float, int, int]:
    """(num_frames, fps, height, width) of the first video stream, from the container (no decoding).

    When the container stores no frame count (webm, some avi), packets are counted instead.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 25.0
            height, width = stream.codec_context.height, stream.codec_context.width
            num_frames = stream.frames
            if num_frames <= 0:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except av.FFmpegError as exc:
        raise VideoReadError(f"{path}: cannot open video ({_reason(exc)})") from None
    return num_frames, fps, height, width


_EPS = 1e-6  # floor() guard: k * ratio can land a hair below an integer


def resample_indices(num_frames: int, src_fps: float, dst_fps: float | None) -> np.ndarray:
    """Source frame index for every output frame when `num_frames` at `src_fps` are shown at `dst_fps`.

    Output frame k shows the source frame on screen at time k / dst_fps (the latest one started), so
    lowering the rate drops frames evenly and raising it repeats them. `iter_frames` streams the same.
    """
    if dst_fps is None or math.isclose(dst_fps, src_fps, rel_tol=1e-6):
        return np.arange(num_frames)
    if dst_fps <= 0:
        raise UsageError(f"fps must be positive, got {dst_fps}")
    ratio = src_fps / dst_fps
    count = max(1, math.ceil((num_frames - _EPS) / ratio))
    return np.minimum(np.floor(np.arange(count) * ratio + _EPS).astype(np.int64), num_frames - 1)


def iter_frames(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    resize: ResizeMode = "squash",
    fps: float | None = None,
    backend: Backend = "auto",
    chunk: int = 32,
) -> Iterator[np.ndarray]:
    """Stream every (fps-resampled, resized) frame of a video as uint8 `(H, W, 3)`, in bounded memory.

    Gives the same frames as `read_video(path, size=, resize=, fps=)` without holding the whole video.
    """
    ratio = None
    if fps is not None:
        if fps <= 0:
            raise UsageError(f"fps must be positive, got {fps}")
        src_fps = video_info(path)[1]
        ratio = None if math.isclose(fps, src_fps, rel_tol=1e-6) else src_fps / fps
    next_output = 0
    for position, frame in enumerate(_iter_decoded(path, backend, chunk)):
        if ratio is None:
            yield resize_frames(frame[None], size, resize)[0]
            continue
        resized = None
        while math.floor(next_output * ratio + _EPS) == position:
            resized = resize_frames(frame[None], size, resize)[0] if resized is None else resized
            yield resized
            next_output += 1


def _iter_decoded(path, backend: Backend, chunk: int) -> Iterator[np.ndarray]:
    if _use_decord(path, backend):
        try:
            reader = _decord_reader(path)
            length = len(reader)
            first = reader.get_batch(list(range(min(chunk, length)))).asnumpy()
        except Exception as exc:
            _decord_failed(path, backend, exc)
        else:
            yield from first
            for begin in range(chunk, length, chunk):
                try:
                    batch = reader.get_batch(list(range(begin, min(begin + chunk, length)))).asnumpy()
                except Exception as exc:
                    raise VideoReadError(f"{path}: cannot decode frames from {begin} ({_reason(exc)})") from None
                yield from batch
            return
    yield from _pyav_iter(path)


def read_video(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    resize: ResizeMode = "squash",
    fps: float | None = None,
    start: int = 0,
    num_frames: int | None = None,
    backend: Backend = "auto",
) -> np.ndarray:
    """Decode a video to uint8 `(T, H, W, 3)`.

    `fps` resamples first; `start` and `num_frames` then count output frames. Frame-accurate: the
    frames are the ones a full decode would give at those positions.
    """
    if fps is None and start == 0 and num_frames is None:
        frames = _decode_all(path, backend)
    else:
        total, src_fps, _, _ = video_info(path)
        indices = resample_indices(total, src_fps, fps)[start:]
        if num_frames is not None:
            indices = indices[:num_frames]
        if len(indices) == 0:
            raise VideoReadError(f"{path}: no frames from position {start} (the video has {total} frames)")
        frames = read_frames(path, indices, backend=backend)
    return resize_frames(frames, size, resize)


def read_frames(path: str | os.PathLike, indices, *, backend: Backend = "auto") -> np.ndarray:
    """The frames at `indices` (source frame numbers, any order, repeats allowed) -> uint8 `(len, H, W, 3)`."""
    indices = np.asarray(indices, dtype=np.int64)
    if _use_decord(path, backend):
        try:
            return _decord_reader(path).get_batch(indices.tolist()).asnumpy()
        except Exception as exc:  # decord raises its own error types; PyAV gets a second chance
            _decord_failed(path, backend, exc)
    return _pyav_frames(path, indices)


def _use_decord(path, backend: Backend) -> bool:
    if backend == "pyav":
        return False
    if backend == "decord":
        if not _DECORD_AVAILABLE:
            raise UsageError("backend 'decord' requested but decord is not installed (pip install decord)")
        return True
    if backend != "auto":
        raise UsageError(f"backend must be auto, pyav or decord, got {backend!r}")
    return (
        _DECORD_AVAILABLE and Path(path).suffix.lower() not in _DECORD_UNSUPPORTED and str(path) not in _DECORD_FAILED
    )


def _decord_reader(path):
    import decord

    # One thread: loaders and converters already run one process per core.
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _decode_all(path, backend: Backend) -> np.ndarray:
    if _use_decord(path, backend):
        try:
            reader = _decord_reader(path)
            return reader.get_batch(list(range(len(reader)))).asnumpy()
        except Exception as exc:
            _decord_failed(path, backend, exc)
    return _pyav_frames(path, None)


def _decord_failed(path, backend: Backend, exc: Exception) -> None:
    if backend == "decord":
        raise VideoReadError(f"{path}: decord could not decode ({_reason(exc)})") from None
    _DECORD_FAILED.add(str(path))


def _pyav_iter(path) -> Iterator[np.ndarray]:
    """Sequential PyAV decode of the first video stream to rgb24 frames."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise VideoReadError(f"{path}: cannot decode ({_reason(exc)})") from None


def _pyav_frames(path, indices: np.ndarray | None) -> np.ndarray:
    """Frames at `indices` (all when None) by sequential PyAV decode, stopping after the last one needed."""
    if indices is None:
        frames = list(_pyav_iter(path))
        if not frames:
            raise VideoReadError(f"{path}: no decodable frames")
        return np.stack(frames)
    wanted, last = set(indices.tolist()), int(indices.max())
    decoded: dict[int, np.ndarray] = {}
    for position, frame in enumerate(_pyav_iter(path)):
        if position in wanted:
            decoded[position] = frame
        if position >= last:
            break
    missing = sorted(wanted - decoded.keys())
    if missing:
        available = max(decoded) + 1 if decoded else 0
        raise VideoReadError(f"{path}: frame {missing[0]} requested but only {available} frames decode")
    return np.stack([decoded[i] for i in indices.tolist()])


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


# --- encode ---------------------------------------------------------------------------------------

# suffix -> container, all H.264. No WebM: its VP9 encoder (libvpx) breaks once decord is imported, because
# decord loads its own older libvpx into the global symbol namespace.
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


def write_video(path: str | os.PathLike, frames, fps: float = 8, *, crf: int = 18) -> Path:
    """Write uint8 `(T, H, W, 3)` frames (array or tensor) to .mp4/.mov/.mkv (H.264, yuv420p) or .gif.

    Atomic: the file appears complete or not at all. H.264 in yuv420p needs even sizes, so an odd
    height or width is padded by repeating the last row/column (the decoded video is then 1 px larger).
    `crf` is x264's quality (0 lossless in luma, 18 visually lossless, 23 its default).
    """
    path = Path(path)
    frames = _as_uint8_frames(frames)
    suffix = path.suffix.lower()
    if suffix != ".gif" and suffix not in _CONTAINERS:
        raise UsageError(f"{path}: cannot write video as '{suffix}' (use .mp4, .gif, .mov or .mkv)")
    if fps <= 0:
        raise UsageError(f"fps must be positive, got {fps}")
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".gif":
            _write_gif(tmp, frames, fps)
        else:
            _write_h264(tmp, frames, fps, _CONTAINERS[suffix], crf)
    return path


def _as_uint8_frames(frames) -> np.ndarray:
    array = frames.detach().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or len(array) == 0:
        raise ValueError(f"expected uint8 frames (T, H, W, 3) with T >= 1, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {array.dtype} (see vpt.data.video.to_uint8_frames)")
    return np.ascontiguousarray(array)


def _write_h264(path: Path, frames: np.ndarray, fps: float, container_format: str, crf: int) -> None:
    import av

    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        # One thread: callers parallelise over videos, and single-threaded x264 output is reproducible.
        stream.options = {"crf": str(crf), "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    duration_ms = max(20, int(round(1000.0 / fps)))  # browsers treat < 20 ms as 100 ms
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=duration_ms,
        loop=0,
        optimize=False,
        disposal=1,
    )
