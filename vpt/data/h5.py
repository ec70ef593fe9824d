"""HDF5 video shards: vpt's layout, upstream RIVER's layout, one reader for both.

vpt layout (root attr `vpt_layout = "vpt"`, `vpt_layout_version = 1`), one file per shard:

    /videos/<i>   one dataset per video: frames (T, H, W, 3) uint8, chunked one frame per chunk
                  (a strided clip is one read of T chunks), LZF by default; or latents (T, c, h, w),
                  or (T, c, L) for PVDM's flattened planes, float16/float32 (root attr `kind = "latents"`)
    /lengths      (N,) int64, frames per video (the reader needs no per-video lookups to index)
    /names        (N,) str, where each video came from (relative source path)
    /text         (N,) str, caption per video ("" when none), only when the data had captions
    root attrs    vpt_layout, vpt_layout_version, kind, and what the writer adds (size, AE identity...)

RIVER layout (upstream's converter; written by `--layout river`): `/len/<i>` scalar int64, an empty
`/videos` group, `/<i>/<j>` one (S, S, 3) uint8 LZF dataset per frame, no root attributes.

Both name their shards `shard_0001.hdf5`, ... and index videos from 0 in each shard; a split is a
directory of shards, read in file-name order.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vpt.errors import UsageError
from vpt.fsutil import fsync_dir

Layout = Literal["vpt", "river"]
LAYOUT_ATTR = "vpt_layout"
VERSION_ATTR = "vpt_layout_version"
LAYOUT_VERSION = 1
SHARD_SUFFIXES = (".hdf5", ".h5")
SPLIT_ALIASES = {"val": ("val", "validation", "valid"), "test": ("test", "testing"), "train": ("train", "training")}
# Free space a shard writer keeps in reserve for HDF5's own metadata: a base, plus per video written
# (its object header and chunk index, cached until the file is closed) and per frame (index entries).
SPACE_RESERVE, SPACE_PER_VIDEO, SPACE_PER_FRAME = 256 << 10, 8 << 10, 1 << 10


def shard_name(number: int) -> str:
    """File name of shard `number` (1-based, as upstream)."""
    return f"shard_{number:04d}.hdf5"


def list_shards(directory: str | os.PathLike) -> list[Path]:
    """The shard files of a split directory, in reading order (file name)."""
    directory = Path(directory)
    if directory.is_file():
        return [directory] if directory.suffix in SHARD_SUFFIXES else []
    if not directory.is_dir():
        return []
    return sorted(
        (p for p in directory.iterdir() if p.suffix in SHARD_SUFFIXES and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def find_split_dir(root: str | os.PathLike, split: str) -> Path:
    """The directory (or single file) holding the shards of `split` under a data root.

    Accepts `root/<split>/` (also `validation`/`valid` for val, ...), a split directory itself, or
    one shard file.
    """
    root = Path(root)
    if not root.exists():
        raise UsageError(f"data path not found: {root}")
    for name in SPLIT_ALIASES.get(split, (split,)):
        if list_shards(root / name):
            return root / name
    if list_shards(root):
        return root
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and list_shards(p)) if root.is_dir() else []
    hint = (
        f" (splits found: {', '.join(found)})" if found else " (no .hdf5/.h5 files found; run `vpt convert-h5` first)"
    )
    raise UsageError(f"{root}: no HDF5 shards for split '{split}'{hint}")


def is_h5_data(path: str | os.PathLike) -> bool:
    """True when `path` is a shard, a split directory of shards, or a root whose split folders hold shards."""
    path = Path(path)
    if list_shards(path):
        return True
    return path.is_dir() and any(list_shards(p) for p in path.iterdir() if p.is_dir())


# --- writing --------------------------------------------------------------------------------------


class ShardWriter:
    """Writes one shard file atomically: a temp file beside it, renamed into place by `close()`.

    Use as a context manager; an exception discards the temp file and leaves no shard behind, so a
    shard that exists is always complete (resume relies on this). `attrs` become root attributes:
    strings, numbers or arrays (JSON-encode anything nested).

        with ShardWriter(path, kind="latents", attrs={"ae": "vqgan-f8", "scale": 1.0}) as shard:
            shard.add(latents, name="train/00000.mp4")        # (T, c, h, w) float16
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        layout: Layout = "vpt",
        kind: Literal["frames", "latents"] = "frames",
        attrs: Mapping[str, Any] | None = None,
        compression: str | None = "lzf",
    ):
        import h5py

        if layout not in ("vpt", "river"):
            raise UsageError(f"layout must be 'vpt' or 'river', got {layout!r}")
        if layout == "river" and (kind != "frames" or attrs):
            raise UsageError("the RIVER layout holds uint8 frames only and no attributes")
        self.path, self.layout, self.kind = Path(path), layout, kind
        self.compression = None if compression in (None, "none") else compression
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file = h5py.File(self._tmp, "w")
        self._lengths: list[int] = []
        self._names: list[str] = []
        self._texts: list[str | None] = []
        if layout == "river":
            self._file.create_group("len")
            self._file.create_group("videos")
        else:
            self._file.attrs[LAYOUT_ATTR] = "vpt"
            self._file.attrs[VERSION_ATTR] = LAYOUT_VERSION
            self._file.attrs["kind"] = kind
            for key, value in (attrs or {}).items():
                self._file.attrs[key] = value
            self._file.create_group("videos")

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, video: np.ndarray | CompressedChunks, *, text: str | None = None, name: str | None = None) -> int:
        """Append one video: uint8 frames (T, H, W, 3) or latents (T, c, h, w) / (T, c, L). Returns its index in the shard.

        `video` may also be `CompressedChunks` (vpt layout) that `compress_chunks` made in a worker
        process: they are copied into the file as they are, so the one writing process compresses nothing.
        """
        compressed = video if isinstance(video, CompressedChunks) else None
        if compressed is not None:
            shape, dtype = compressed.shape, np.dtype(compressed.dtype)
        else:
            video = np.asarray(video)
            shape, dtype = video.shape, video.dtype
        index = len(self._lengths)
        self._ensure_space(
            (sum(len(c) for _, c in compressed.chunks) if compressed is not None else video.nbytes)
            + SPACE_PER_FRAME * shape[0]
        )
        if self.kind == "frames" and (dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3):
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {dtype} {shape}")
        if self.kind == "latents" and (len(shape) not in (3, 4) or dtype not in (np.float16, np.float32)):
            raise ValueError(f"latents must be float16/float32 (T, c, h, w) or (T, c, L), got {dtype} {shape}")
        if self.layout == "river":
            if compressed is not None:
                raise ValueError("the RIVER layout is written from frames, not pre-compressed chunks")
            self._file["len"].create_dataset(str(index), data=np.int64(len(video)))
            group = self._file.create_group(str(index))
            for j, frame in enumerate(video):
                group.create_dataset(str(j), data=frame, compression="lzf")  # chunks chosen by h5py, as upstream
        elif compressed is not None:
            if compressed.compression != self.compression:
                raise ValueError(f"chunks compressed with {compressed.compression!r}, shard uses {self.compression!r}")
            dataset = self._file["videos"].create_dataset(
                str(index),
                shape=shape,
                dtype=dtype,
                chunks=(1, *shape[1:]),
                compression=self.compression,
            )
            origin = (0,) * (len(shape) - 1)
            for t, (filter_mask, chunk) in enumerate(compressed.chunks):
                dataset.id.write_direct_chunk((t, *origin), chunk, filter_mask=filter_mask)
        else:
            self._file["videos"].create_dataset(
                str(index),
                data=video,
                chunks=(1, *shape[1:]),
                compression=self.compression,
            )
        self._lengths.append(shape[0])
        self._names.append(name or "")
        self._texts.append(text)
        return index

    def close(self) -> Path:
        """Write the index datasets, close the file and move it into place."""
        import h5py

        try:
            self._ensure_space(sum(len(n) + len(t or "") + 8 for n, t in zip(self._names, self._texts)))
            if self.layout == "vpt":
                strings = h5py.string_dtype("utf-8")
                self._file.create_dataset("lengths", data=np.asarray(self._lengths, dtype=np.int64))
                self._file.create_dataset("names", data=self._names, dtype=strings)
                if any(text is not None for text in self._texts):
                    self._file.create_dataset("text", data=[t or "" for t in self._texts], dtype=strings)
            self._file.close()
            with open(self._tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(self._tmp, self.path)
        except BaseException:  # e.g. the disk filled up while HDF5 flushed its buffers
            self.discard()
            raise
        fsync_dir(self.path.parent)
        return self.path

    def _ensure_space(self, nbytes: int) -> None:
        """Raise the ENOSPC a plain write would, before HDF5 meets a full disk.

        HDF5 cannot fail a write cleanly: the error surfaces in destructors (printed, not raised), the
        file is left inconsistent and the process may crash. So the writer checks first.
        """
        stats = os.statvfs(self._tmp.parent)
        needed = nbytes + SPACE_RESERVE + SPACE_PER_VIDEO * (len(self._lengths) + 1)
        if stats.f_bavail * stats.f_frsize < needed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    def discard(self) -> None:
        """Drop everything written so far; no shard file appears."""
        # Emptying the file first frees the space a full disk lacked, so HDF5 can flush and close it
        # (otherwise it retries, and prints errors, whenever an object of the file is collected).
        with contextlib.suppress(OSError):
            os.truncate(self._tmp, 0)
        try:
            self._file.close()
        except Exception:  # it may still refuse; the temp file goes anyway
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


@dataclass(frozen=True)
class CompressedChunks:
    """One video as vpt-layout HDF5 chunks, already compressed: (filter mask, bytes) per frame."""

    compression: str | None
    shape: tuple[int, ...]
    dtype: str
    chunks: list[tuple[int, bytes]]

    def __len__(self) -> int:
        return self.shape[0]


def compress_chunks(video: np.ndarray, compression: str | None = "lzf") -> CompressedChunks:
    """Compress a video into vpt-layout chunks (one per frame) in this process, for `ShardWriter.add(compressed=)`.

    Converters call it in their worker processes: compression is the costly part of writing a shard,
    and HDF5 files cannot be written by several processes, but their chunks can be made anywhere.
    """
    import h5py

    compression = None if compression in (None, "none") else compression
    with h5py.File(f"chunks-{os.getpid()}", "w", driver="core", backing_store=False) as scratch:
        dataset = scratch.create_dataset("v", data=video, chunks=(1, *video.shape[1:]), compression=compression)
        origin = (0,) * (video.ndim - 1)
        chunks = [dataset.id.read_direct_chunk((t, *origin)) for t in range(len(video))]
    return CompressedChunks(compression, tuple(video.shape), video.dtype.str, chunks)


def shard_damage(path: str | os.PathLike, *, size: int | None, videos: int) -> str | None:
    """Why a finished shard cannot be trusted, or None when it looks intact.

    Cheap checks a resumed run can afford on every shard: the size recorded when the shard was
    written (None: not recorded), HDF5 can open it, and it holds `videos` videos.
    """
    import h5py

    actual = os.path.getsize(path)
    if size is not None and actual != size:
        return f"size {actual:,} bytes, {size:,} when written"
    try:
        with h5py.File(path, "r") as handle:
            count = len(handle["lengths"]) if "lengths" in handle else len(handle["len"])
    except (OSError, KeyError) as exc:
        return f"unreadable: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
    if count != videos:
        return f"{count} videos, {videos} expected"
    return None


# --- reading --------------------------------------------------------------------------------------


class _ShardMeta:
    __slots__ = ("path", "layout", "lengths", "names", "texts")

    def __init__(self, path: Path, layout: str, lengths: np.ndarray, names: list[str] | None, texts: list[str] | None):
        self.path, self.layout, self.lengths, self.names, self.texts = path, layout, lengths, names, texts


def _decode(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _read_meta(path: Path) -> tuple[_ShardMeta, dict[str, Any]]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            if attrs.get(LAYOUT_ATTR) == "vpt":
                if int(attrs.get(VERSION_ATTR, 0)) > LAYOUT_VERSION:
                    raise UsageError(
                        f"{path}: written by a newer vpt (layout version {attrs[VERSION_ATTR]}); upgrade vpt"
                    )
                lengths = f["lengths"][()].astype(np.int64)
                names = _decode(f["names"][()])
                texts = _decode(f["text"][()]) if "text" in f else None
                return _ShardMeta(path, "vpt", lengths, names, texts), attrs
            if "len" in f:
                group = f["len"]
                lengths = np.asarray([int(group[str(i)][()]) for i in range(len(group))], dtype=np.int64)
                return _ShardMeta(path, "river", lengths, None, None), attrs
    except OSError as exc:
        raise UsageError(f"{path}: not a readable HDF5 file ({exc})") from None
    except KeyError as exc:  # h5py's message names the missing dataset
        raise UsageError(f"{path}: damaged shard ({exc.args[0]})") from None
    raise UsageError(f"{path}: neither a vpt nor a RIVER shard (no '{LAYOUT_ATTR}' attribute, no /len group)")


class VideoH5:
    """All shards of one split as one indexable collection of videos (both layouts, frames or latents).

    Only metadata is read at construction; shard files are opened on first access in each process
    and never shared across a fork, so an instance can be handed to DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        shards = list_shards(self.path)
        if not shards:
            raise UsageError(f"{self.path}: no .hdf5/.h5 shards found")
        metas, attrs = zip(*(_read_meta(p) for p in shards))
        self._shards: list[_ShardMeta] = list(metas)
        self.attrs: dict[str, Any] = dict(attrs[0])
        self.layout: str = self._shards[0].layout
        self.kind: str = self.attrs.get("kind", "frames")
        self.lengths = np.concatenate([m.lengths for m in self._shards]) if self._shards else np.zeros(0, np.int64)
        self._starts = np.cumsum([0] + [len(m.lengths) for m in self._shards])
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    # --- index ---
    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shard_paths(self) -> list[Path]:
        return [m.path for m in self._shards]

    def shard_range(self, shard: int) -> range:
        """Global indices of the videos in shard number `shard` (0-based position in `shard_paths`)."""
        return range(int(self._starts[shard]), int(self._starts[shard + 1]))

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"video {index} out of range (the split has {len(self)} videos)")
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        return shard, index - int(self._starts[shard])

    def num_frames(self, index: int) -> int:
        return int(self.lengths[index])

    @property
    def has_text(self) -> bool:
        return any(m.texts is not None for m in self._shards)

    def text(self, index: int) -> str | None:
        shard, local = self._locate(index)
        texts = self._shards[shard].texts
        return texts[local] if texts is not None else None

    def name(self, index: int) -> str | None:
        shard, local = self._locate(index)
        names = self._shards[shard].names
        return names[local] if names is not None and names[local] else None

    # --- data ---
    def _file(self, shard: int):
        import h5py

        if os.getpid() != self._pid:  # forked: handles opened by the parent must not be reused
            self._files, self._pid = {}, os.getpid()
        handle = self._files.get(shard)
        if handle is None:
            handle = self._files[shard] = h5py.File(self._shards[shard].path, "r")
        return handle

    def read(self, index: int, frame_indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 or latents (T, *latent_dims) of video `index` at `frame_indices` (all when None)."""
        shard, local = self._locate(index)
        length = self.num_frames(index)
        if frame_indices is None:
            frame_indices = np.arange(length)
        frame_indices = np.asarray(frame_indices, dtype=np.int64)
        if len(frame_indices) and (frame_indices.min() < 0 or frame_indices.max() >= length):
            raise IndexError(
                f"frames {frame_indices.min()}..{frame_indices.max()} outside video {index} ({length} frames)"
            )
        handle = self._file(shard)
        if self._shards[shard].layout == "river":
            group = handle[str(local)]
            return np.stack([group[str(j)][()] for j in frame_indices.tolist()])
        dataset = handle["videos"][str(local)]
        return _read_rows(dataset, frame_indices)

    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one stored frame: (H, W, 3) for frames, (c, h, w) or (c, L) for latents."""
        return tuple(self.read(0, [0]).shape[1:])

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass


def _read_rows(dataset, rows: np.ndarray) -> np.ndarray:
    """dataset[rows] in one HDF5 read: a strided slice when `rows` is an arithmetic run, else sorted fancy indexing."""
    if len(rows) == 0:
        return np.zeros((0, *dataset.shape[1:]), dtype=dataset.dtype)
    if len(rows) == 1:
        return dataset[int(rows[0]) : int(rows[0]) + 1]
    steps = np.diff(rows)
    if steps[0] > 0 and np.all(steps == steps[0]):
        return dataset[int(rows[0]) : int(rows[-1]) + 1 : int(steps[0])]
    unique, inverse = np.unique(rows, return_inverse=True)
    return dataset[unique][inverse]
