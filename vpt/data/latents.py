"""Latent caching (what `vpt save-latents` runs): encode every video of every split once into latent
HDF5 shards that mirror the frame shards, resumably.

The output mirrors the input shard by shard and video by video, so video i of a split is video i of
its latents (names and captions are copied). Each latent video is `autoencoder.encode(frames)`:
(T // k, *latent_dims), continuous and already scaled (((T - 2) // k, ...) of frames 1 ... for MOSO with
`motion_context: neighbours`, which reads a frame on each side of its clips). For a KL autoencoder (kl-vae, latte-vae) the
whole Gaussian posterior is kept: mean and log-variance concatenated on the channel axis,
(T, 2c, h, w), root attribute `latent_posterior` true. Clip datasets then hand out the mean as the
clip and the log-variance beside it, so a backend can draw z = mean + exp(logvar / 2) * eps each
step (VideoGeneration-PyTorch's Latte does) or keep the mean. Root attributes name the autoencoder
(`autoencoder_path`, `autoencoder_type`, `autoencoder` (JSON identity: type, arch, scale, shift),
`autoencoder_sha256`, `latent_scale`, `latent_shift`, `frames_per_latent`) and the source shard. A clip
autoencoder with latent planes (PVDM: one latent step per 16 frames, (4, L)) adds `latent_planes`, JSON
{plane: [rows, cols]} in the order the planes are concatenated along L. A token autoencoder (MOSO: one
step per clip, its scene, object and motion token ids as floats in one channel, (1, L)) adds `latent_layout`,
JSON {part: grid} in the order the parts are concatenated; its ids need --dtype float32 (float16 holds
integers exactly only up to 2048).

Resumable at the level of videos: each finished video is kept as OUT/.partial/<split>/<shard>/<i>.npy
(written atomically) until its shard is complete; the shard file is then written atomically and the
partial files removed. A rerun skips finished shards and finished videos. OUT/latents.json records the
autoencoder and settings (a rerun with a different autoencoder or settings is refused) and the size
of every finished shard: a rerun re-checks each one and encodes a damaged one (truncated, unreadable)
again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vpt.console import warn
from vpt.data.datasets import frames_to_tensor
from vpt.data.h5 import ShardWriter, VideoH5, list_shards, shard_damage
from vpt.data.parallel import exit_with_parent
from vpt.data.video import resize_frames
from vpt.errors import UsageError, VptError
from vpt.fsutil import (
    LOCK_FILE,
    atomic_path,
    atomic_write_text,
    disk_full_is_an_error,
    ensure_writable,
    exclusive_lock,
    read_json_object,
    remove_stale_temps,
)
from vpt.precision import inference_autocast
from vpt.progress import ProgressBar

MANIFEST = "latents.json"
PARTIAL = ".partial"
#: manifest entries that outputs of older versions lack, with the value they had
_MANIFEST_DEFAULTS = {"posterior": False}


def encode_dataset(
    model,
    data: str | Path,
    out: str | Path,
    *,
    batch_frames: int = 64,
    dtype: Literal["float32", "float16"] = "float32",
    image_size: int | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Encode the frames under `data` with `model` (an autoencoder in eval mode on its device) into `out`;
    returns counts and the latent shape."""
    data, out = Path(data), Path(out)
    splits = split_dirs(data)
    ensure_writable(out, "--out")
    target = next(model.parameters()).device
    with exclusive_lock(out), disk_full_is_an_error(out):
        _check_dtype(model, dtype)
        manifest = _claim(out, _manifest(model, data, dtype, image_size))

        sources = {name: VideoH5(path) for name, path in splits}
        jobs = [(name, shard, source) for name, source in sources.items() for shard in range(len(source.shard_paths))]
        todo = [
            (name, shard, source) for name, shard, source in jobs if not _finished(out, name, source, shard, manifest)
        ]
        remaining = sum(
            int(source.lengths[_unfinished(out, name, source, shard)].sum()) for name, shard, source in todo
        )
        encoded = 0
        with ProgressBar("save-latents", remaining, unit="frames") as progress:
            for name, shard, source in todo:
                encoded += _encode_shard(
                    model,
                    source,
                    shard,
                    out,
                    name,
                    manifest,
                    progress,
                    batch_frames=batch_frames,
                    dtype=dtype,
                    image_size=image_size,
                    device=target,
                    workers=workers,
                )
    first = next(iter(sources.values()))
    height, width = (image_size, image_size) if image_size else first.frame_shape()[:2]
    return {
        "videos": sum(len(s) for s in sources.values()),
        "encoded_videos": encoded,
        "splits": [n for n, _ in splits],
        "latent_shape": model.latent_dims(height, width),
        "posterior": model.has_posterior,
    }


