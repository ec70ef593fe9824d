"""What the latent backends share: the frozen autoencoder a config names, the backend base class that
encodes and decodes with it, and reading a clip out of a training batch.

RIVER, NeuralSDE, Latte, PVDM and RSVP-M model the latents of an autoencoder that stays frozen while
they train; `vpt train` feeds them frames (encoded on the fly) or latents cached by `vpt save-latents`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from vpt.errors import ConfigError, UsageError
from vpt.models.autoencoders import autoencoder_from_upstream_state, load_autoencoder
from vpt.models.backend import Backend


class PixelAutoencoder(nn.Module):
    """`autoencoder: pixels[:P]`: no learned autoencoder; the "latents" are the frames cut into P x P
    patches stacked on channels (3P^2 channels at 1/P resolution; P = 1 is the identity). Lossless,
    so toy data and tests can train RIVER on pixels without training an autoencoder first."""

    def __init__(self, patch: int = 1):
        super().__init__()
        self.patch = patch

    def encode(self, video: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W) -> (B, T, C P^2, H/P, W/P)
        return rearrange(video, "b t c (h p) (w q) -> b t (c p q) h w", p=self.patch, q=self.patch)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # (B, T, C P^2, h, w) -> (B, T, C, hP, wP)
        return rearrange(latents, "b t (c p q) h w -> b t c (h p) (w q)", p=self.patch, q=self.patch)


def build_autoencoder(spec: str | None) -> nn.Module | None:
    """The frozen autoencoder a config names, in eval mode with gradients off (None when unset)."""
    if spec is None:
        return None
    if spec == "pixels" or spec.startswith("pixels:"):
        patch = spec.partition(":")[2] or "1"
        if not patch.isdigit() or int(patch) < 1:
            raise ConfigError(f"model.autoencoder: '{spec}' should be pixels or pixels:P with a patch size P >= 1")
        autoencoder = PixelAutoencoder(int(patch))
    else:
        autoencoder = load_autoencoder(spec)
    autoencoder.eval()
    autoencoder.requires_grad_(False)
    return autoencoder


def frozen_autoencoder_from_upstream_state(state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """The frozen AE stored under `ae.*` in an upstream model.pth."""
    ae_state = {key.removeprefix("ae."): value for key, value in state.items() if key.startswith("ae.")}
    if not ae_state:
        raise UsageError(f"{path} holds no autoencoder weights (ae.*); pass --ae with the AE checkpoint")
    autoencoder = autoencoder_from_upstream_state(ae_state)
    autoencoder.eval()
    autoencoder.requires_grad_(False)
    return autoencoder


class LatentBackend(Backend):
    """A backend that models the latents of a frozen autoencoder (`model.autoencoder`, a config's
    `latent_channels`): RIVER and NeuralSDE. It builds, freezes and applies the autoencoder."""

    uses_autoencoder = True
    frozen_prefixes = ("autoencoder.",)

    def _attach_autoencoder(self, autoencoder: nn.Module | None) -> None:
        self.autoencoder = autoencoder if autoencoder is not None else build_autoencoder(self.cfg.autoencoder)

    def train(self, mode: bool = True) -> LatentBackend:
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()  # frozen: BatchNorm statistics and dropout never change
        return self

    @property
    def can_show_latents(self) -> bool:
        return self.autoencoder is not None

    def _require_autoencoder(self) -> nn.Module:
        if self.autoencoder is None:
            raise UsageError(f"this {self.name} model has no autoencoder (model.autoencoder is empty); pass --ae")
        return self.autoencoder

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) frames in [-1, 1] -> (B, T, c, h, w) continuous latents."""
        latents = self._require_autoencoder().encode(video)
        self._check_latents(latents)
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, c, h, w) latents -> (B, T, 3, H, W) frames, clamped to [-1, 1] (VQ decoders overshoot)."""
        return self._require_autoencoder().decode(latents).clamp(-1.0, 1.0)

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.shape[-3] != self.cfg.latent_channels:
            raise ConfigError(
                f"the autoencoder gives {latents.shape[-3]}-channel latents but model.latent_channels is "
                f"{self.cfg.latent_channels}; set model.latent_channels={latents.shape[-3]}"
            )


def clip_from_batch(batch: Any) -> tuple[torch.Tensor, bool]:
    """A training batch -> ((B, T, C, H, W) clip, whether it holds latents rather than frames)."""
    if isinstance(batch, torch.Tensor):
        return batch, False
    if isinstance(batch, dict):
        if "latents" in batch:
            return batch["latents"], True
        for key in ("video", "frames"):
            if key in batch:
                return batch[key], False
    raise ConfigError("expected batches with 'video' frames or 'latents'; the dataset gave something else")
