"""`vpt quickstart` with a one-minute budget runs every stage and writes its runs, report and metrics."""

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
        result = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--minutes", "1", "--num-videos", "40",
                                          "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "ssim", "baseline_psnr", "baseline_ssim"):
        assert isinstance(metrics[key], float)
    assert metrics["beats_baseline"] == (metrics["psnr"] > metrics["baseline_psnr"])
    assert metrics["context_frames"] == 2 and metrics["predicted_frames"] == 14 and metrics["test_clips"] == 4
    assert metrics["river_step"] >= 1 and sum(metrics["stage_seconds"].values()) <= metrics["minutes"] * 60 + 1
    for run in ("ae", "river"):
        assert (out / "runs" / run / "checkpoints" / "latest").is_file()
    assert (out / "report.html").read_text().count("<img") == 4
    assert len(list((out / "report").glob("clip_*.gif"))) == 4

    # the baseline is the last context frame copied forward, scored the same way
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.metrics.frames import psnr

    clips = ClipDataset(DataConfig(path=str(out / "data" / "h5"), split="test", frames=16))
    video = torch.stack([clips[i]["video"] for i in range(len(clips))])
    truth = ((video[:, 2:].flatten(0, 1) + 1) / 2).clamp(0, 1)
    copied = ((video[:, 1:2].expand(-1, 14, -1, -1, -1).flatten(0, 1) + 1) / 2).clamp(0, 1)
    assert float(psnr(copied, truth).mean()) == pytest.approx(metrics["baseline_psnr"], abs=1e-6)
