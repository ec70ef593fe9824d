"""Autoencoder training objective: reconstruction + LPIPS + codebook / KL + patch GAN, on ONE optimizer.

The shared training loop steps a single optimizer on `loss(batch)["loss"]`. A GAN needs two players
that minimise different things, so the total returned here is built so that each parameter set only
receives the gradient of its own objective:

    total = L_autoencoder + L_discriminator
    L_autoencoder   = rec + w_p * LPIPS + w_q * codebook + w_kl * KL + lambda * f(D_frozen(x_hat))
    L_discriminator = disc_factor * gan_d_loss(D(x), D(sg[x_hat]))

- The generator's adversarial term evaluates the discriminator through `torch.func.functional_call`
  with *detached* copies of its parameters: gradients reach x_hat (and so the autoencoder) but never
  the discriminator's weights.
- The discriminator's term sees detached reconstructions: its gradient reaches only the discriminator.

So one backward of `total` gives exactly the gradients taming's two alternating optimizers would
compute at the same weights (the updates are simultaneous rather than alternating). `param_groups()`
gives the discriminator its own group (with `lr_scale`) so it can learn at a different rate.

Schedule and weights follow taming: the GAN terms switch on at `disc_start` (counted in optimizer
steps), lambda is the adaptive weight ||grad_last(rec)|| / (||grad_last(G)|| + 1e-4), clamped to
[0, 1e4], times `gan_weight` (or just `gan_weight` when `adaptive_weight` is off, as Latte's VG does).

`loss.gan_schedule: vg` is VideoGeneration-PyTorch's train_vae.py instead, on one process: before `disc_start`
the discriminator is not run at all (no gradient, so AdamW leaves its weights and moments untouched and its
bias correction starts at `disc_start`; its batch-norm statistics stay), and the generator's term runs the
discriminator with live parameters, so that term's gradient reaches the discriminator too and its update
descends L_discriminator + lambda * f(D(x_hat)) (upstream never clears that gradient before the
discriminator's step).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vpt.errors import ConfigError


@dataclass
class LossConfig:
    """The `loss:` section of `vpt train-ae` (defaults: taming's VQGAN recipe)."""

    reconstruction: Literal["l1", "l2"] = "l1"  # taming: L1; Latte's VG VAE: L2 (MSE)
    reconstruction_weight: float = 1.0
    perceptual_weight: float = 1.0  # LPIPS (VGG16 + linear heads); 0 turns it off
    lpips_backbone: str = ""  # path to the ImageNet VGG16 weights; "" = where vpt.models.lpips looks by default
    # dropout in front of LPIPS's linear heads while training (MOSO's train_dist.py: 0.5, its model.train() reaching
    # the lpips package's network); 0 = vpt's eval-mode LPIPS, the same expected loss without the noise
    lpips_head_dropout: float = 0.0
    codebook_weight: float = 1.0  # VQ models: codebook + commitment loss weight
    kl_weight: float = 1e-6  # KL models (taming's KL recipe: 1e-6; Latte's VG: 5e-6)
    # taming NLayerDiscriminator / VG's PatchGAN / PVDM's 2-D + 3-D pair with feature matching (pvdm autoencoder only)
    discriminator: Literal["none", "patchgan", "latte", "pvdm"] = "patchgan"
    disc_layers: int = 3
    disc_channels: int = 64
    gan_loss: Literal["hinge", "vanilla", "lsgan"] = "hinge"  # VG uses lsgan
    gan_weight: float = 0.8  # generator adversarial weight (taming disc_weight; VG disc_weight 0.5)
    adaptive_weight: bool = True  # taming's gradient-norm balancing; VG: false
    disc_factor: float = 1.0  # weight of the discriminator's own loss (VG: 0.5)
    disc_start: int = 10000  # optimizer step from which the GAN terms are on
    disc_lr_scale: float = 1.0  # discriminator lr = train.lr * disc_lr_scale
    feature_matching_weight: float = 0.0  # discriminator "pvdm": L1 between D features of x_hat and x (PVDM: 4.0)
    discriminator_init_from: str = ""  # discriminator "pvdm": start the discriminators from PVDM's loss_last.pth
    # joint: both players update on every step from one backward pass (above). alternating (pvdm and moso
    # autoencoders, one process): whole optimizer steps of one player at a time as upstream's trainer does them,
    # PVDM's first_stage_train (pvdm_objective.py) or MOSO's train_dist.py (moso_objective.py). vg (one
    # discriminator, one process): VideoGeneration-PyTorch's train_vae.py, joint with the two differences in
    # this module's docstring.
    gan_schedule: Literal["joint", "alternating", "vg"] = "joint"
    clip_autoencoder: bool = True  # false: train.grad_clip applies to the discriminators only (PVDM upstream)

    def __post_init__(self) -> None:
        for name in (
            "reconstruction_weight",
            "perceptual_weight",
            "codebook_weight",
            "kl_weight",
            "gan_weight",
            "disc_factor",
            "disc_lr_scale",
            "feature_matching_weight",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.lpips_head_dropout < 1:
            raise ValueError(f"loss.lpips_head_dropout must be in [0, 1), got {self.lpips_head_dropout}")
        if self.disc_layers < 1 or self.disc_channels < 1:
            raise ValueError("loss.disc_layers and loss.disc_channels must be >= 1")


def discriminator_loss(kind: str, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    if kind == "vanilla":
        return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())
    # LSGAN as VG: real -> 1, fake -> 0, mean of the two.
    return 0.5 * (
        F.mse_loss(logits_real, torch.ones_like(logits_real)) + F.mse_loss(logits_fake, torch.zeros_like(logits_fake))
    )


def generator_loss(kind: str, logits_fake: torch.Tensor) -> torch.Tensor:
    if kind == "lsgan":
        return F.mse_loss(logits_fake, torch.ones_like(logits_fake))
    return -logits_fake.mean()  # taming uses this for both hinge and vanilla


def build_discriminator(cfg: LossConfig, in_channels: int) -> nn.Module | None:
    from vpt.models.autoencoders.discriminators import LatteDiscriminator, NLayerDiscriminator

    if cfg.discriminator == "patchgan":
        return NLayerDiscriminator(in_channels, cfg.disc_channels, cfg.disc_layers)
    if cfg.discriminator == "latte":
        widths = tuple(min(cfg.disc_channels * 2**i, cfg.disc_channels * 8) for i in range(cfg.disc_layers))
        return LatteDiscriminator(in_channels, widths)
    return None


def load_perceptual(cfg: LossConfig) -> tuple[nn.Module | None, str]:
    """The frozen LPIPS network, or (None, reason) when it is off or its backbone file is missing."""
    if cfg.perceptual_weight == 0:
        return None, "loss.perceptual_weight is 0"
    from vpt.errors import VptError
    from vpt.models.lpips import load_lpips
    from vpt.weights import UnsafeWeightsError

    try:
        network = load_lpips("vgg", backbone_path=cfg.lpips_backbone or None)
    except UnsafeWeightsError:
        raise  # a file that would run code stops the run; a missing one only turns LPIPS off
    except VptError as exc:
        return None, str(exc)
    return network.eval().requires_grad_(False), ""


class AutoencoderObjective(nn.Module):
    """What `vpt train-ae` hands the shared loop: the autoencoder, its discriminator and the loss.

    State dict: `autoencoder.*` (the inference weights), `discriminator.*`, and `micro_steps` (how many
    training batches were seen, so the GAN schedule survives a resume). LPIPS is frozen and kept out
    of the state dict (it is rebuilt from its weight files).
    """

    def __init__(self, autoencoder, cfg: LossConfig, *, grad_accum: int = 1, perceptual: nn.Module | None = None):
        super().__init__()
        self.autoencoder, self.cfg, self.grad_accum = autoencoder, cfg, grad_accum
        self.discriminator = build_discriminator(cfg, autoencoder.image_channels)
        self.register_buffer("micro_steps", torch.zeros((), dtype=torch.long))
        object.__setattr__(self, "_perceptual", perceptual)  # not a submodule: no checkpoint bloat
        if cfg.gan_schedule != "joint" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # a player without gradient in some steps, which DDP's reducer refuses
            raise ConfigError(f"loss.gan_schedule: {cfg.gan_schedule} trains on one process; use joint with several")

    def set_perceptual(self, network: nn.Module | None) -> None:
        object.__setattr__(self, "_perceptual", network)

    def start(self) -> None:
        """Called once when a run starts from scratch (not on resume); recipes with weights to start from override it."""

    @property
    def step(self) -> int:
        """Optimizer steps done (the GAN schedule's clock)."""
        return int(self.micro_steps) // self.grad_accum

    def param_groups(self) -> list[dict[str, Any]]:
        autoencoder = [p for p in self.autoencoder.parameters() if p.requires_grad]
        groups = [{"params": autoencoder, "lr_scale": 1.0, "grad_clip": self.cfg.clip_autoencoder}]
        if self.discriminator is not None:
            groups.append({"params": list(self.discriminator.parameters()), "lr_scale": self.cfg.disc_lr_scale})
        return groups

    # --- the loss ----------------------------------------------------------------------------
    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        target, fake, nll, ae_loss, logs = self._autoencoder_terms(batch)
        cfg = self.cfg
        step = self.step
        if self.training:
            self.micro_steps += 1
        total = ae_loss
        vg = cfg.gan_schedule == "vg"
        if self.discriminator is not None and (step >= cfg.disc_start or not vg):
            gan_on = float(step >= cfg.disc_start)
            generated = self.discriminator(fake) if vg else self._frozen_discriminator(fake)
            g_loss = generator_loss(cfg.gan_loss, generated)
            weight = self._gan_weight(nll, g_loss) if gan_on else torch.zeros((), device=fake.device)
            logits_fake = self.discriminator(fake.detach())  # before the real batch, as upstream's batch-norm updates
            d_loss = discriminator_loss(cfg.gan_loss, self.discriminator(target), logits_fake)
            # Before disc_start (joint) both terms are multiplied by 0: the graph still touches every
            # discriminator parameter, which keeps DDP's gradient bookkeeping simple.
            total = total + gan_on * weight * g_loss + gan_on * cfg.disc_factor * d_loss
            logs.update(g_loss=g_loss.detach(), d_loss=d_loss.detach(), gan_weight=weight.detach())
        return {"loss": total, **logs}

    def _autoencoder_terms(self, batch: Any):
        """The autoencoder's own objective on a batch: frames `target` and `fake` ((N k), C, H, W), the
        reconstruction + LPIPS term `nll`, `ae_loss` = nll + weighted codebook / KL terms, and their logs."""
        video = batch["video"] if isinstance(batch, dict) else batch  # (B, T, C, H, W) in [-1, 1]
        clips = self.autoencoder.to_clips(video)  # (N, k + 2c, C, H, W): c context frames, usually 0
        out = self.autoencoder.forward_train(clips)
        target = rearrange(self.autoencoder.without_context(clips), "n k c h w -> (n k) c h w")
        fake = rearrange(out.reconstruction, "n k c h w -> (n k) c h w")
        cfg = self.cfg

        pixel = (fake - target).abs() if cfg.reconstruction == "l1" else (fake - target) ** 2
        rec = cfg.reconstruction_weight * pixel.mean()
        logs: dict[str, torch.Tensor] = {"rec": rec.detach()}
        nll = rec
        if self._perceptual is not None:
            perceptual = self._perceptual_distance(fake, target).mean()
            nll = nll + cfg.perceptual_weight * perceptual
            logs["lpips"] = perceptual.detach()
        ae_loss = nll
        for name, value in out.regularizers.items():
            weight = cfg.codebook_weight if name == "codebook" else cfg.kl_weight
            ae_loss = ae_loss + weight * value
            logs[name] = value.detach()
        return target, fake, nll, ae_loss, logs

    def _perceptual_distance(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        network = self._perceptual
        probe = next(itertools.chain(network.parameters(), network.buffers()), None)
        if probe is not None and probe.device != fake.device:  # kept outside the module tree, so moved here
            network.to(fake.device)
        if fake.shape[1] == 1:  # grayscale: LPIPS sees the channel three times (VG's scaling layer does the same)
            fake, target = fake.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        if self.training and self.cfg.lpips_head_dropout:
            return network(fake, target, head_dropout=self.cfg.lpips_head_dropout)  # (N,)
        return network(fake, target)  # (N,)

    def _frozen_discriminator(self, images: torch.Tensor) -> torch.Tensor:
        return frozen_call(self.discriminator, images)

    def _gan_weight(self, nll: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        if not self.cfg.adaptive_weight or not torch.is_grad_enabled():
            return torch.tensor(self.cfg.gan_weight, device=nll.device)
        last = self.autoencoder.last_layer()
        nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
        return weight.clamp(0.0, 1e4).detach() * self.cfg.gan_weight


def frozen_call(discriminator: nn.Module, inputs: torch.Tensor):
    """discriminator(inputs) with detached parameters: gradients flow to `inputs` only."""
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    return torch.func.functional_call(discriminator, frozen, (inputs,))


def check_loss_config(cfg: LossConfig, autoencoder) -> None:
    """Settings that make no sense for this autoencoder (one line, before any training)."""
    if cfg.gan_schedule == "vg" and (
        cfg.discriminator not in ("patchgan", "latte") or autoencoder.type in ("pvdm", "moso")
    ):
        raise ConfigError(
            "loss.gan_schedule: vg is VideoGeneration-PyTorch's recipe: one patchgan or latte discriminator, "
            "not the pvdm or moso autoencoder's"
        )
    if autoencoder.type != "pvdm" and (
        cfg.discriminator == "pvdm" or cfg.feature_matching_weight > 0 or cfg.discriminator_init_from
    ):
        raise ConfigError(
            "loss.discriminator: pvdm, loss.feature_matching_weight and loss.discriminator_init_from belong to "
            "the pvdm autoencoder's recipe"
        )
    if autoencoder.type not in ("pvdm", "moso") and cfg.gan_schedule == "alternating":
        raise ConfigError("loss.gan_schedule: alternating belongs to the pvdm and moso autoencoders' recipes")
    if cfg.perceptual_weight > 0 and autoencoder.image_channels not in (1, 3):
        raise ConfigError(
            f"loss.perceptual_weight: LPIPS needs 1- or 3-channel frames, the autoencoder has {autoencoder.image_channels}"
        )
