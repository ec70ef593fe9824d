"""`vpt quickstart` on a reduced budget runs every stage and writes its runs, report and metrics."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vpt.cli import app


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs"
    threads = torch.get_num_threads()
    try:  # one thread: tiny models on a possibly busy CI machine
        result = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--ae-steps", "20", "--river-steps", "30",
                                          "--num-videos", "40", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "ssim", "baseline_psnr", "baseline_ssim", "position_error", "baseline_position_error",
                "object_kept"):
        assert isinstance(metrics[key], float)
    assert len(metrics["per_frame"]["position_error"]) == 14 and metrics["truncated_by_minutes"] is None
    assert metrics["beats_baseline"] == (metrics["psnr"] > metrics["baseline_psnr"]
                                         and metrics["position_error"] < metrics["baseline_position_error"])
    assert metrics["context_frames"] == 2 and metrics["predicted_frames"] == 14 and metrics["test_clips"] == 4
    assert metrics["river_step"] == 30  # fixed step counts, whatever the machine's speed
    for run in ("ae", "river"):
        assert (out / "runs" / run / "checkpoints" / "latest").is_file()
    assert (out / "report.html").read_text().count("<img") == 5  # 4 clips and the per-frame chart
    assert (out / "report" / "per_frame.png").is_file()
    assert len(list((out / "report").glob("clip_*.gif"))) == 4

    # the baseline is the last context frame copied forward, scored the same way
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.metrics.frames import psnr

    clips = ClipDataset(DataConfig(path=str(out / "data" / "h5"), split="test", frames=16))
    video = torch.stack([clips[i]["video"] for i in range(len(clips))])
    truth = ((video[:, 2:].flatten(0, 1) + 1) / 2).clamp(0, 1)
    copied = ((video[:, 1:2].expand(-1, 14, -1, -1, -1).flatten(0, 1) + 1) / 2).clamp(0, 1)
    assert float(psnr(copied, truth).mean()) == pytest.approx(metrics["baseline_psnr"], abs=1e-6)
