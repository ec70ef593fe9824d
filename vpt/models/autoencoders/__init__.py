"""Autoencoders behind one interface (see `base.Autoencoder`): taming VQGAN (`vqgan`, RIVER's ldm-vq),
RIVER's own VQVAE (`river-vqvae`), Stable Diffusion's KL-VAE through diffusers (`kl-vae`), the frame
VAE of Latte's VideoGeneration-PyTorch (`latte-vae`), PVDM's projected clip autoencoder (`pvdm`) and
MOSO's three-stream VQ-VAE (`moso`: scene, object and motion tokens from one codebook, RSVP-M's first stage).
`vpt train-ae` trains them, `vpt save-latents` caches their latents, and the latent backends load them
with `load_autoencoder`.
"""

from vpt.models.autoencoders.base import Autoencoder, FrameAutoencoder, TrainOutput
from vpt.models.autoencoders.loading import (
    AUTOENCODERS,
    autoencoder_class,
    autoencoder_from_upstream_state,
    build_autoencoder,
    load_autoencoder,
    resolve_arch,
)

__all__ = [
    "Autoencoder",
    "FrameAutoencoder",
    "TrainOutput",
    "AUTOENCODERS",
    "autoencoder_class",
    "autoencoder_from_upstream_state",
    "build_autoencoder",
    "load_autoencoder",
    "resolve_arch",
]
