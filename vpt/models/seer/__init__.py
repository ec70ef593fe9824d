"""Seer (Gu et al., ICLR 2024): language-instructed video prediction with an inflated SD v1.5 UNet.

unet.py      SeerUNet: SD's UNet per frame, clip-wide GroupNorm, SAWT temporal blocks
fstext.py    FSText: one CLIP embedding -> one sub-instruction per frame
layers.py    the frame-aware blocks both are made of
schedule.py  training DDPM and (upstream-compatible) DDIM schedules
text.py      CLIP text path, and a built-in tokenizer for models without SD weights
weights.py   SD v1.5 folders, FSText initialisation, released Seer checkpoints
backend.py   the `seer` backend: loss / predict / config
"""

from vpt.models.seer.backend import Seer, SeerConfig

__all__ = ["Seer", "SeerConfig"]
