"""Resumable evaluation: the finished batches of `vpt eval-fvd`, kept on disk.

Each finished batch (per-frame scores and I3D features) is written atomically as one .npz named by its
first clip index, in a folder whose name hashes everything that changes those arrays. The same command
run again after a kill loads the stored batches instead of computing them: nothing finished is sampled
again, and since every batch is seeded on its own the numbers are those of an uninterrupted run.

The I3D features of a set of clips (the real set in both modes, the fake set with --real/--fake) are
keyed only by what they depend on - the files, how clips are cut, the detector's sha256 and the preset -
so evaluating another model on the same test set skips the real features.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpt.errors import VptError
from vpt.fsutil import atomic_path, atomic_write_text

CACHE_FORMAT = 1  # bump when what a batch file holds changes
DEFAULT_FOLDER = ".vpt-eval-cache"
# the `PredictionProtocol` fields that change a batch's arrays (pooling and reductions come after them)
SAMPLING_FIELDS = (
    "context_frames",
    "predicted_frames",
    "samples",
    "context_in_fvd",
    "steps",
    "seed",
    "batch_size",
    "precision",
)


def digest(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]


class BatchStore:
    """One .npz per finished batch in `folder`; counts what it loaded and what it saved."""

    def __init__(self, folder: Path, description: dict):
        self.folder, self.description = Path(folder), description
        self.reused = self.computed = 0

    def _path(self, first: int) -> Path:
        return self.folder / f"batch-{first:08d}.npz"

    def load(self, batch: list[int]) -> dict[str, np.ndarray] | None:
        """The stored arrays of `batch` (its clip indices), or None when it has not been finished."""
        path = self._path(batch[0])
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # an object array is a ValueError
            detail = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise VptError(
                f"{path}: not an eval-cache batch ({detail}); delete it to compute that batch again"
            ) from None
        if any(len(values) != len(batch) for values in arrays.values()):
            return None  # written under another batch size: the key should have differed, so recompute
        self.reused += 1
        return arrays

    def save(self, first: int, arrays: dict[str, np.ndarray]) -> None:
        if not (self.folder / "key.json").is_file():  # what the folder name hashes, for a reader
            atomic_write_text(self.folder / "key.json", json.dumps(self.description, indent=2, default=str) + "\n")
        with atomic_path(self._path(first), suffix=".npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        self.computed += 1

    def record(self, accelerator=None) -> dict[str, Any]:
        """Folder and batch counts of all processes (a collective call under several processes)."""
        counts = [(self.reused, self.computed)]
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            counts = gather_object(counts)
        return {
            "dir": str(self.folder),
            "reused_batches": sum(r for r, _ in counts),
            "computed_batches": sum(c for _, c in counts),
        }


def split_plan(store: BatchStore | None, plan: list[list[int]]) -> tuple[list[tuple[int, dict]], list[list[int]]]:
    """(first index, arrays) of the batches of `plan` already stored, and the batches still to compute."""
    done, todo = [], []
    for batch in plan:
        arrays = store.load(batch) if store is not None else None
        if arrays is None:
            todo.append(batch)
        else:
            done.append((batch[0], arrays))
    return done, todo


@dataclass
class EvalCache:
    """Where one evaluation keeps its batches (`batches`) and the real set's I3D features (`real`)."""

    batches: BatchStore
    real: BatchStore | None  # None without FVD

    def record(self, accelerator=None) -> dict[str, Any]:
        record = self.batches.record(accelerator)
        record["real"] = self.real.record(accelerator) if self.real is not None else None
        return record


def record_repeats(caches: list[EvalCache], accelerator=None) -> dict[str, Any]:
    """The record of the caches of one evaluation repeated under several sampling seeds (one each): every
    batch folder, and the batch counts summed. One cache gives its own record."""
    records = [cache.record(accelerator) for cache in caches]
    if len(records) == 1:
        return records[0]

    def summed(parts: list[dict], dir_: Any) -> dict[str, Any]:
        return {
            "dir": dir_,
            "reused_batches": sum(part["reused_batches"] for part in parts),
            "computed_batches": sum(part["computed_batches"] for part in parts),
        }

    combined = summed(records, [record["dir"] for record in records])
    real = [record["real"] for record in records if record["real"] is not None]
    combined["real"] = summed(real, real[0]["dir"]) if real else None  # one folder: the real clips do not change
    return combined


