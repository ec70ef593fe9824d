"""MOSO's autoencoder recipe on vpt's single-optimizer loop (see `objective.py` for how one backward
gives each player only the gradient of its own objective):

    L_autoencoder   = w_rec * mean|x - x_hat| + w_p * LPIPS(every frame) + codebook
                      + on * w_gan * (-mean D(x_hat))
    L_discriminator = on * disc_factor * hinge(D(x), D(sg[x_hat]))
    codebook        = the commitment terms of the scene, object and motion quantisations (the codes
                      themselves move by moving averages, not by gradients)

D is taming's PatchGAN over a whole clip, its k frames stacked on the channel axis (k * C inputs: 48
for 16 RGB frames), as MOSO's `input_formation: concat_c`. Upstream's generator weight is fixed
(`Gen_weight` 0.1: `loss.adaptive_weight: false`, `loss.gan_weight: 0.1`) and it alternates generator
and discriminator steps once the GAN is on; here both move on every step. Its published UCF-101 run
sets the GAN's start to the run's last step, so that run never trained against the discriminator.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from einops import rearrange

from vpt.errors import ConfigError
from vpt.models.autoencoders.discriminators import NLayerDiscriminator
from vpt.models.autoencoders.objective import AutoencoderObjective, LossConfig


class StackedFramesDiscriminator(NLayerDiscriminator):
    """PatchGAN over clips: frames ((N k), C, H, W) are regrouped into (N, k * C, H, W) first."""

    def __init__(self, frames: int, channels: int, width: int, layers: int):
        super().__init__(frames * channels, width, layers)
        self.frames = frames

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(rearrange(images, "(n k) c h w -> n (k c) h w", k=self.frames))


def check_moso_loss(cfg: LossConfig) -> None:
    if cfg.discriminator not in ("patchgan", "none"):
        raise ConfigError(
            f"loss.discriminator: the moso autoencoder trains with 'patchgan' (over stacked frames) or "
            f"'none', not '{cfg.discriminator}'"
        )


class MosoObjective(AutoencoderObjective):
    def __init__(self, autoencoder, cfg: LossConfig, *, grad_accum: int = 1, perceptual=None):
        check_moso_loss(cfg)
        # the base class would build a per-frame discriminator; the stacked-frame one is built here instead
        super().__init__(
            autoencoder, dataclasses.replace(cfg, discriminator="none"), grad_accum=grad_accum, perceptual=perceptual
        )
        self.cfg = cfg
        if cfg.discriminator == "patchgan":
            self.discriminator = StackedFramesDiscriminator(
                autoencoder.frames_per_latent, autoencoder.image_channels, cfg.disc_channels, cfg.disc_layers
            )

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        # upstream's first phase: scene and object streams see the still and the moving pixels apart
        self.autoencoder.split_inputs = self.step < self.autoencoder.config.split_input_steps
        return super().loss(batch)
