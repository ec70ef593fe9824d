"""`vpt save-latents`: encode every video of every split once, so latent backends train without the encoder.

    DATA/<split>/<shard>.hdf5  (frames)  ->  OUT/<split>/<shard>.hdf5  (latents, `kind = "latents"`)

The layout, the attributes and the resume rules are in `vpt.data.latents`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from vpt.commands.options import LatentDtype, ThreadsOption, apply_threads, next_step

# the library is imported inside the functions: `vpt --help` must not pay for torch


def save_latents(
    ae: Annotated[
        Path,
        typer.Option(
            "--ae",
            help="The autoencoder: a `vpt train-ae` run, RIVER vqvae.ckpt/vqvae.pth, PVDM model_last.pth, a taming/VG checkpoint, or a diffusers AutoencoderKL folder.",
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="HDF5 frames from `vpt convert-h5`: a root with split folders (every split is encoded) or one split folder.",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output root; gets the same split folders and shard names as --data.")
    ],
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Frames per encoder call (videos are packed together).")
    ] = 64,
    dtype: Annotated[
        LatentDtype, typer.Option("--dtype", help="Storage type of the latents: float32 or float16.")
    ] = LatentDtype.float32,
    image_size: Annotated[
        Optional[int],
        typer.Option("--image-size", min=8, help="Resize frames to S x S before encoding (default: as stored)."),
    ] = None,
    preset: Annotated[
        Optional[str],
        typer.Option(
            "--preset",
            help="taming preset a bare VQGAN checkpoint must match: f8_small, f8 or f16 (default: read off the weights).",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (CUDA when available, bf16 autocast), cpu or cuda[:N].")
    ] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=0, help="Processes reading and resizing frames.")] = 2,
    threads: ThreadsOption = 0,
) -> None:
    """Encode every video of every split into latent HDF5 with the same indexing (resumable)."""
    from vpt.console import info

    apply_threads(threads)
    summary = encode_dataset(
        ae,
        data,
        out,
        batch_frames=batch_size,
        dtype=dtype.value,
        image_size=image_size,
        preset=preset,
        device=device,
        workers=workers,
    )
    done = summary["videos"] - summary["encoded_videos"]
    what = "Posterior mean and log-variance" if summary["posterior"] else "Latents"
    info(
        f"{what} of {summary['videos']} videos ({summary['encoded_videos']} encoded now, {done} already done) "
        f"in {out}: {summary['latent_shape']} per video step"
    )
    next_step(f"vpt train BACKEND --config CONFIG --data {out}")


def encode_dataset(
    ae: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    batch_frames: int = 64,
    dtype: Literal["float32", "float16"] = "float32",
    image_size: int | None = None,
    preset: str | None = None,
    device: str = "auto",
    workers: int = 0,
) -> dict[str, Any]:
    """The library form of `vpt save-latents`: load the autoencoder at `ae`, then encode (vpt.data.latents)."""
    from vpt.data import latents
    from vpt.models.autoencoders import load_autoencoder
    from vpt.precision import resolve_device

    latents.split_dirs(Path(data))  # a wrong --data is one line before any weights are read
    model = load_autoencoder(ae, preset=preset).to(resolve_device(device)).eval()
    return latents.encode_dataset(
        model, data, out, batch_frames=batch_frames, dtype=dtype, image_size=image_size, workers=workers
    )