def open_cache(root: Path, kind: str, batches: dict, real: dict | None) -> EvalCache:
    """Stores under `root` for the descriptions `batches` (everything that changes a batch's arrays; its
    folder is named `<kind>-<hash>`) and `real` (everything that changes the real clips' features)."""

    def store(name: str, description: dict) -> BatchStore:
        description = {"cache_format": CACHE_FORMAT, "kind": name, **description}
        return BatchStore(Path(root) / f"{name}-{digest(description)}", description)

    return EvalCache(store(kind, batches), store("features", real) if real is not None else None)


# --- what a key holds -------------------------------------------------------------------------------


def source_fingerprint(path: Path, split: str) -> dict:
    """The data files (names, sizes, modification times) a split is read from: an edited, added or
    removed file changes the fingerprint. Hidden entries (such as a cache kept beside the data) are left out."""
    path = Path(path).resolve()
    root = path / split if (path / split).is_dir() else path
    files = [root] if root.is_file() else sorted(_visible_files(root))
    listing = [(str(f.relative_to(root)) if f != root else f.name, *_size_and_time(f)) for f in files]
    return {"path": str(path), "split": split, "files": len(listing), "listing_sha256": digest({"l": listing})}


def _visible_files(root: Path):
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        yield from (Path(folder, name) for name in names if not name.startswith("."))


def _size_and_time(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def checkpoint_fingerprint(run_dir: Path, checkpoint: Path | None, config: dict) -> dict:
    """A run's weights by their files' sizes and modification times (hashing gigabytes at every start
    would cost more than it protects), and its config."""
    weights = sorted((f.name, *_size_and_time(f)) for f in checkpoint.glob("*.safetensors")) if checkpoint else []
    return {
        "run": str(Path(run_dir).resolve()),
        "checkpoint": checkpoint.name if checkpoint else None,
        "weights": weights,
        "config_sha256": digest(config),
    }


def published_fingerprint(checkpoint: Path, autoencoder: Path | None, release: str | None) -> dict:
    """Published weights (and the autoencoder given with them) by path, size and modification time of
    every file (a release may be a folder)."""
    files = []
    for path in (Path(p).resolve() for p in (checkpoint, autoencoder) if p is not None):
        files += sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return {"published": [(str(f), *_size_and_time(f)) for f in files], "release": release}


def clips_description(clips) -> dict:
    """How the clips of a `SourceClips` are cut (the seed matters only for random starts)."""
    spec = clips.spec
    return {
        "count": len(clips),
        "frames": spec.frames,
        "stride": spec.stride,
        "offset": spec.offset,
        "offset_seed": spec.seed if spec.offset == "random" else None,
        "image_size": spec.image_size,
        "resize": spec.resize,
    }


def features_description(fvd, device_type: str) -> dict:
    """What changes I3D features apart from the clips (the covariance normaliser does not)."""
    return {
        "detector_sha256": fvd.detector.sha256,
        "preset": fvd.preset.name,
        "resize": fvd.preset.resize,
        "bn_eps": fvd.detector.bn_eps,
        "batch_size": fvd.batch_size,
        "device": device_type,
    }


def _set_description(source: dict, clips, window: tuple[int, int], features: dict) -> dict:
    """Everything the I3D features of frames [window) of a set's clips depend on."""
    return {"source": source, "clips": clips_description(clips), "window": list(window), **features}


def videos_cache(
    root: Path, real: Path, fake: Path, real_clips, fake_clips, split: str, fvd, device_type: str
) -> EvalCache:
    """--real/--fake: the fake set's features are the batches; both sets' stores are shared by key."""
    features = features_description(fvd, device_type)
    window = (0, real_clips.spec.frames)
    fake_set = _set_description(source_fingerprint(fake, split), fake_clips, window, features)
    return open_cache(
        root, "features", fake_set, _set_description(source_fingerprint(real, split), real_clips, window, features)
    )


def run_cache(
    root: Path, model: dict, data: Path, split: str, clips, protocol, fvd, frame_scores: dict, device_type: str
) -> EvalCache:
    """--run / --checkpoint: a batch's scores and features depend on the model (`checkpoint_fingerprint` or
    `published_fingerprint`), the clips, the sampling protocol, the detector and the frame scorer; its real
    features only on the clips and the detector."""
    source, cut = source_fingerprint(data, split), clips_description(clips)
    sampling = {name: getattr(protocol, name) for name in SAMPLING_FIELDS}
    features = features_description(fvd, device_type) if fvd is not None else None
    batches = {
        "model": model,
        "source": source,
        "clips": cut,
        "sampling": sampling,
        "features": features,
        "frame_scores": frame_scores,
        "device": device_type,
    }
    if fvd is None:
        return open_cache(root, "run", batches, None)
    window = (0 if protocol.context_in_fvd else protocol.context_frames, clips.spec.frames)
    return open_cache(root, "run", batches, _set_description(source, clips, window, features))
