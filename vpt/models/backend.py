"""The small surface every backend shares, so trainer, `sample` and `eval-fvd` never branch on names.

    loss(batch) -> {"loss": scalar, ...}              the training objective
    predict(context, num_frames, *, prompt, steps, generator) -> frames
        context: (B, T_ctx, C, H, W) in [-1, 1]  ->  (B, num_frames, C, H, W) in [-1, 1]
    Config                                              dataclass of the `model:` config section
    takes_text                                          whether `prompt` is used
    from_checkpoint(path, autoencoder=)                 optional: published upstream weights
    Config.context_frames                               optional: frames its evaluation protocol gives
                                                        `predict` (default of `vpt sample` and of the
                                                        periodic samples of `vpt train`)
    Extra keyword arguments of a backend's `predict` (e.g. `guidance_scale`) are its sampling options;
    `vpt sample` passes them only to backends whose `predict` signature names them.

A run of `vpt train <name>` stores `backend: <name>` and the `model:` section in its config.yaml,
which is all `Backend.from_run` needs to rebuild the model.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


class Backend(nn.Module, abc.ABC):
    name: ClassVar[str]
    Config: ClassVar[type]
    takes_text: ClassVar[bool] = False

    @abc.abstractmethod
    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """The training objective; the value under "loss" is what the optimiser minimises."""

    @abc.abstractmethod
    def predict(
        self,
        context: torch.Tensor,
        num_frames: int,
        *,
        prompt: list[str] | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, T_ctx, C, H, W) context in [-1, 1] -> (B, num_frames, C, H, W) predicted frames."""

    @classmethod
    def recognizes_checkpoint(cls, path: Path) -> bool:
        """Whether `path` is a published checkpoint this backend can load (`vpt sample --checkpoint`)."""
        return False

    @classmethod
    def from_checkpoint(cls, path: Path, *, autoencoder: Path | None = None) -> Backend:
        """Build the backend from a published (upstream) checkpoint; backends with a converter override this."""
        from vpt.errors import UsageError

        raise UsageError(f"backend '{cls.name}' cannot load published checkpoints; sample from a run with --run")

    @staticmethod
    def from_run(run_dir: str | Path, *, checkpoint: Path | None = None, ema: bool = True) -> Backend:
        """Rebuild the backend a `vpt train` run trained, with its EMA weights when it kept them."""
        from vpt.config import validate
        from vpt.errors import UsageError
        from vpt.models.registry import get_backend
        from vpt.runs import Run
        from vpt.training import load_weights

        run = Run(run_dir)
        raw = run.read_config()
        if "backend" not in raw:
            raise UsageError(f"{run.root} is not a backend run (config.yaml names no backend)")
        backend_cls = get_backend(raw["backend"])
        model_cfg = validate(backend_cls.Config, raw.get("model", {}), source=str(run.config_path), prefix="model.")
        model = backend_cls(model_cfg)
        missing, unexpected = model.load_state_dict(load_weights(run, ema=ema, checkpoint=checkpoint), strict=False)
        if unexpected or [k for k in missing if not k.startswith(getattr(model, "frozen_prefixes", ()))]:
            raise UsageError(f"{run.root}: checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return model.eval()
