"""benchmarks/learning.py --smoke: every backend's learning measurement trains, predicts and scores at a toy
budget and lands in the table and the JSON with numbers, so the script the full table comes from cannot rot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_one_scored_row_per_backend(tmp_path):
    only = ["neuralsde-em2", "neuralsde-adaptive", "pvdm"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--smoke", "--threads", "1"]
        + ["--work", str(tmp_path), "--only", *only],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "learning.json").read_text())
    assert record["smoke"] is True
    rows = {r["backend"]: r for r in record["rows"]}
    assert list(rows) == only
    for name, r in rows.items():
        for side in ("model", "baseline"):
            for metric in ("position_error", "object_kept", "psnr", "shape_iou"):
                value = r[side][metric]
                assert isinstance(value, float) and math.isfinite(value), (name, side, metric, value)
        assert isinstance(r["beats_baseline"], bool)
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