def _check_dtype(model, dtype: str) -> None:
    """Token ids stored as floats must stay exact: float16 holds every integer only up to 2048."""
    codes = model.codebook_size
    if dtype == "float16" and model.identity().get("latent_kind") == "token_ids" and codes > 2048:
        raise UsageError(
            f"--dtype float16 cannot hold the {model.type} autoencoder's token ids exactly "
            f"({codes} codes, float16 is exact up to 2048); use --dtype float32"
        )


# --- layout ---------------------------------------------------------------------------------------


def split_dirs(data: Path) -> list[tuple[str, Path]]:
    """[(split name, split dir)]: every sub-folder holding shards, or `data` itself as the one split ("")."""

    if not data.exists():
        raise UsageError(f"--data {data} does not exist")
    if list_shards(data):
        return [("", data)]
    found = sorted((p.name, p) for p in data.iterdir() if p.is_dir() and not p.name.startswith(".") and list_shards(p))
    if not found:
        raise UsageError(f"--data {data}: no HDF5 shards in it or in its split folders (run `vpt convert-h5` first)")
    return found


def _out_shard(out: Path, split: str, source, shard: int) -> Path:
    return out / split / source.shard_paths[shard].name


def _partial_dir(out: Path, split: str, source, shard: int) -> Path:
    return out / PARTIAL / (split or "_") / source.shard_paths[shard].stem


def _unfinished(out: Path, split: str, source, shard: int) -> list[int]:
    """Videos of an unfinished shard that have no partial result yet."""
    partial, indices = _partial_dir(out, split, source, shard), source.shard_range(shard)
    return [i for i in indices if not (partial / f"{i - indices.start}.npy").is_file()]


def _manifest(model, data: Path, dtype: str, image_size: int | None) -> dict[str, Any]:
    identity = model.identity()
    provenance = model.provenance
    return {
        "autoencoder": identity,
        "autoencoder_path": provenance.get("source", ""),
        "autoencoder_sha256": provenance.get("sha256", ""),
        "autoencoder_format": provenance.get("format", ""),
        "data": str(data.resolve()),
        "dtype": dtype,
        "image_size": image_size,
        "posterior": model.has_posterior,
    }


