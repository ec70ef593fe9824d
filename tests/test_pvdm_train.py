"""PVDM end to end on the built-in shapes (32-frame videos at 32 px): `vpt train-ae` (the projected
autoencoder, a few steps) -> `vpt save-latents` -> `vpt train pvdm` (the conditional UNet, a few
steps) -> `vpt sample --run` predicting the next clip of a real clip, and `vpt eval-fvd --run` taking
PVDM's protocol from the run's config. Tiny widths: the numbers mean nothing, the plumbing everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from data_helpers import shapes_h5
from metrics_helpers import write_tiny_detector

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.slow
def test_pvdm_trains_on_latents_and_predicts_the_next_clip(tmp_path, invoke, monkeypatch):
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.models.backend import Backend
    from vpt.weights import read_weights

    torch.manual_seed(0)
    frames = shapes_h5(tmp_path / "shapes", num_videos=6, frames=32, size=32)
    ae_run = tmp_path / "ae"
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIGS / "ae" / "pvdm_shapes.yaml",
        "--data",
        frames,
        "--run",
        ae_run,
        "--set",
        "autoencoder.arch.channels=16",
        "--set",
        "autoencoder.arch.depth=1",
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

    run = tmp_path / "pvdm"
    code, output = invoke(
        "train",
        "pvdm",
        "--config",
        CONFIGS / "pvdm" / "shapes.yaml",
        "--data",
        latents,
        "--run",
        run,
        "--set",
        "train.max_steps=4",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.ema_every=3",
        "--set",
        "train.ema_start=100",
        "--set",
        "train.checkpoint_every=3",
        "--set",
        "train.sample_every=4",
        "--set",
        "model.steps=2",
        "--set",
        "model.cond_prob=1.0",
    )
    assert code == 0, output
    assert list((run / "samples").glob("step_000004.*"))  # the periodic sample: next clip from a decoded real clip
    # Before ema_start the EMA copies the weights, and ema_every=3 lets it do so at step 3 only.
    step3, step4 = (run / "checkpoints" / f"step_00000{n}" for n in (3, 4))
    name = "unet.input_blocks.0.0.weight"
    model3, model4 = (read_weights(step / "model.safetensors")[name] for step in (step3, step4))
    assert not torch.equal(model3, model4)
    torch.testing.assert_close(read_weights(step4 / "ema.safetensors")[name], model3, atol=0, rtol=0)

    prediction = tmp_path / "next_clip.png"
    code, output = invoke(
        "sample", "--run", run, "--data", frames, "--split", "test", "--num-samples", 1, "--out", prediction
    )
    assert code == 0, output
    record = json.loads(prediction.with_name(prediction.name + ".json").read_text())
    assert (record["context_frames"], record["frames"]) == (16, 16)
    assert record["sampler"]["conditioning"] == "previous clip's latent"

    model = Backend.from_run(run)
    video = ClipDataset(DataConfig(path=str(frames), split="test", frames=32))[0]["video"][None]  # (1, 32, 3, 32, 32)
    predicted = model.predict(video[:, :16], 16, generator=torch.Generator().manual_seed(0), steps=2)
    assert predicted.shape == (1, 16, 3, 32, 32)
    assert torch.isfinite(predicted).all() and predicted.min() >= -1 and predicted.max() <= 1
    longer = model.predict(video[:, :16], 20, generator=torch.Generator().manual_seed(0), steps=2)  # two clips, cut
    assert longer.shape == (1, 20, 3, 32, 32)
    torch.testing.assert_close(longer[:, :16], predicted)  # the same first clip from the same draws

    # the same weights as an upstream `ema_model_*.pth` (bare state dict, `diffusion_model.` names)
    released = tmp_path / "ema_model_4.pth"
    torch.save({f"diffusion_model.{k}": v for k, v in model.unet.state_dict().items()}, released)
    # not the released UNet size: its heads, which the weights do not show, go in a config.json beside it
    (tmp_path / "config.json").write_text(json.dumps({"model": {"num_heads": model.cfg.num_heads}}))
    from_release = tmp_path / "from_release.png"
    code, output = invoke(
        "sample",
        "--checkpoint",
        released,
        "--ae",
        ae_run,
        "--data",
        frames,
        "--split",
        "test",
        "--num-samples",
        1,
        "--steps",
        2,
        "--out",
        from_release,
    )
    assert code == 0, output
    record = json.loads(from_release.with_name(from_release.name + ".json").read_text())
    assert record["sampler"]["steps"] == 2 and (record["context_frames"], record["frames"]) == (16, 16)

    monkeypatch.delenv("VPT_LPIPS_ALEX", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_cache"))  # no LPIPS weights: skipped
    detector = write_tiny_detector(tmp_path / "i3d_torchscript.pt")
    report_path = tmp_path / "metrics.json"
    code, output = invoke(
        "eval-fvd",
        "--run",
        run,
        "--data",
        frames,
        "--split",
        "train",
        "--i3d",
        detector,
        "--batch-size",
        2,
        "--out",
        report_path,
    )
    assert code == 0, output
    protocol = json.loads(report_path.read_text())["protocol"]
    assert protocol["backend"] == "pvdm"
    assert (protocol["context_frames"], protocol["predicted_frames"]) == (16, 16)
    assert protocol["context_in_fvd_clips"] is False and protocol["preset"] == "stylegan-v"
