"""Encode throughput (frames/s) of every autoencoder vpt ships, at the resolutions they are used at.

    python benchmarks/autoencoders.py [--device auto|cpu|cuda] [--batch 8] [--repeats 3] [--only NAME ...]

Weights are random (throughput does not depend on their values). `encode` is what `vpt save-latents`
and the latent backends call: frames (B, T, C, H, W) in [-1, 1] -> continuous latents. On CUDA the
encoder runs under bf16 autocast (as save-latents does) and fp32 is timed as well. One warm-up call, then
the median of `--repeats` timed calls. Prints one table and the machine it ran on.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine

from vpt.models.autoencoders import build_autoencoder
from vpt.precision import inference_autocast

# name -> (type, arch, frame size, channels): the configurations upstream and vpt's shapes config use.
CASES: dict[str, tuple[str, dict, int, int]] = {
    "vqgan shapes (configs/ae)": (
        "vqgan",
        dict(ch=8, ch_mult=[1, 2, 4], num_res_blocks=1, attn_resolutions=[], resolution=64, n_embed=256, norm_groups=4),
        64,
        3,
    ),
    "vqgan f8_small (RIVER BAIR64/KTH)": ("vqgan", {"preset": "f8_small"}, 64, 3),
    "vqgan f16 (RIVER BAIR256)": ("vqgan", {"preset": "f16"}, 256, 3),
    "river-vqvae (RIVER CLEVRER)": ("river-vqvae", {}, 128, 3),
    "kl-vae sd (Seer, official Latte)": ("kl-vae", {}, 256, 3),
    "latte-vae vg-ucf": ("latte-vae", {"preset": "vg-ucf"}, 256, 3),
    "latte-vae vg-mnist (72x128 as 64x128)": ("latte-vae", {"preset": "vg-mnist"}, 64, 1),
}


def frames_per_second(model, video: torch.Tensor, repeats: int, device: torch.device, bf16: bool) -> float:
    context = inference_autocast(device) if bf16 else torch.autocast(device.type, enabled=False)
    times = []
    with torch.inference_mode(), context:
        for attempt in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.encode(video)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if attempt:  # the first call is a warm-up
                times.append(time.perf_counter() - start)
    return video.shape[0] * video.shape[1] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=8, help="frames per encode call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="substrings of case names to run")
    args = parser.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"autoencoder encode throughput, batch {args.batch} frames")
    for column in ("autoencoder", "params (M)", "frame", "latent", "fp32 frames/s"):
        table.add_column(column, justify="left" if column == "autoencoder" else "right")
    if device.type == "cuda":
        table.add_column("bf16 frames/s", justify="right")
    for name, (kind, arch, size, channels) in CASES.items():
        if args.only and not any(part in name for part in args.only):
            continue
        torch.manual_seed(0)
        model = build_autoencoder(kind, arch).to(device).eval()
        height, width = (size, 2 * size) if "mnist" in name else (size, size)
        video = torch.rand(1, args.batch, channels, height, width, device=device) * 2 - 1
        row = [
            name,
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}",
            f"{channels}x{height}x{width}",
            "x".join(str(d) for d in model.latent_dims(height, width)),
            f"{frames_per_second(model, video, args.repeats, device, bf16=False):,.1f}",
        ]
        if device.type == "cuda":
            row.append(f"{frames_per_second(model, video, args.repeats, device, bf16=True):,.1f}")
        table.add_row(*row)
        del model
    Console().print(table)
    print(f"device: {device} ({machine(device)})")


if __name__ == "__main__":
    main()
