"""benchmarks/learning.py --smoke: every backend's learning measurement trains, predicts and scores at a toy
budget and lands in the table and the JSON with numbers, so the script the full table comes from cannot rot;
with --repeats 2 each sampled score is the mean of two samplings, with its spread over them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


METRICS = ("position_error", "object_kept", "psnr", "shape_iou")
CLIP_SPREADS = tuple(f"{metric}_clip_std" for metric in METRICS)


def test_smoke_run_writes_one_scored_row_per_backend(tmp_path):
    only = ["neuralsde-em2", "neuralsde-adaptive", "pvdm"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--smoke", "--threads", "1", "--repeats", "2"]
        + ["--work", str(tmp_path), "--only", *only],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "learning.json").read_text())
    assert record["smoke"] is True
    assert record["repeats"] == 2
    rows = {r["backend"]: r for r in record["rows"]}
    assert list(rows) == only
    for name, r in rows.items():
        for side in ("model", "baseline"):
            for metric in METRICS:
                value = r[side][metric]
                assert isinstance(value, float) and math.isfinite(value), (name, side, metric, value)
        assert isinstance(r["beats_baseline"], bool)
        # two samplings under seeds 0 and 1: the row's score is their mean, its repeat spread their sample std
        assert r["repeats"] == 2 and [repeat["seed"] for repeat in r["per_repeat"]] == [0, 1]
        for metric in METRICS + CLIP_SPREADS:
            values = [repeat[metric] for repeat in r["per_repeat"]]
            assert math.isclose(r["model"][metric], sum(values) / 2, rel_tol=1e-12, abs_tol=1e-12), (name, metric)
        for metric in METRICS:
            values = [repeat[metric] for repeat in r["per_repeat"]]
            spread = abs(values[0] - values[1]) / math.sqrt(2)  # the sample std (ddof=1) of two values
            assert math.isclose(r["model"][f"{metric}_repeat_std"], spread, rel_tol=1e-9, abs_tol=1e-12), (name, metric)
            assert min(values) <= r["model"][metric] <= max(values)
        assert r["per_repeat"][0]["psnr"] != r["per_repeat"][1]["psnr"]  # the seeds sample different clips
        assert not any(key.endswith("_repeat_std") for key in r["baseline"])  # baselines are not sampled
        assert all(
            stage["steps"] == stage["planned_steps"] == 2 for stage in r["used"].values() if isinstance(stage, dict)
        )
    # copying the true last frame keeps the object everywhere; copying the previous clip places it worse
    assert rows["neuralsde-em2"]["baseline"]["object_kept"] == 1.0
    assert rows["neuralsde-em2"]["baseline"]["shape_iou"] > 0.5  # a true frame, moved: the same shape
    assert rows["pvdm"]["baseline"]["position_error"] > 0
    assert "autoencoder's reconstruction" in rows["pvdm"]["notes"][0]
    table = (tmp_path / "learning.md").read_text()
    for name in only:
        assert f"| {name} |" in table
    assert "± std over the seeds (repeats)" in table and " (clips) ± " in table
