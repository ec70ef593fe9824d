"""A tiny class-conditional Latte (class = the motion word of each caption) trained for a few CPU steps
on latents of the built-in shapes through `vpt train latte`, then `vpt sample --run` without context
(generation of a class) and with context (replacement sampling).

The frozen autoencoder is the committed tiny `vpt train-ae` run of the NeuralSDE tests
(tests/fixtures/neuralsde/README.md): 32 x 32 frames <-> 4 x 8 x 8 latents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from data_helpers import shapes_h5

AUTOENCODER = Path(__file__).parent / "fixtures" / "neuralsde" / "shapes_ae"
CONFIG = """backend: latte
model: {latent_channels: 4, num_frames: 6, patch_size: 2, num_layers: 2, hidden_size: 32, num_heads: 2, head_dim: 16,
        timestep_emb_dim: 32, sampler: ddim, steps: 4, class_words: [left, right, up, down, falls]}
data: {frames: 6}
train: {max_steps: 30, batch_size: 8, lr: 1.0e-3, log_every: 10, checkpoint_every: 30}
"""


@pytest.mark.slow
def test_tiny_latte_trains_generates_and_predicts(tmp_path, invoke):
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.models.backend import Backend

    torch.manual_seed(0)
    frames = shapes_h5(tmp_path, num_videos=24, frames=8, size=32)
    latents = tmp_path / "latents"
    assert (
        invoke("save-latents", "--ae", AUTOENCODER, "--data", frames, "--out", latents, "--workers", 0).exit_code == 0
    )
    (tmp_path / "latte.yaml").write_text(CONFIG)
    run = tmp_path / "latte"
    result = invoke("train", "latte", "--config", tmp_path / "latte.yaml", "--data", latents, "--run", run)
    assert result.exit_code == 0, result.output

    generated = tmp_path / "generated.png"
    result = invoke(
        "sample",
        "--run",
        run,
        "--num-samples",
        2,
        "--frames",
        6,
        "--size",
        32,
        "--out",
        generated,
        "--option",
        "class_labels=right",
        "--guidance-scale",
        2,
    )
    assert result.exit_code == 0, result.output
    record = json.loads(generated.with_name(generated.name + ".json").read_text())
    assert (record["context_frames"], record["frames"], record["sampler"]["sampler"]) == (0, 6, "ddim")
    predicted = tmp_path / "predicted.png"
    result = invoke("sample", "--run", run, "--data", frames, "--context-frames", 2, "--frames", 4, "--out", predicted)
    assert result.exit_code == 0, result.output
    assert json.loads(predicted.with_name(predicted.name + ".json").read_text())["context_frames"] == 2

    model = Backend.from_run(run)
    test = ClipDataset(DataConfig(path=str(frames), split="test", frames=8))
    video = torch.stack([test[i]["video"] for i in range(2)])  # (2, 8, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    assert model.takes_class_labels
    clips = model.predict(video[:, :0], 6, class_labels=0, generator=generator)
    other_class = model.predict(video[:, :0], 6, class_labels=1, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(clips, other_class)  # same noise, another class
    rollout = model.predict(video[:, :2], 4, class_labels=0, generator=torch.Generator().manual_seed(1))
    other_rollout = model.predict(video[:, :2], 4, class_labels=1, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(rollout, other_rollout)
    for out, length in ((clips, 6), (rollout, 4)):
        assert out.shape == (2, length, 3, 32, 32)
        assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    known = model.encode(video[:, :2])  # (2, 2, 4, 8, 8)
    clip = model.sample_latents(known, 6, generator=generator)
    torch.testing.assert_close(clip[:, :2], known, atol=0, rtol=0)
    assert not torch.allclose(clip[:, 2:], torch.zeros_like(clip[:, 2:]))


def test_class_words_on_uncaptioned_data_are_refused_before_the_model_is_built(tmp_path, invoke):
    from vpt.data.shapes import make_shapes

    data = tmp_path / "shapes"
    make_shapes(data, num_videos=4, frames=8, size=32, workers=1)
    (data / "captions.json").unlink()
    (tmp_path / "latte.yaml").write_text(CONFIG)
    run = tmp_path / "latte"
    result = invoke("train", "latte", "--config", tmp_path / "latte.yaml", "--data", data, "--run", run)
    assert result.exit_code == 2 and "model.class_words reads each clip's class off its caption" in result.output
    assert not (run / "config.yaml").exists()
    # without class_words captions are not needed: the start goes on to the next check (the autoencoder)
    unconditional = invoke(
        "train",
        "latte",
        "--config",
        tmp_path / "latte.yaml",
        "--data",
        data,
        "--run",
        run,
        "--set",
        "model.class_words=[]",
    )
    assert unconditional.exit_code == 2 and "needs a frozen autoencoder" in unconditional.output
    assert "captions" not in unconditional.output
