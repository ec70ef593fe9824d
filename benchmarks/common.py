"""What every benchmark shares: the line naming the machine a figure came from, textured test clips, and
the matmul rate a device reaches (the limit its efficiency is measured against)."""

from __future__ import annotations

import platform
import time

import numpy as np
import torch


def count_cpu_attention_flops() -> None:
    """Teach torch's FlopCounterMode the CPU flash-attention kernels: it knows the CUDA ones only, so on a CPU
    `scaled_dot_product_attention` counted zero FLOPs (the same formulas as the CUDA kernels)."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if forward in flop_registry:  # a torch that counts them itself
        return

    @register_flop_formula(forward)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


count_cpu_attention_flops()


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


# --- the built-in shapes data, and scoring predictions of it --------------------------------------------


def make_shapes_h5(root, num_videos: int, *, frames: int, size: int):
    """root/shapes (videos, captions.json, positions.json: what the scoring reads) and root/h5; kept when present."""
    from pathlib import Path

    from vpt.data.convert import convert_h5
    from vpt.data.shapes import make_shapes

    root = Path(root)
    if not (root / "h5").exists():
        make_shapes(root / "shapes", num_videos=num_videos, frames=frames, size=size, workers=1)
        convert_h5(root / "shapes", root / "h5", image_size=size, workers=1)
    return root / "h5"


def shapes_test_clips(h5, *, frames: int, count: int | None = None, split: str = "test"):
    """The first `count` (all: None) videos of a split of `make_shapes_h5`'s data, cut to `frames`:
    (N, frames, 3, H, W) in [-1, 1], and the generator's record (colour, true centres) of each."""
    from vpt.commands.quickstart import _true_positions
    from vpt.data.datasets import frames_to_tensor
    from vpt.data.h5 import VideoH5, find_split_dir

    source = VideoH5(find_split_dir(h5, split))
    count = len(source) if count is None else min(count, len(source))
    video = torch.stack([frames_to_tensor(source.read(i)[:frames]) for i in range(count)])  # (N, T, 3, H, W)
    return video, _true_positions(h5, [source.name(i) for i in range(count)])


def centred_shape_iou(predicted: torch.Tensor, truth: torch.Tensor, colour: str) -> np.ndarray:
    """Per frame, how well the object keeps its shape wherever it is: IoU of the object's colour mask in
    the prediction and in the truth, each shifted so that its centroid sits at the frame centre; 0 where
    either is empty. (T, 3, H, W) clips in [-1, 1] -> (T,)."""
    from vpt.data.shapes import colour_mask

    def centred(masks: np.ndarray) -> np.ndarray:  # (T, H, W) -> (T, H, W), each mask moved to the centre
        out = np.zeros_like(masks)
        for t, mask in enumerate(masks):
            ys, xs = np.nonzero(mask)
            if len(ys):
                shift = (mask.shape[0] // 2 - int(round(ys.mean())), mask.shape[1] // 2 - int(round(xs.mean())))
                out[t] = np.roll(mask, shift, axis=(0, 1))
        return out

    a, b = centred(colour_mask(predicted, colour)), centred(colour_mask(truth, colour))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, (a & b).sum(axis=(1, 2)) / np.maximum(union, 1), 0.0)


def rollout_scores(predicted: torch.Tensor, truth: torch.Tensor, records: list[dict], num_context: int) -> dict:
    """The quickstart's scores of predicted shapes frames (N, T, 3, H, W) against the truth, frames
    num_context ... of each record's video: position error (px; half the frame size where the object is
    lost), object kept (its colour still covers >= 30 % of its true pixels), PSNR (dB), and how well the
    object keeps its shape (`centred_shape_iou`). Each as the mean over clips and frames, with `<name>_clip_std`
    the sample standard deviation over clips of each clip's mean."""
    from vpt.commands.quickstart import _position_scores
    from vpt.metrics.frames import psnr

    count = len(predicted)
    errors, kept = _position_scores(predicted, truth, records, num_context, missing_error=truth.shape[-1] / 2)
    unit = lambda frames: ((frames.float() + 1) / 2).clamp(0, 1).flatten(0, 1)  # noqa: E731
    tables = {  # (N, T) each
        "position_error": errors,
        "object_kept": kept.astype(np.float64),
        "psnr": np.asarray(psnr(unit(predicted), unit(truth)), dtype=np.float64).reshape(count, -1),
        "shape_iou": np.stack([centred_shape_iou(p, t, r["colour"]) for p, t, r in zip(predicted, truth, records)]),
    }
    scores = {name: float(table.mean()) for name, table in tables.items()}
    scores.update(
        {f"{name}_clip_std": float(table.mean(1).std(ddof=1)) if count > 1 else 0.0 for name, table in tables.items()}
    )
    return scores
