"""PVDM's autoencoder recipe on vpt's single-optimizer loop (see `objective.py` for how one backward
gives each player only the gradient of its own objective):

    L_autoencoder   = w_rec * mean|x - x_hat| (or squared: loss.reconstruction) + w_p * LPIPS(one random frame per clip)
                      + on * (w_gan * (-mean D2(x_hat_f) - mean D3(x_hat)) + w_fm * sum_stages L1(D(x_hat), sg[D(x)]))
    L_discriminator = on * disc_factor * (d_loss(D2) + d_loss(D3))
    on = 1 from optimizer step `disc_start` (0 before)

D2 sees the chosen frame of each clip, D3 the whole clip (N, C, k, H, W); feature matching runs over
every stage output except the logits. No adaptive weight. The published values are w_rec = w_p =
w_fm = 4, w_gan = disc_factor = 1. State dict: `autoencoder.*`, `discriminator_2d.*`,
`discriminator_3d.*` (upstream's `loss_last.pth` names, see `load_upstream_discriminators`).

`loss.gan_schedule: alternating` is upstream's `first_stage_train` instead: every optimizer step trains one
player. Steps up to max(disc_start, 0) train the autoencoder on L_autoencoder, whose GAN terms switch on at
micro-batch `disc_start` (upstream's `adopt_weight` counts iterations); after that the discriminators (on
L_discriminator, the reconstructions made without gradients) and the autoencoder take turns. A player's
parameters get no gradient at all in the other's steps, so AdamW leaves them and their moments untouched, as
upstream's two optimizers do; each discriminator is its own parameter group (clipped against its own norm).
With `train.grad_accum: 3` a step is upstream's phase of 3 accumulated iterations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from vpt.errors import ConfigError, VptError
from vpt.models.autoencoders.discriminators import FeaturePatchDiscriminator
from vpt.models.autoencoders.objective import (
    AutoencoderObjective,
    LossConfig,
    discriminator_loss,
    frozen_call,
)

DISCRIMINATORS = ("discriminator_2d", "discriminator_3d")


def check_pvdm_loss(cfg: LossConfig) -> None:
    """Settings of the generic recipe PVDM's has no place for (one line each)."""
    if cfg.discriminator not in ("pvdm", "none"):
        raise ConfigError(
            f"loss.discriminator: the pvdm autoencoder trains with 'pvdm' (its 2-D + 3-D pair) or 'none', "
            f"not '{cfg.discriminator}'"
        )
    if cfg.adaptive_weight and cfg.discriminator == "pvdm":
        raise ConfigError("loss.adaptive_weight: PVDM's recipe uses the fixed loss.gan_weight; set it to false")
    if cfg.discriminator_init_from and cfg.discriminator != "pvdm":
        raise ConfigError("loss.discriminator_init_from needs loss.discriminator: pvdm")
    if cfg.gan_loss == "lsgan":
        raise ConfigError("loss.gan_loss: PVDM's recipe takes hinge or vanilla")


