"""The one surface every autoencoder shares, so train-ae, save-latents and the latent backends never
branch on which autoencoder they hold.

    encode(video)    (B, T, C, H, W) in [-1, 1]  ->  latents (B, T // k, *latent_dims)
    decode(latents)  (B, T', *latent_dims)       ->  (B, T' * k, C, H, W), roughly [-1, 1] (unclamped)
    k = frames_per_latent: 1 for frame autoencoders (VQGAN, KL-VAE, Latte's VAE), the clip length for
        autoencoders that encode whole clips (PVDM's projected autoencoder: k = 16, latent_dims = (4, 2048)).
    c = context_frames: frames read on each side of the encoded ones, 0 but for MOSO with
        `motion_context: neighbours` (1); `encode` then takes T = n k + 2c frames and `decode` gives the n k inside.

Latents are *continuous* and *model-ready*: pre-quantisation for VQ models (RIVER integrates its flow
in that space; quantisation happens inside `decode`), the posterior mean for KL models, and already
mapped by `(z - latent_shift) * latent_scale` (Stable Diffusion's 0.18215), which `decode` undoes.

A subclass implements four things on clips of k frames (k + 2c where the clip reads context frames), with
unscaled latents:
    encode_clips(clips (N, k, C, H, W)) -> (N, *latent_dims)
    decode_clips(latents (N, *latent_dims)) -> (N, k, C, H, W)
    forward_train(clips) -> TrainOutput(reconstruction, regularizers)   (codebook or KL terms)
    latent_dims(height, width) -> tuple
`FrameAutoencoder` turns the first three into their per-image forms (k = 1).

KL models (`has_posterior`) also give their Gaussian posterior: `encode_posterior(video)` -> model-ready
(mean, log-variance), so that cached latents can be redrawn z = mean + exp(logvar / 2) * eps later.
"""

from __future__ import annotations

import abc
import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from einops import rearrange
from torch import nn

from vpt.errors import VptError


@dataclass
class TrainOutput:
    """What one training forward pass returns: the reconstruction and the regularisers it incurred."""

    reconstruction: torch.Tensor  # (N, k, C, H, W)
    regularizers: dict[str, torch.Tensor] = field(default_factory=dict)  # "codebook" and/or "kl", scalars


