"""The one training loop that `vpt train-ae` and `vpt train <backend>` share (see loop.py)."""

from vpt.training.config import TrainConfig, lr_factor
from vpt.training.loop import Hooks, seed_everything, train

__all__ = ["Hooks", "TrainConfig", "lr_factor", "seed_everything", "train"]
