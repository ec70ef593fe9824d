"""The documented command path for RIVER: make-data -> convert-h5 -> `vpt train-ae` -> `vpt save-latents` ->
`vpt train river` on the latents (the autoencoder is found from the latents' attributes) -> predict frames.
Whether a trained RIVER predicts motion is tested on the quickstart (tests/test_quickstart.py: object
placement and PSNR against copying the last frame); this test keeps a small budget and checks the path."""

from __future__ import annotations

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
train: {max_steps: 40, batch_size: 8, lr: 1.0e-3, betas: [0.5, 0.9], warmup_steps: 5, log_every: 20, checkpoint_every: 40}
"""
RIVER_CONFIG = """
backend: river
model: {latent_channels: 4, inner_dim: 128, depth: 2, mid_depth: 1, heads: 4, dropout: 0.0, context_frames: 2,
        sampler: heun, steps: 5}
data: {frames: 8}
train: {max_steps: 40, batch_size: 8, lr: 1.0e-3, warmup_steps: 5, log_every: 20, checkpoint_every: 40}
"""


def _run(*args) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


def test_documented_river_path_trains_on_latents_and_predicts_frames(tmp_path):
    from vpt.data.convert import convert_h5
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.data.shapes import make_shapes
    from vpt.models.backend import Backend
    from vpt.runs import Run

    torch.manual_seed(0)
    make_shapes(tmp_path / "shapes", num_videos=40, frames=16, size=32)
    convert_h5(tmp_path / "shapes", tmp_path / "h5", image_size=32)
    (tmp_path / "ae.yaml").write_text(AE_CONFIG)
    (tmp_path / "river.yaml").write_text(RIVER_CONFIG)
    _run("train-ae", "--config", tmp_path / "ae.yaml", "--data", tmp_path / "h5", "--run", tmp_path / "ae")
    _run("save-latents", "--ae", tmp_path / "ae", "--data", tmp_path / "h5", "--out", tmp_path / "latents")
    _run(
        "train",
        "river",
        "--config",
        tmp_path / "river.yaml",
        "--data",
        tmp_path / "latents",
        "--run",
        tmp_path / "river",
    )

    assert Run(tmp_path / "river").latest_step() == 40
    model = Backend.from_run(tmp_path / "river")
    assert model.cfg.autoencoder == str((tmp_path / "ae").resolve())  # read off the latents' attributes
    test = ClipDataset(DataConfig(path=str(tmp_path / "h5"), split="test", frames=16))
    video = torch.stack([test[i]["video"] for i in range(len(test))])  # (4, 16, 3, 32, 32)
    predicted = model.predict(video[:, :2], 14, generator=torch.Generator().manual_seed(0))
    assert predicted.shape == (len(test), 14, 3, 32, 32) and torch.isfinite(predicted).all()
    again = model.predict(video[:, :2], 14, generator=torch.Generator().manual_seed(0))
    assert torch.equal(predicted, again)  # seeded rollouts repeat exactly
