"""A tiny RIVER trained for a few hundred CPU steps predicts the built-in shapes better than copying the
last frame. The whole documented path runs: make-data -> convert-h5 -> train-ae -> save-latents ->
`vpt train river` on the latents (the autoencoder is found from the latents' attributes) -> predict."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from vpt.cli import app

AE_CONFIG = """
autoencoder:
  type: kl-vae
  arch: {block_out_channels: [16, 32, 32], layers_per_block: 1, latent_channels: 4, norm_num_groups: 8,
         mid_block_add_attention: false, scaling_factor: 1.0}
data: {frames: 1}
loss: {reconstruction: l1, perceptual_weight: 0.0, kl_weight: 1.0e-6, discriminator: none}
train: {max_steps: 200, batch_size: 16, lr: 1.0e-3, betas: [0.5, 0.9], warmup_steps: 20, log_every: 50, checkpoint_every: 200}
"""
RIVER_CONFIG = """
backend: river
model: {latent_channels: 4, inner_dim: 128, depth: 2, mid_depth: 1, heads: 4, dropout: 0.0, context_frames: 2,
        sampler: heun, steps: 5}
data: {frames: 8}
train: {max_steps: 400, batch_size: 16, lr: 1.0e-3, warmup_steps: 20, log_every: 50, checkpoint_every: 400}
"""


def _run(*args) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


@pytest.mark.slow
def test_tiny_river_beats_copy_last_frame(tmp_path):
    from vpt.data.convert import convert_h5
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.data.shapes import make_shapes
    from vpt.metrics.frames import psnr
    from vpt.models.backend import Backend

    torch.manual_seed(0)
    make_shapes(tmp_path / "shapes", num_videos=200, frames=16, size=32)
    convert_h5(tmp_path / "shapes", tmp_path / "h5", image_size=32)
    (tmp_path / "ae.yaml").write_text(AE_CONFIG)
    (tmp_path / "river.yaml").write_text(RIVER_CONFIG)
    _run("train-ae", "--config", tmp_path / "ae.yaml", "--data", tmp_path / "h5", "--run", tmp_path / "ae")
    _run("save-latents", "--ae", tmp_path / "ae", "--data", tmp_path / "h5", "--out", tmp_path / "latents")
    _run("train", "river", "--config", tmp_path / "river.yaml", "--data", tmp_path / "latents", "--run", tmp_path / "river")

    model = Backend.from_run(tmp_path / "river")
    assert model.cfg.autoencoder == str((tmp_path / "ae").resolve())  # read off the latents' attributes
    test = ClipDataset(DataConfig(path=str(tmp_path / "h5"), split="test", frames=16))
    video = torch.stack([test[i]["video"] for i in range(len(test))])  # (20, 16, 3, 32, 32)
    predicted = model.predict(video[:, :2], 14, generator=torch.Generator().manual_seed(0))
    truth, last = video[:, 2:], video[:, 1:2].expand(-1, 14, -1, -1, -1)

    def unit(x):
        return ((x.flatten(0, 1) + 1) / 2).clamp(0, 1)

    river_psnr = psnr(unit(predicted), unit(truth)).mean()
    copy_psnr = psnr(unit(last), unit(truth)).mean()
    assert river_psnr > copy_psnr + 0.5, f"RIVER {river_psnr:.2f} dB vs copy-last {copy_psnr:.2f} dB"
