"""MOSO's autoencoder recipe on vpt's single-optimizer loop (see `objective.py` for how one backward
gives each player only the gradient of its own objective):

    L_autoencoder   = w_rec * mean|x - x_hat| + w_p * LPIPS(every frame) + codebook
                      + on * w_gan * (-mean D(x_hat))
    L_discriminator = on * disc_factor * hinge(D(x), D(sg[x_hat]))
    codebook        = the commitment terms of the scene, object and motion quantisations (the codes
                      themselves move by moving averages, not by gradients)

D is taming's PatchGAN over a whole clip, its k frames stacked on the channel axis (k * C inputs: 48
for 16 RGB frames), as MOSO's `input_formation: concat_c`, seeing upstream's [0, 1] frames. Upstream's
generator weight is fixed (`Gen_weight` 0.1: `loss.adaptive_weight: false`, `loss.gan_weight: 0.1`).
Its published UCF-101 run sets the GAN's start to the run's last step, so that run never trained
against the discriminator.

`loss.gan_schedule: joint` (the default) moves both players on every step from one backward pass.
`alternating` is upstream's `train_dist.py` instead, one Adam over both players: steps before
`disc_start` train the autoencoder alone (no discriminator call); from it on odd steps train the
discriminator (L_discriminator, the reconstructions made without gradients and without moving the
codebook) and even steps the autoencoder on L_autoencoder, whose GAN term there also reaches the
discriminator's weights (upstream does not zero them for this model), pushing D(x_hat) up. In the
discriminator's steps the autoencoder gets no gradient, so AdamW leaves it and its moments alone.

`loss.lpips_head_dropout: 0.5` is upstream's LPIPS in training mode: dropout in front of its linear heads, whose
masks upstream's discriminator iterations draw as well (they compute the whole autoencoder loss without using
it), so the global generator's stream, which the motion encoder's dropout reads, stays upstream's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from einops import rearrange

from vpt.errors import ConfigError
from vpt.models.autoencoders.discriminators import NLayerDiscriminator
from vpt.models.autoencoders.objective import (
    AutoencoderObjective,
    LossConfig,
    discriminator_loss,
    generator_loss,
)


class StackedFramesDiscriminator(NLayerDiscriminator):
    """PatchGAN over clips: frames ((N k), C, H, W) are regrouped into (N, k * C, H, W) first."""

    def __init__(self, frames: int, channels: int, width: int, layers: int):
        super().__init__(frames * channels, width, layers)
        self.frames = frames

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images ((N k), C, H, W) in vpt's [-1, 1]; upstream's discriminator sees [0, 1] frames
        return super().forward(rearrange((images + 1) / 2, "(n k) c h w -> n (k c) h w", k=self.frames))


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
        self.alternating = cfg.gan_schedule == "alternating" and self.discriminator is not None

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        # upstream's first phase: scene and object streams see the still and the moving pixels apart
        self.autoencoder.split_inputs = self.step < self.autoencoder.config.split_input_steps
        if not self.alternating:
            return super().loss(batch)
        step = self.step
        if self.training:
            self.micro_steps += 1
        if self.trains_discriminator(step):
            return self._discriminator_step(batch)
        _, fake, nll, ae_loss, logs = self._autoencoder_terms(batch)
        if step < self.cfg.disc_start:
            return {"loss": ae_loss, **logs}
        g_loss = generator_loss(self.cfg.gan_loss, self.discriminator(fake))  # not frozen: as upstream
        weight = self._gan_weight(nll, g_loss)
        return {"loss": ae_loss + weight * g_loss, **logs, "g_loss": g_loss.detach(), "gan_weight": weight.detach()}

    def trains_discriminator(self, step: int) -> bool:
        """Whether optimizer step `step` (from 0) belongs to the discriminator under `gan_schedule: alternating`:
        upstream's odd iterations from `disc_start` on."""
        return step >= self.cfg.disc_start and step % 2 == 1

    def _discriminator_step(self, batch: Any) -> dict[str, torch.Tensor]:
        video = batch["video"] if isinstance(batch, dict) else batch  # (B, T, C, H, W) in [-1, 1]
        clips = self.autoencoder.to_clips(video)  # (N, k + 2c, C, H, W)
        with torch.no_grad():
            fake = self.autoencoder.forward_train(clips, move_codes=False).reconstruction  # (N, k, C, H, W)
        real = self.autoencoder.without_context(clips)  # (N, k, C, H, W)
        real, fake = (rearrange(v, "n k c h w -> (n k) c h w") for v in (real, fake))
        if self._perceptual is not None and self.cfg.lpips_head_dropout:
            with torch.no_grad():  # unused: upstream's discriminator iterations draw its head-dropout masks too
                self._perceptual_distance(fake, real)
        d_loss = discriminator_loss(self.cfg.gan_loss, self.discriminator(real), self.discriminator(fake))
        return {"loss": self.cfg.disc_factor * d_loss, "d_loss": d_loss.detach()}
