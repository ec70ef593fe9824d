"""The KL-VAE of Stable Diffusion through diffusers' `AutoencoderKL` (Seer and the official Latte use
`sd-vae-ft-ema`). A local diffusers folder loads with `AutoencoderKL.from_pretrained`; its
`scaling_factor` (0.18215 for SD 1.x) and `shift_factor` become the latent scale and shift.

`encode` returns the posterior mean (deterministic, so cached latents are reproducible) and
`encode_posterior` mean and log-variance (what `vpt save-latents` stores for it); training decodes a
reparameterised sample and adds the KL term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vpt.models.autoencoders.base import FrameAutoencoder


@dataclass
class KLVAEConfig:
    """The `AutoencoderKL` arguments vpt sets (plain Down/UpDecoder blocks; defaults: SD 1.x)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0


class KLVAE(FrameAutoencoder):
    type = "kl-vae"
    presets = {
        "sd": dict(
            block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, scaling_factor=0.18215
        )
    }
    Config = KLVAEConfig
    has_posterior = True

    def __init__(self, config: KLVAEConfig):
        from diffusers import AutoencoderKL

        super().__init__(config)
        levels = len(config.block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels,
            norm_num_groups=config.norm_num_groups,
            mid_block_add_attention=config.mid_block_add_attention,
            scaling_factor=config.scaling_factor,
            shift_factor=config.shift_factor,
        )

    @classmethod
    def from_diffusers(cls, folder: str | Path) -> KLVAE:
        """Wrap a local diffusers `AutoencoderKL` folder (the `vae/` of a pipeline, or the folder itself)."""
        from diffusers import AutoencoderKL

        from vpt.weights import check_pickled_weights

        check_pickled_weights(folder)
        vae = AutoencoderKL.from_pretrained(str(folder))
        cfg = vae.config
        plain = all(t == "DownEncoderBlock2D" for t in cfg.down_block_types) and all(
            t == "UpDecoderBlock2D" for t in cfg.up_block_types
        )
        if not plain or not cfg.use_quant_conv or not cfg.use_post_quant_conv:
            from vpt.errors import VptError

            raise VptError(
                f"{folder}: this AutoencoderKL uses blocks vpt does not rebuild "
                f"({cfg.down_block_types}); only the Stable Diffusion layout is supported"
            )
        config = KLVAEConfig(
            in_channels=cfg.in_channels,
            out_channels=cfg.out_channels,
            block_out_channels=list(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels,
            norm_num_groups=cfg.norm_num_groups,
            mid_block_add_attention=cfg.mid_block_add_attention,
            scaling_factor=float(cfg.scaling_factor),
            shift_factor=float(cfg.shift_factor or 0.0),
        )
        model = cls.__new__(cls)
        FrameAutoencoder.__init__(model, config)
        model.vae = vae
        return model

    @property
    def latent_scale(self) -> float:
        return self.config.scaling_factor

    @property
    def latent_shift(self) -> float:
        return self.config.shift_factor

    def latent_dims(self, height: int, width: int) -> tuple[int, ...]:
        factor = 2 ** (len(self.config.block_out_channels) - 1)
        return (self.config.latent_channels, height // factor, width // factor)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mean

    def posterior_clips(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(clips[:, 0]).latent_dist  # diffusers clamps the log-variance to [-30, 20]
        return posterior.mean, posterior.logvar

    def decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample

    def forward_train_images(self, images):
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample  # global torch RNG: restored on resume
        return reconstruction, {"kl": posterior.kl().mean()}

    def last_layer(self) -> nn.Parameter:
        return self.vae.decoder.conv_out.weight