class PVDMObjective(AutoencoderObjective):
    def __init__(self, autoencoder, cfg: LossConfig, *, grad_accum: int = 1, perceptual=None):
        check_pvdm_loss(cfg)
        # the base class builds the single generic discriminator; PVDM's pair is built here instead
        super().__init__(
            autoencoder, dataclasses.replace(cfg, discriminator="none"), grad_accum=grad_accum, perceptual=perceptual
        )
        self.cfg = cfg
        self.gan = cfg.discriminator == "pvdm"
        self.alternating = cfg.gan_schedule == "alternating"
        if self.gan:
            channels = autoencoder.image_channels
            self.discriminator_2d = FeaturePatchDiscriminator(2, channels, cfg.disc_channels, cfg.disc_layers)
            self.discriminator_3d = FeaturePatchDiscriminator(3, channels, cfg.disc_channels, cfg.disc_layers)

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        if self.gan and self.alternating:  # each discriminator clipped against its own norm, as upstream
            groups += [
                {"params": list(getattr(self, name).parameters()), "lr_scale": self.cfg.disc_lr_scale}
                for name in DISCRIMINATORS
            ]
        elif self.gan:
            params = [p for name in DISCRIMINATORS for p in getattr(self, name).parameters()]
            groups.append({"params": params, "lr_scale": self.cfg.disc_lr_scale})
        return groups

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        video = batch["video"] if isinstance(batch, dict) else batch  # (B, T, C, H, W) in [-1, 1]
        real = self.autoencoder.to_clips(video)  # (N, k, C, H, W)
        micro = int(self.micro_steps)  # micro-batches before this one (upstream's iteration counter)
        if self.training:
            self.micro_steps += 1
        if self.gan and self.alternating and self.trains_discriminators(micro // self.grad_accum):
            return self._discriminator_step(real)
        fake = self.autoencoder.forward_train(real).reconstruction  # (N, k, C, H, W)
        cfg = self.cfg
        rec = ((fake - real).abs() if cfg.reconstruction == "l1" else (fake - real) ** 2).mean()
        logs: dict[str, torch.Tensor] = {"rec": rec.detach()}
        total = cfg.reconstruction_weight * rec

        real_frame, fake_frame = _chosen_frames(real, fake)
        if self._perceptual is not None:
            perceptual = self._perceptual_distance(fake_frame, real_frame).mean()
            total = total + cfg.perceptual_weight * perceptual
            logs["lpips"] = perceptual.detach()
        if not self.gan:
            return {"loss": total, **logs}

        pairs = self._pairs(real, fake, real_frame, fake_frame)
        if self.alternating:  # upstream's adopt_weight counts iterations
            on = float(micro >= cfg.disc_start)
            g_loss, matching = self._generator_terms(pairs)
            total = total + on * (cfg.gan_weight * g_loss + cfg.feature_matching_weight * matching)
            return {"loss": total, **logs, "g_loss": g_loss.detach(), "feature_matching": matching.detach()}
        on = float(micro // self.grad_accum >= cfg.disc_start)
        g_loss, matching, d_loss = self._adversarial(pairs)
        # Before disc_start every term is multiplied by 0 but still touches the discriminators (DDP bookkeeping).
        total = total + on * (
            cfg.gan_weight * g_loss + cfg.feature_matching_weight * matching + cfg.disc_factor * d_loss
        )
        logs.update(g_loss=g_loss.detach(), feature_matching=matching.detach(), d_loss=d_loss.detach())
        return {"loss": total, **logs}

    def trains_discriminators(self, step: int) -> bool:
        """Whether optimizer step `step` (from 0) belongs to the discriminators under `gan_schedule: alternating`:
        upstream switches players after every step from `disc_start` on, so steps up to max(disc_start, 0) train
        the autoencoder and the discriminators take every other step after that."""
        first = max(self.cfg.disc_start, 0)
        return step > first and (step - first) % 2 == 1

    def _discriminator_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Upstream's discriminator phase: the reconstruction without gradients, the discriminators' loss only."""
        with torch.no_grad():
            fake = self.autoencoder.forward_train(real).reconstruction  # (N, k, C, H, W)
        d_loss = sum(
            discriminator_loss(self.cfg.gan_loss, discriminator(real_input)[0], discriminator(fake_input)[0])
            for discriminator, real_input, fake_input in self._pairs(real, fake, *_chosen_frames(real, fake))
        )
        return {"loss": self.cfg.disc_factor * d_loss, "d_loss": d_loss.detach()}

    def _pairs(self, real, fake, real_frame, fake_frame):
        """(discriminator, real input, reconstructed input) for the 2-D (one frame) and the 3-D (the clip) one."""
        real_clip, fake_clip = (rearrange(v, "n k c h w -> n c k h w") for v in (real, fake))
        return (self.discriminator_2d, real_frame, fake_frame), (self.discriminator_3d, real_clip, fake_clip)

    def _generator_terms(self, pairs):
        """Summed over both discriminators: generator term and feature matching, with no gradient to the
        discriminators (the autoencoder's step leaves them alone)."""
        g_loss = matching = 0.0
        for discriminator, real, fake in pairs:
            with torch.no_grad():
                _, features_real = discriminator(real)
            logits_fake, features_fake = frozen_call(discriminator, fake)
            g_loss = g_loss - logits_fake.mean()
            matching = matching + sum(F.l1_loss(f, r) for f, r in zip(features_fake[:-1], features_real[:-1]))
        return g_loss, matching

    def _adversarial(self, pairs):
        """Summed over both discriminators: generator term, feature matching, discriminator loss."""
        g_loss = matching = d_loss = 0.0
        for discriminator, real, fake in pairs:
            logits_real, features_real = discriminator(real)
            logits_fake, features_fake = frozen_call(discriminator, fake)  # gradients reach x_hat only
            g_loss = g_loss - logits_fake.mean()
            matching = matching + sum(F.l1_loss(f, r.detach()) for f, r in zip(features_fake[:-1], features_real[:-1]))
            d_loss = d_loss + discriminator_loss(self.cfg.gan_loss, logits_real, discriminator(fake.detach())[0])
        return g_loss, matching, d_loss

    def start(self) -> None:
        """On a run's first start: the discriminators from `loss.discriminator_init_from`, when set."""
        if self.cfg.discriminator_init_from:
            from vpt.weights import read_state_dict

            self.load_upstream_discriminators(read_state_dict(self.cfg.discriminator_init_from))

    def load_upstream_discriminators(self, state: dict[str, torch.Tensor]) -> None:
        """Load the discriminators from PVDM's `loss_last.pth` (its LPIPS part is dropped: vpt reads LPIPS
        from its own weight files)."""
        if not self.gan:
            raise VptError("loss.discriminator is 'none': there are no discriminators to load")
        state = {k: v for k, v in state.items() if k.startswith(DISCRIMINATORS)}
        for name in DISCRIMINATORS:
            part = {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
            try:
                getattr(self, name).load_state_dict(part)
            except RuntimeError as exc:
                raise VptError(f"{name}: the weights do not fit ({str(exc).splitlines()[0]})") from None


def _chosen_frames(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One random frame per clip (N, C, H, W) of the real and the reconstructed clips (N, k, C, H, W), the frame
    LPIPS and the 2-D discriminator see."""
    rows = torch.arange(len(real), device=real.device)
    chosen = torch.randint(real.shape[1], (len(real),), device=real.device)
    return real[rows, chosen], fake[rows, chosen]
