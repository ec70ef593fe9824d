"""What every benchmark shares: the line naming the machine a figure came from, textured test clips, and
the matmul rate a device reaches (the limit its efficiency is measured against)."""

from __future__ import annotations

import platform
import time

import numpy as np
import torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else whatever `platform` knows."""
    try:
        with open("/proc/cpuinfo") as handle:  # Linux only; elsewhere `platform` answers
            lines = handle.read().splitlines()
        for line in lines:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | None = None) -> str:
    """One line for a result table: the GPU on CUDA, else the CPU and torch's thread count; torch version."""
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def textured_video(frames: int, size: int, seed: int, *, grid: int = 24, noise: int = 6) -> np.ndarray:
    """uint8 (T, size, size, 3): a camera panning over a smooth random field (a `grid`^2 colour grid scaled up
    bicubically), plus +-`noise` sensor noise, so codecs, PNG and LZF have real work to do."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (grid, grid, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((2 * size, 2 * size), Image.Resampling.BICUBIC), dtype=np.int16)
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        x, y = (3 * t) % size, (2 * t) % size
        video[t] = np.clip(field[y : y + size, x : x + size] + rng.integers(-noise, noise + 1, (size, size, 3)), 0, 255)
    return video


def run_vpt(args: list[str]) -> None:
    """Run a vpt command in this process; a failing command stops the benchmark with its exit code."""
    from vpt.cli import main

    try:
        main(args)
    except SystemExit as exc:
        if exc.code:
            raise


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_flops_per_s(
    device: torch.device, dtype: torch.dtype, *, size: int, repeats: int = 5, clock=time.perf_counter
) -> float:
    """FLOP/s of one square (size x size) @ (size x size) matmul at `dtype`, best of `repeats` after a
    warm-up: the rate this device reaches on the one op every transformer step is made of. `clock`:
    wall time by default; `time.process_time` leaves out other processes' turns on a shared CPU."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: kernel choice, allocation
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = clock()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, clock() - started)
    return 2 * size**3 / best
