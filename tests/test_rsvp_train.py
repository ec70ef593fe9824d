"""RSVP-M end to end on the built-in shapes (16-frame videos at 32 px): `vpt train-ae` (the MOSO
three-stream VQ-VAE, a few steps) -> `vpt save-latents` (scene, object and motion token ids in one
file) -> `vpt train rsvp` on those cached tokens -> `vpt sample --run` predicting frames 8-15 of a
real test clip from frames 0-7. Tiny widths: the numbers mean nothing, the plumbing everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from data_helpers import shapes_h5

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.slow
def test_rsvp_trains_on_cached_tokens_and_predicts_with_the_given_frames_kept(tmp_path, invoke):
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.models.backend import Backend

    torch.manual_seed(0)
    frames = shapes_h5(tmp_path / "shapes", num_videos=6, frames=16, size=32)
    ae_run = tmp_path / "ae"
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIGS / "ae" / "moso_shapes.yaml",
        "--data",
        frames,
        "--run",
        ae_run,
        "--set",
        "train.batch_size=2",
        "--set",
        "train.val_every=0",
        "--max-steps",
        "2",
    )
    assert code == 0, output
    latents = tmp_path / "latents"
    code, output = invoke("save-latents", "--ae", ae_run, "--data", frames, "--out", latents, "--workers", 0)
    assert code == 0, output

    run = tmp_path / "rsvp"
    code, output = invoke(
        "train",
        "rsvp",
        "--config",
        CONFIGS / "pvdm" / "rsvp_m_shapes.yaml",
        "--data",
        latents,
        "--run",
        run,
        "--set",
        "data.frames=1",
        "--set",
        "train.max_steps=3",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.checkpoint_every=3",
        "--set",
        "train.val_every=0",
        "--set",
        "train.sample_every=3",
        "--set",
        "model.steps=2",
    )
    assert code == 0, output
    assert list((run / "samples").glob("step_000003.*"))  # periodic samples decode the cached tokens to frames
    losses = [
        r["loss"]
        for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert losses and all(loss == loss and loss > 0 for loss in losses)  # the masked L1 was computed, finite

    prediction = tmp_path / "next.png"
    code, output = invoke(
        "sample",
        "--run",
        run,
        "--data",
        frames,
        "--split",
        "test",
        "--num-samples",
        1,
        "--steps",
        2,
        "--out",
        prediction,
    )
    assert code == 0, output
    record = json.loads(prediction.with_name(prediction.name + ".json").read_text())
    assert (record["context_frames"], record["frames"]) == (8, 8)  # the run's protocol: first 8 given, 8 predicted
    assert record["backend"] == "rsvp"

    # In the sampled motion latent the given frames are those of the real clip, exactly, after every step.
    model = Backend.from_run(run)
    embedded, sampled = [], []
    embed, inpaint = model.embed, model.inpaint
    model.embed = lambda clip: embedded.append(embed(clip)) or embedded[-1]
    model.inpaint = lambda *args, **kwargs: sampled.append(inpaint(*args, **kwargs)) or sampled[-1]
    video = ClipDataset(DataConfig(path=str(frames), split="test", frames=16))[0]["video"][None]  # (1, 16, 3, 32, 32)
    with torch.no_grad():
        predicted = model.predict(video[:, :8], 8, generator=torch.Generator().manual_seed(0), steps=2)
    assert predicted.shape == (1, 8, 3, 32, 32) and torch.isfinite(predicted).all()
    given_latent = embedded[0][0][:, :, :8]  # (1, D, 8, h, w): the motion embedding of the real frames 0-7
    torch.testing.assert_close(sampled[0][:, :, :8], given_latent, atol=0, rtol=0)
    assert not torch.equal(sampled[0][:, :, 8:], embedded[0][0][:, :, 8:])  # the rest was sampled
