"""A run carries its evaluation protocol: `eval-fvd --run` and `sample --run` use it without flags."""

from __future__ import annotations

import json
from pathlib import Path

from metrics_helpers import write_tiny_detector

KTH = Path(__file__).resolve().parents[1] / "configs" / "river" / "kth.yaml"
TINY = [
    "--set",
    "model.autoencoder=pixels:8",
    "--set",
    "model.latent_channels=192",
    "--set",
    "model.inner_dim=32",
    "--set",
    "model.depth=1",
    "--set",
    "model.mid_depth=1",
    "--set",
    "model.heads=2",
    "--set",
    "data.image_size=32",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.num_workers=0",
    "--set",
    "train.warmup_steps=1",
    "--set",
    "train.sample_every=0",
    "--set",
    "train.val_every=0",
    "--set",
    "train.checkpoint_every=2",
]


def test_kth_style_river_run_is_evaluated_and_sampled_with_its_protocol(tmp_path, invoke):
    from vpt.data.convert import convert_h5
    from vpt.data.shapes import make_shapes

    make_shapes(tmp_path / "videos", num_videos=20, frames=40, size=32, workers=1)
    convert_h5(tmp_path / "videos", tmp_path / "h5", image_size=32, workers=1)
    run = tmp_path / "run"
    code, output = invoke(
        "train", "river", "--config", KTH, "--data", tmp_path / "h5", "--run", run, "--max-steps", 2, *TINY
    )
    assert code == 0, output

    out = tmp_path / "metrics.json"
    code, output = invoke(
        "eval-fvd",
        "--run",
        run,
        "--data",
        tmp_path / "h5",
        "--i3d",
        write_tiny_detector(tmp_path / "i3d.pt"),
        "--steps",
        2,
        "--max-videos",
        2,
        "--samples",
        1,
        "--out",
        out,
    )
    assert code == 0, output
    protocol = json.loads(out.read_text())["protocol"]
    # configs/river/kth.yaml: 10 context -> 30 predicted frames (its 100 samples per sequence overridden for time)
    assert (protocol["context_frames"], protocol["predicted_frames"], protocol["samples_per_sequence"]) == (10, 30, 1)
    assert protocol["clip_length"] == 40 and protocol["preset"] == "tf"

    prediction = tmp_path / "pred.png"
    code, output = invoke(
        "sample", "--run", run, "--data", tmp_path / "h5", "--index", 0, "--steps", 2, "--out", prediction
    )
    assert code == 0, output
    record = json.loads(prediction.with_name("pred.png.json").read_text())
    assert (record["context_frames"], record["frames"], record["image_size"]) == (10, 30, 32)
    assert record["protocol"]["predicted_frames"] == 30