class Autoencoder(nn.Module, abc.ABC):
    type: ClassVar[str]  # the name in the registry (loading.AUTOENCODERS) and in a run's `autoencoder.type`
    Config: ClassVar[type]  # dataclass of the `autoencoder.arch` section
    has_posterior: ClassVar[bool] = False  # a KL model: `posterior_clips` gives mean and log-variance
    aliases: ClassVar[tuple[str, ...]] = ()  # other names configs use for this type (RIVER's `ldm-vq`, `ours`)
    presets: ClassVar[dict[str, dict]] = {}  # named architectures: `arch: {preset: NAME}` or `--preset NAME`

    @classmethod
    def recognizes_state(cls, state: dict[str, torch.Tensor]) -> bool:
        """Whether a bare state dict under upstream's names holds this type (checkpoint files carry no type)."""
        return False

    @classmethod
    def arch_from_state(cls, state: dict[str, torch.Tensor]) -> dict:
        """The `arch` values the tensor shapes imply; what they cannot tell is left to defaults and `arch`."""
        return {}

    @property
    def codebook_size(self) -> int:
        """Codes in the codebook when the latents are token ids (MOSO), else 0."""
        return 0

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.provenance: dict = {}  # where the weights came from (source, format, sha256); set by load_autoencoder

    # --- what a subclass provides --------------------------------------------------------------
    @property
    def frames_per_latent(self) -> int:
        """k: how many frames one latent step covers (1 for frame autoencoders)."""
        return 1

    @property
    def context_frames(self) -> int:
        """c: frames read on each side of a clip that only inform its encoding (0 for most autoencoders)."""
        return 0

    @property
    def image_channels(self) -> int:
        return self.config.in_channels

    @property
    def latent_scale(self) -> float:
        return 1.0

    @property
    def latent_shift(self) -> float:
        return 0.0

    @abc.abstractmethod
    def latent_dims(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of one latent step for frames of `height` x `width` (e.g. (4, 8, 8))."""

    @abc.abstractmethod
    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, k, C, H, W) -> unscaled continuous latents (N, *latent_dims)."""

    @abc.abstractmethod
    def decode_clips(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (N, *latent_dims) -> (N, k, C, H, W)."""

    @abc.abstractmethod
    def forward_train(self, clips: torch.Tensor) -> TrainOutput:
        """One stochastic training pass (KL sampling, straight-through quantisation)."""

    @abc.abstractmethod
    def last_layer(self) -> nn.Parameter:
        """The decoder's output weight, for taming's adaptive GAN weight."""

    def build_objective(self, loss_config, *, grad_accum: int = 1, perceptual: nn.Module | None = None) -> nn.Module:
        """The module `vpt train-ae` trains: this autoencoder plus its losses (`loss(batch)`,
        `param_groups()`). An autoencoder with its own recipe (e.g. PVDM's two discriminators with
        feature matching) overrides this and keeps the autoencoder under the `autoencoder` attribute."""
        from vpt.models.autoencoders.objective import AutoencoderObjective

        return AutoencoderObjective(self, loss_config, grad_accum=grad_accum, perceptual=perceptual)

    # --- the shared surface --------------------------------------------------------------------
    def to_clips(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B * n, k, C, H, W); T must be n k. With c context frames, T = n k + 2c and
        the clips overlap: (B * n, k + 2c, C, H, W), clip i being frames i k ... i k + k + 2c - 1.

        RGB frames given to a 1-channel autoencoder keep their first channel (as VideoGeneration-PyTorch
        does for its grayscale data), so RGB datasets feed grayscale models directly."""
        k, context = self.frames_per_latent, self.context_frames
        if video.ndim != 5:
            raise VptError(f"autoencoder input must be (B, T, C, H, W), got shape {tuple(video.shape)}")
        encoded = video.shape[1] - 2 * context
        if encoded % k or encoded < (k if context else 0):
            plus = f" and {context} more on each side (n x {k} + {2 * context})" if context else ""
            raise VptError(f"{self.type} encodes clips of {k} frames{plus}; got {video.shape[1]} frames")
        if self.image_channels == 1 and video.shape[2] == 3:
            video = video[:, :, :1]
        if video.shape[2] != self.image_channels:
            raise VptError(f"{self.type} expects {self.image_channels}-channel frames, got {video.shape[2]}")
        windows = video.unfold(1, k + 2 * context, k)  # (B, n, C, H, W, k + 2c)
        return rearrange(windows, "b n c h w k -> (b n) k c h w")

    def without_context(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips from `to_clips` (N, k + 2c, C, H, W) -> the k frames each encodes and reconstructs (N, k, C, H, W)."""
        return clips[:, self.context_frames : clips.shape[1] - self.context_frames]

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) in [-1, 1] -> model-ready latents (B, T // k, *latent_dims)."""
        batch = video.shape[0]
        latents = self.encode_clips(self.to_clips(video))  # (B * n, *latent_dims)
        latents = (latents - self.latent_shift) * self.latent_scale
        return latents.reshape(batch, -1, *latents.shape[1:])

    def posterior_clips(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KL models: (N, k, C, H, W) -> unscaled posterior mean and log-variance, each (N, *latent_dims)."""
        raise VptError(f"{self.type} is not a KL autoencoder: it has no posterior to sample")

    def encode_posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C, H, W) in [-1, 1] -> model-ready posterior mean and log-variance, each (B, T // k, *latent_dims).

        The scaling z -> (z - shift) * scale multiplies the standard deviation by `scale`, so the
        log-variance gains 2 log(scale); `mean` is exactly `encode(video)`."""
        batch = video.shape[0]
        mean, logvar = self.posterior_clips(self.to_clips(video))  # (B * n, *latent_dims) each
        mean = (mean - self.latent_shift) * self.latent_scale
        logvar = logvar + 2.0 * math.log(self.latent_scale)
        return mean.reshape(batch, -1, *mean.shape[1:]), logvar.reshape(batch, -1, *logvar.shape[1:])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-ready latents (B, T', *latent_dims) -> frames (B, T' * k, C, H, W)."""
        batch = latents.shape[0]
        unscaled = latents.flatten(0, 1) / self.latent_scale + self.latent_shift
        clips = self.decode_clips(unscaled)  # (B * T', k, C, H, W)
        return rearrange(clips, "(b n) k c h w -> b (n k) c h w", b=batch)

    def reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        """decode(encode(video)): what a latent model can at best give back."""
        return self.decode(self.encode(video))

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of `encode`'s output for one video of `num_frames` frames (without the batch axis)."""
        return ((num_frames - 2 * self.context_frames) // self.frames_per_latent, *self.latent_dims(height, width))

    def identity(self) -> dict:
        """What names this autoencoder in latent files and run configs."""
        from vpt.config import config_to_dict

        return {
            "type": self.type,
            "arch": config_to_dict(self.config),
            "frames_per_latent": self.frames_per_latent,
            "latent_scale": self.latent_scale,
            "latent_shift": self.latent_shift,
        }


class FrameAutoencoder(Autoencoder):
    """An autoencoder of single images, applied to every frame (k = 1)."""

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, c, h, w) unscaled continuous latents."""

    @abc.abstractmethod
    def decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, c, h, w) -> (N, C, H, W)."""

    @abc.abstractmethod
    def forward_train_images(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) -> reconstruction (N, C, H, W), regularisers."""

    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        return self.encode_images(clips[:, 0])

    def decode_clips(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_images(latents)[:, None]

    def forward_train(self, clips: torch.Tensor) -> TrainOutput:
        reconstruction, regularizers = self.forward_train_images(clips[:, 0])
        return TrainOutput(reconstruction[:, None], regularizers)


def count_indices(state: dict[str, torch.Tensor], pattern: str) -> int:
    """How many distinct values the group of `pattern` takes over the state's keys (layers per level...)."""
    regex = re.compile(pattern)
    return len({m.group(1) for key in state if (m := regex.match(key))})
