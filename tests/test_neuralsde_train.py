"""NeuralSDE trained stage by stage on the built-in shapes for a few hundred CPU steps: f and d
independently, then g from the frozen f and d. The g run alone (f and d runs deleted) samples rollouts
that beat copying the last frame at 2 fixed Euler–Maruyama steps per frame.

The frozen autoencoder is a committed tiny `vpt train-ae` run (tests/fixtures/neuralsde/README.md), so
the test only encodes the clips (`vpt save-latents`) before training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from data_helpers import shapes_h5

AUTOENCODER = Path(__file__).parent / "fixtures" / "neuralsde" / "shapes_ae"
MODEL = """  latent_channels: 4
  inner_dim: 64
  depth: 1
  mid_depth: 1
  heads: 4
  dropout: 0.0
  sampler: euler
  steps: 2"""
TRAIN = "train: {max_steps: %d, batch_size: 8, lr: 3.0e-3, warmup_steps: 20, log_every: 50, checkpoint_every: 1000}"


def _config(stage: str, steps: int, extra: str = "") -> str:
    return f"backend: neuralsde\nmodel:\n  stage: {stage}\n{extra}{MODEL}\ndata: {{frames: 8}}\n{TRAIN % steps}\n"


@pytest.mark.slow
def test_staged_neuralsde_beats_copy_last_frame(tmp_path, invoke):
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.metrics.frames import psnr
    from vpt.models.backend import Backend

    assert (AUTOENCODER / "config.yaml").is_file(), "missing fixture autoencoder"
    torch.manual_seed(0)
    frames = shapes_h5(tmp_path, num_videos=100, frames=10, size=32)
    latents = tmp_path / "latents"
    assert (
        invoke("save-latents", "--ae", AUTOENCODER, "--data", frames, "--out", latents, "--workers", 0).exit_code == 0
    )

    def train(stage: str, config: str):
        (tmp_path / f"{stage}.yaml").write_text(config)
        return invoke(
            "train", "neuralsde", "--config", tmp_path / f"{stage}.yaml", "--data", latents, "--run", tmp_path / stage
        )

    for stage, steps in (("f", 300), ("d", 100)):
        result = train(stage, _config(stage, steps))
        assert result.exit_code == 0, result.output
    result = train("g", _config("g", 100, f"  f_run: {tmp_path / 'missing'}\n"))
    assert result.exit_code != 0 and "train the drift first" in result.output
    shutil.rmtree(tmp_path / "g")
    result = train("g", _config("g", 100, f"  f_run: {tmp_path / 'f'}\n  d_run: {tmp_path / 'd'}\n"))
    assert result.exit_code == 0, result.output

    shutil.rmtree(tmp_path / "f")  # the g run carries its frozen drift and denoiser
    shutil.rmtree(tmp_path / "d")
    model = Backend.from_run(tmp_path / "g")
    test = ClipDataset(DataConfig(path=str(frames), split="test", frames=10))
    video = torch.stack([test[i]["video"] for i in range(len(test))])  # (10, 10, 3, 32, 32)
    predicted = model.predict(video[:, :4], 6, steps=2, generator=torch.Generator().manual_seed(0))
    assert model.sampling_stats["drift_evaluations_per_frame"] == 2
    truth, last = video[:, 4:], video[:, 3:4].expand(-1, 6, -1, -1, -1)

    def unit(x):
        return ((x.flatten(0, 1) + 1) / 2).clamp(0, 1)

    sde_psnr = psnr(unit(predicted), unit(truth)).mean()
    copy_psnr = psnr(unit(last), unit(truth)).mean()
    assert sde_psnr > copy_psnr + 0.5, f"NeuralSDE {sde_psnr:.2f} dB vs copy-last {copy_psnr:.2f} dB"
