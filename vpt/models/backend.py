"""The small surface every backend shares, so trainer, `sample` and `eval-fvd` never branch on names.

    loss(batch) -> {"loss": scalar, ...}              the training objective
    predict(context, num_frames, *, prompt, steps, generator) -> frames
        context: (B, T_ctx, C, H, W) in [-1, 1]  ->  (B, num_frames, C, H, W) in [-1, 1]
    Config                                              dataclass of the `model:` config section
    takes_text                                          whether `prompt` is used
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Backend(nn.Module):
    name: ClassVar[str]
    Config: ClassVar[type]
    takes_text: ClassVar[bool] = False

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # every concrete backend defines its objective

    @torch.no_grad()
    def predict(
        self,
        context: torch.Tensor,
        num_frames: int,
        *,
        prompt: list[str] | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError  # every concrete backend defines its sampler