def _claim(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write OUT/latents.json, or check that an existing one describes the same encoding.

    Returns the manifest to keep up to date, with the finished shards an earlier run recorded.
    """
    path = out / MANIFEST
    remove_stale_temps(path)
    if path.is_file():
        existing = read_json_object(path, "latents manifest")
        if not isinstance(existing.get("shards", {}), dict):
            raise VptError(f"{path}: damaged latents manifest (shards is not an object); delete {out} to start over")
        differing = [
            k
            for k in ("autoencoder", "autoencoder_sha256", "data", "dtype", "image_size", "posterior")
            if existing.get(k, _MANIFEST_DEFAULTS.get(k)) != manifest[k]
        ]
        if differing:
            raise VptError(
                f"{out} already holds latents made with a different {', '.join(differing)} "
                f"(from {existing.get('autoencoder_path') or 'another autoencoder'}); choose another --out or delete it"
            )
        return manifest | {"shards": existing.get("shards", {})}
    if out.exists() and any(p for p in out.iterdir() if p.name not in (PARTIAL, LOCK_FILE)):
        raise VptError(f"{out} exists and is not a save-latents output (no {MANIFEST}); choose another --out")
    manifest = manifest | {"shards": {}}
    _save_manifest(out, manifest)
    return manifest


def _save_manifest(out: Path, manifest: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _record_shard(out: Path, path: Path, manifest: dict[str, Any]) -> None:
    """Note a finished output shard's size in the manifest, so a rerun can tell it was cut short."""
    manifest["shards"][path.relative_to(out).as_posix()] = {"size": path.stat().st_size}
    _save_manifest(out, manifest)


def _finished(out: Path, split: str, source, shard: int, manifest: dict[str, Any]) -> bool:
    """True when the output shard exists, is what was written and came from this autoencoder.

    A damaged one (another size than recorded, unreadable, wrong video count) is removed, to be encoded again.
    """
    path = _out_shard(out, split, source, shard)
    if not path.is_file():
        return False
    key = path.relative_to(out).as_posix()
    damage = shard_damage(path, size=manifest["shards"].get(key, {}).get("size"), videos=len(source.shard_range(shard)))
    if damage is not None:
        warn(f"shard {key} is damaged ({damage}), encoding it again")
        path.unlink()
        manifest["shards"].pop(key, None)
        return False
    with h5py.File(path, "r") as handle:
        sha = handle.attrs.get("autoencoder_sha256", "")
    if sha != manifest["autoencoder_sha256"]:
        raise VptError(f"{path} was written by another autoencoder; delete it or choose another --out")
    if key not in manifest["shards"]:  # the run that wrote it stopped before recording it
        _record_shard(out, path, manifest)
    return True


def _shard_attrs(manifest: dict[str, Any], source, shard: int) -> dict[str, Any]:
    identity = manifest["autoencoder"]
    planes = {"latent_planes": json.dumps(identity["planes"])} if "planes" in identity else {}
    layout = {"latent_layout": json.dumps(identity["layout"])} if "layout" in identity else {}
    return (
        planes
        | layout
        | {
            "autoencoder_path": manifest["autoencoder_path"],
            "autoencoder_type": identity["type"],
            "autoencoder": json.dumps(identity),
            "autoencoder_sha256": manifest["autoencoder_sha256"],
            "autoencoder_format": manifest["autoencoder_format"],
            "latent_scale": identity["latent_scale"],
            "latent_shift": identity["latent_shift"],
            "frames_per_latent": identity["frames_per_latent"],
            "source_shard": str(source.shard_paths[shard].resolve()),
            "source_layout": source.layout,
            "image_size": manifest["image_size"] or 0,
            "latent_posterior": manifest["posterior"],
        }
    )


# --- encoding -------------------------------------------------------------------------------------


def _encode_shard(
    model,
    source,
    shard: int,
    out: Path,
    split: str,
    manifest: dict[str, Any],
    progress,
    *,
    batch_frames: int,
    dtype: str,
    image_size: int | None,
    device,
    workers: int,
) -> int:
    """Encode the unfinished videos of one input shard, then assemble the output shard. Returns videos encoded."""
    partial = _partial_dir(out, split, source, shard)
    partial.mkdir(parents=True, exist_ok=True)
    indices = source.shard_range(shard)
    first = indices.start
    todo = _unfinished(out, split, source, shard)
    storage = np.float16 if dtype == "float16" else np.float32
    for index, latents in _encode_videos(model, _read_videos(source, todo, image_size, workers), batch_frames, device):
        _save_npy(partial / f"{index - first}.npy", latents.astype(storage))
        progress.advance(int(source.lengths[index]))

    path = _out_shard(out, split, source, shard)
    with ShardWriter(path, kind="latents", attrs=_shard_attrs(manifest, source, shard)) as writer:
        for i in indices:
            writer.add(_load_npy(partial / f"{i - first}.npy"), name=source.name(i), text=source.text(i))
    _record_shard(out, path, manifest)
    shutil.rmtree(partial, ignore_errors=True)
    return len(todo)


def _read_videos(source, indices: list[int], image_size: int | None, workers: int) -> Iterator[tuple[int, Any]]:
    """(index, frames (T, 3, H, W) float in [-1, 1]) for each video, read and resized in worker processes."""

    class Videos(Dataset):
        def __len__(self) -> int:
            return len(indices)

        def __getitem__(self, position: int):
            index = indices[position]
            return index, frames_to_tensor(resize_frames(source.read(index), image_size))

    loader = DataLoader(
        Videos(),
        batch_size=None,
        num_workers=workers if len(indices) > 1 else 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=exit_with_parent(),
    )
    yield from loader


def _encode_videos(model, videos: Iterator[tuple[int, Any]], batch_frames: int, device) -> Iterator[tuple[int, Any]]:
    """Pack frames of consecutive videos into encoder batches of about `batch_frames` frames (whole
    clips of k frames), encode, and hand back each video's latents (T // k, *dims) as float32 numpy
    (KL models: mean and log-variance on the channel axis, (T // k, 2c, h, w)).

    An autoencoder that reads `context_frames` on each side of its clips (MOSO's `motion_context:
    neighbours`) gets each piece with those frames around it and encodes it on its own (joined pieces
    would lose them); its latents cover frames context ... T - context - 1, ((T - 2 context) // k, *dims)."""
    k, context = model.frames_per_latent, model.context_frames
    per_batch = max(k, batch_frames // k * k)
    pending: list[tuple[int, Any]] = []  # (video index, frames piece (n*k + 2 context, C, H, W))
    pieces: dict[int, list[Any]] = {}
    expected: dict[int, int] = {}  # video index -> number of pieces still to come back

    def encode(frames):
        """(T, C, H, W) -> ((T - 2 context) / k, *dims) on the CPU."""
        with torch.inference_mode(), inference_autocast(device):
            return _stored_latents(model, frames.to(device, non_blocking=True)[None])[0].float().cpu()

    def flush():
        if context:
            latents = torch.cat([encode(piece) for _, piece in pending])
        else:
            latents = encode(torch.cat([piece for _, piece in pending]))  # (n_total / k, *dims)
        offset = 0
        for index, piece in pending:
            steps = (len(piece) - 2 * context) // k
            pieces[index].append(latents[offset : offset + steps])
            offset += steps
        pending.clear()

    def ready():
        for index in [i for i, n in expected.items() if len(pieces[i]) == n]:
            del expected[index]
            yield index, torch.cat(pieces.pop(index)).numpy()

    for index, video in videos:
        usable = (len(video) - 2 * context) // k * k  # frames that get latents
        chunks = [video[start : min(start + per_batch, usable) + 2 * context] for start in range(0, usable, per_batch)]
        if not chunks:  # shorter than one clip: no latent steps
            channels, *grid = model.latent_dims(*video.shape[-2:])
            yield index, torch.zeros((0, channels * (1 + model.has_posterior), *grid)).numpy()
            continue
        pieces[index], expected[index] = [], len(chunks)
        for chunk in chunks:
            pending.append((index, chunk))
            if sum(len(p) - 2 * context for _, p in pending) >= per_batch:
                flush()
                yield from ready()
    if pending:
        flush()
    yield from ready()


def _stored_latents(model, video):
    """(B, T, C, H, W) -> what a latent file keeps per step: the latents, or for KL models the
    posterior mean || log-variance (B, T // k, 2c, h, w)."""
    if model.has_posterior:
        return torch.cat(model.encode_posterior(video), dim=2)
    return model.encode(video)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:  # an object array, or not an .npy file at all
        raise VptError(f"{path}: damaged partial result ({exc}); delete it and run again") from None


def _save_npy(path: Path, array) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
