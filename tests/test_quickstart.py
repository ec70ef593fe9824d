"""`vpt quickstart`: every stage runs, and its model predicts the motion.

The quickstart's own budget (autoencoder 1,000 steps, RIVER 5,000, about 9 minutes on 2 cores) is what the
README's figures come from; benchmarks/README.md ("The quickstart") has them for three seeds. This test
trains at about half of it (600 and 2,500 steps, about 6 minutes), the reduced learning check of the test
suite: it must still beat copying the last frame clearly. Measured at this budget (seed 0, fp32, 2 threads):
position error 7.80 px against copy-last's 14.65, object kept 81 %, PSNR +6.1 dB, ahead at every predicted
frame. The thresholds leave room for another CPU's rounding, which changes the trained path."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vpt.cli import app


@pytest.mark.slow
def test_quickstart_at_half_budget_places_the_moving_shape_far_better_than_copying_the_last_frame(tmp_path):
    out = tmp_path / "qs"
    # 2 threads, as the figures above, whatever the load of the tests before (--threads 0 would take a share)
    args = ["quickstart", "--out", str(out), "--threads", "2", "--ae-steps", "600", "--river-steps", "2500"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["context_frames"] == 2 and metrics["predicted_frames"] == 14 and metrics["test_clips"] == 50
    assert metrics["river_step"] == 2500 and metrics["truncated_by_minutes"] is None  # fixed step counts
    assert metrics["threads"] == 2 and metrics["training_precision"] == "fp32"  # conftest: VPT_BF16=0
    # the motion-aware scores: the object stays and is placed clearly better than by copying the last frame
    assert metrics["position_error"] < 0.75 * metrics["baseline_position_error"], metrics
    assert metrics["object_kept"] > 0.6, metrics
    assert metrics["psnr"] > metrics["baseline_psnr"] + 3.0 and metrics["beats_baseline"], metrics
    per_frame = metrics["per_frame"]
    assert len(per_frame["position_error"]) == 14
    assert metrics["ahead_at_every_frame"], per_frame
    assert all(p < b for p, b in zip(per_frame["position_error"], per_frame["baseline_position_error"]))
    assert metrics["position_error_clip_std"] > 0

    for run in ("ae", "river"):
        assert (out / "runs" / run / "checkpoints" / "latest").is_file()
    assert (out / "report.html").read_text().count("<img") == 9  # 8 clips and the per-frame chart
    assert (out / "report" / "per_frame.png").is_file()
    assert len(list((out / "report").glob("clip_*.gif"))) == 8

    # the baseline is the last context frame copied forward, scored the same way
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.metrics.frames import psnr

    clips = ClipDataset(DataConfig(path=str(out / "data" / "h5"), split="test", frames=16))
    video = torch.stack([clips[i]["video"] for i in range(len(clips))])
    truth = ((video[:, 2:].flatten(0, 1) + 1) / 2).clamp(0, 1)
    copied = ((video[:, 1:2].expand(-1, 14, -1, -1, -1).flatten(0, 1) + 1) / 2).clamp(0, 1)
    assert float(psnr(copied, truth).mean()) == pytest.approx(metrics["baseline_psnr"], abs=1e-6)


def test_a_minutes_cap_cuts_training_short_and_says_so(tmp_path, invoke):
    out = tmp_path / "qs"
    result = CliRunner().invoke(
        app, ["quickstart", "--out", str(out), "--num-videos", "20", "--minutes", "0.2", "--threads", "1"]
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    metrics = json.loads((out / "metrics.json").read_text())
    ae_step, river_step = (int(part.split()[1].split("/")[0]) for part in metrics["truncated_by_minutes"].split(", "))
    assert metrics["truncated_by_minutes"] == f"ae {ae_step}/1000 steps, river {river_step}/5000 steps"
    assert 1 <= ae_step < 1000 and 1 <= river_step < 5000 and metrics["river_step"] == river_step
    assert "cut training short" in " ".join(result.output.split())
    assert "--minutes cut training short (ae " in (out / "report.html").read_text()
    # the per-motion scores split the test clips: their clip-weighted means are the overall scores
    by_motion = metrics["by_motion"]
    assert sum(m["clips"] for m in by_motion.values()) == metrics["test_clips"]
    for name in ("object_kept", "position_error"):
        weighted = sum(m["clips"] * m[name] for m in by_motion.values()) / metrics["test_clips"]
        assert weighted == pytest.approx(metrics[name], rel=1e-9)

    # the runs of this folder continue only under the seed they were trained with
    again = invoke("quickstart", "--out", out, "--num-videos", "20", "--seed", "1")
    assert again.exit_code == 2 and "trained with another --seed" in " ".join(again.output.split())
