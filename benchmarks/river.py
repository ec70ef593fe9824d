"""RIVER throughput: training iterations/s and sampled frames/s, per execution path.

    python benchmarks/river.py                       # BAIR64 config (98M regressor), GPU when present
    python benchmarks/river.py --reduced             # CPU-sized: small regressor, few steps

Paths: fp32 eager with the math attention kernel, fp32 eager with SDPA's fused kernels (upstream
trains in fp32 eager: the closest row to it), fp32 + torch.compile, fp32 with `model.compile_sampler`
(`vpt sample --compile`: only the sampler's network call compiled, CUDA graphs on CUDA; sampling only),
bf16 autocast + SDPA, and bf16 + SDPA + torch.compile (bf16 only pays off on hardware with bf16 units: GPUs, recent Xeons).
Training runs the full step (flow-matching loss, backward, AdamW) on cached latents, as
`vpt train river` does after `vpt save-latents` (upstream re-encodes three frames per sample every step,
which this benchmark leaves out). Sampling runs `River.rollout` from one context latent (BAIR: 1 -> N)
with the config's sampler and grid (BAIR64: 3/8-rule RK4, 99 steps, 396 network calls per frame).
Prints a table with the machine it ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine  # noqa: E402

from vpt.commands.train import train_schema  # noqa: E402
from vpt.config import load_config  # noqa: E402
from vpt.models.river import River, count_parameters  # noqa: E402

PATHS = {
    "fp32 eager math-attention": dict(dtype=None, kernel="math", compile=False),
    "fp32 eager SDPA": dict(dtype=None, kernel="sdpa", compile=False),
    "fp32 SDPA torch.compile": dict(dtype=None, kernel="sdpa", compile=True),
    "fp32 SDPA compile_sampler": dict(dtype=None, kernel="sdpa", compile="sampler"),
    "bf16 autocast SDPA": dict(dtype=torch.bfloat16, kernel="sdpa", compile=False),
    "bf16 SDPA torch.compile": dict(dtype=torch.bfloat16, kernel="sdpa", compile=True),
}


def kernel_context(kernel: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH) if kernel == "math" else contextlib.nullcontext()


def autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(cfg, device: torch.device, compiled: bool | str) -> River:
    """compiled: True compiles the whole regressor (training too), "sampler" sets `model.compile_sampler`."""
    torch.manual_seed(0)
    model = River(dataclasses.replace(cfg.model, compile_sampler=compiled == "sampler")).to(device)
    if compiled is True:
        model.regressor = torch.compile(model.regressor)
    return model


def bench_training(cfg, device, path, *, batch: int, steps: int, warmup: int, latent_shape) -> float:
    model = build(cfg, device, path["compile"]).train()
    optimizer = torch.optim.AdamW(model.regressor.parameters(), lr=1e-4, weight_decay=5e-6, fused=device.type == "cuda")
    clip = torch.randn(batch, cfg.data.frames, *latent_shape, device=device)  # cached latents (B, T, c, h, w)
    with kernel_context(path["kernel"]):
        for step in range(warmup + steps):
            if step == warmup:
                sync(device)
                started = time.perf_counter()
            with autocast(device, path["dtype"]):
                loss = model.loss({"latents": clip})["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    sync(device)
    return steps / (time.perf_counter() - started)


def bench_sampling(cfg, device, path, *, batch: int, frames: int, steps: int, latent_shape) -> float:
    model = build(cfg, device, path["compile"]).eval()
    context = torch.randn(batch, 1, *latent_shape, device=device)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad(), kernel_context(path["kernel"]), autocast(device, path["dtype"]):
        model.rollout(context, 1, steps=min(steps, 4), generator=generator)  # warm-up (and compilation)
        sync(device)
        started = time.perf_counter()
        model.rollout(context, frames, steps=steps, generator=generator)
        sync(device)
    return batch * frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "river" / "bair64.yaml")
    )
    parser.add_argument(
        "--reduced", action="store_true", help="CPU-sized run: small regressor, 5 training steps, 5 sampling steps"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the config's)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--sample-batch", type=int, default=4, help="videos sampled at once (upstream evaluation: 4)")
    parser.add_argument("--sample-frames", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=None, help="solver setting (default: the config's)")
    parser.add_argument(
        "--latent-size", type=int, default=None, help="latent grid side (default: image_size / 8; BAIR256's f16 AE: 16)"
    )
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of: " + ", ".join(PATHS))
    args = parser.parse_args()

    overrides = ["model.autoencoder=pixels"]  # the regressor alone; latents are synthetic
    if args.reduced:
        overrides += ["model.size=small"]
        args.train_steps, args.sample_frames = min(args.train_steps, 5), min(args.sample_frames, 2)
        args.sample_steps = args.sample_steps or 5
    cfg = load_config(train_schema(River), args.config, overrides)
    device = torch.device(args.device)
    side = args.latent_size or cfg.data.image_size // 8
    latent_shape = (cfg.model.latent_channels, side, side)
    batch = args.batch_size or cfg.train.batch_size
    steps = args.sample_steps or cfg.model.steps
    names = [name.strip() for name in args.paths.split(",")]
    regressor_size = count_parameters(River(cfg.model).regressor)

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"RIVER {Path(args.config).stem}{' (reduced)' if args.reduced else ''}: "
        f"{regressor_size / 1e6:.1f}M regressor, latents {latent_shape}\n{machine(device)}"
    )
    table.add_column("path")
    table.add_column(f"train it/s (batch {batch})", justify="right")
    table.add_column(
        f"sample frames/s (batch {args.sample_batch}, {cfg.model.sampler}, steps {steps} {cfg.model.time_grid})",
        justify="right",
    )
    for name in names:
        path = PATHS[name]
        if path["dtype"] is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            table.add_row(name, "n/a", "n/a")
            continue
        try:
            train_rate = (
                "-"
                if path["compile"] == "sampler"
                # trains as the eager row does
                else f"{bench_training(cfg, device, path, batch=batch, steps=args.train_steps, warmup=2, latent_shape=latent_shape):.2f}"
            )
            sample_rate = bench_sampling(
                cfg,
                device,
                path,
                batch=args.sample_batch,
                frames=args.sample_frames,
                steps=steps,
                latent_shape=latent_shape,
            )
            table.add_row(name, train_rate, f"{sample_rate:.3f}")
        except Exception as exc:  # e.g. torch.compile without a C compiler: report the row, keep going
            table.add_row(name, "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}")
    Console().print(table)


if __name__ == "__main__":
    main()
