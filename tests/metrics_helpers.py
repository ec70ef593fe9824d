"""Shared pieces of the metrics tests: a tiny stand-in detector saved in StyleGAN-V's TorchScript form (so
CLI and multi-process tests exercise the real loading/preprocessing/gathering path in seconds), frame-folder
videos, and random torchvision-format LPIPS backbones (real ImageNet weights cannot be downloaded here)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from vpt.models.lpips import BACKBONES, LPIPS


class TinyTorchScriptI3D(torch.nn.Module):
    """Same signature as StyleGAN-V's i3d_torchscript.pt: (B, 3, T, H, W) -> (B, 400)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(6, 400, generator=generator))

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if rescale or resize or not return_features:  # vpt must preprocess itself and ask for features
            raise RuntimeError("unexpected detector flags")
        mean = x.mean(dim=(2, 3, 4))  # (B, 3)
        motion = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(2, 3, 4))  # (B, 3)
        return torch.cat([mean, motion], dim=1) @ self.proj  # (B, 400)


def write_tiny_detector(path: Path) -> Path:
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x, but it is StyleGAN-V's format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(TinyTorchScriptI3D()), str(path))
    return path


def write_frame_folders(root: Path, videos: np.ndarray) -> Path:
    """uint8 (N, T, H, W, 3) -> root/<video>/<frame>.png (lossless, so scores are exact)."""
    from PIL import Image

    for v, video in enumerate(videos):
        folder = root / f"video_{v:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(video):
            Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return root


def moving_videos(count: int, frames: int, size: int, seed: int) -> np.ndarray:
    """uint8 (count, frames, size, size, 3): random textures translating one pixel per frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return np.stack([np.roll(base, shift=t, axis=2) for t in range(frames)], axis=1)


def write_backbone(path, net: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-style state dict (features.* plus a classifier entry that must be ignored)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in LPIPS(net).features.state_dict().items():
        fan_in = tensor[0].numel() if tensor.dim() == 4 else 1
        state[f"features.{name}"] = torch.randn(tensor.shape, generator=generator) * math.sqrt(2.0 / fan_in)
    state["classifier.6.bias"] = torch.zeros(1000)
    torch.save(state, path)
    return state


def write_heads(path, net: str, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    heads = [torch.rand(1, c, 1, 1, generator=generator) for c in BACKBONES[net].channels]
    torch.save({f"lin{i}.model.1.weight": w for i, w in enumerate(heads)}, path)
    return heads
