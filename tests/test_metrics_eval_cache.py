"""Resumable `vpt eval-fvd`: a killed evaluation resumes from its finished batches with the same numbers,
real-set features are shared between evaluations of the same data, and changed settings recompute."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import eval_cache_backend
import pytest
from metrics_helpers import moving_videos, write_frame_folders, write_tiny_detector
from test_metrics_eval_fvd import CopyLastBackend, _write_h5, _write_run
from typer.testing import CliRunner

from vpt.cli import app
from vpt.models.registry import BACKENDS

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SCORES = ("fvd", "kvd", "psnr", "ssim")


@pytest.fixture()
def detector(tmp_path):
    return write_tiny_detector(tmp_path / "i3d_torchscript.pt")


@pytest.fixture()
def counting(monkeypatch, tmp_path):
    """The counting backend in this process; returns a function giving the number of predict calls so far."""
    monkeypatch.setitem(BACKENDS, CopyLastBackend.name, "eval_cache_backend:CountingCopyLast")
    log = tmp_path / "predict.log"
    monkeypatch.setenv(eval_cache_backend.PREDICT_LOG, str(log))
    monkeypatch.delenv(eval_cache_backend.PREDICT_SLEEP, raising=False)
    return lambda: len(log.read_text().splitlines()) if log.exists() else 0


def _evaluate(args: list) -> dict:
    out = Path(args[args.index("--out") + 1])
    result = CliRunner().invoke(app, ["eval-fvd", *map(str, args)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def _numbers(report: dict) -> dict:
    return {**{k: report[k] for k in SCORES}, "per_frame": report["details"]["psnr"]["per_frame"]}


# --- kill -9 and resume ---------------------------------------------------------------------------


def _command(args: list) -> list[str]:
    """`vpt eval-fvd ARGS` in a fresh Python with the counting backend registered."""
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import eval_cache_backend; "
        "eval_cache_backend.register(); from vpt.cli import main; main(sys.argv[1:])"
    )
    return [sys.executable, "-c", code, "eval-fvd", *map(str, args)]


def _env(log: Path, sleep: float) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        eval_cache_backend.PREDICT_LOG: str(log),
        eval_cache_backend.PREDICT_SLEEP: str(sleep),
    }


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_kill_during_run_evaluation_resumes_without_resampling(tmp_path, detector):
    batches, samples = 8, 2
    data = _write_h5(tmp_path / "data", moving_videos(batches, 10, 16, seed=7))
    run = _write_run(tmp_path / "run", noise=0.2)  # stochastic: equal numbers need the per-batch seeds
    cache = tmp_path / "cache"
    args = [
        "--run",
        run,
        "--data",
        data,
        "--i3d",
        detector,
        "--context-frames",
        2,
        "--pred-frames",
        8,
        "--samples",
        samples,
        "--batch-size",
        1,
        "--seed",
        3,
    ]

    killed_log = tmp_path / "killed.log"
    process = subprocess.Popen(
        _command([*args, "--cache", cache, "--out", tmp_path / "m.json"]),
        env=_env(killed_log, sleep=0.3),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(list(cache.glob("run-*/batch-*.npz"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    saved = len(list(cache.glob("run-*/batch-*.npz")))
    assert 2 <= saved < batches and not (tmp_path / "m.json").exists()
    assert _lines(killed_log) >= saved * samples

    resumed_log = tmp_path / "resumed.log"
    resumed = subprocess.run(
        _command([*args, "--cache", cache, "--out", tmp_path / "m.json"]),
        env=_env(resumed_log, sleep=0),
        capture_output=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _lines(resumed_log) == (batches - saved) * samples  # nothing finished is sampled again
    straight = subprocess.run(
        _command([*args, "--no-cache", "--out", tmp_path / "straight.json"]),
        env=_env(tmp_path / "straight.log", sleep=0),
        capture_output=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr[-2000:]

    report = json.loads((tmp_path / "m.json").read_text())
    assert _numbers(report) == _numbers(json.loads((tmp_path / "straight.json").read_text()))
    record = report["protocol"]["cache"]
    assert (record["reused_batches"], record["computed_batches"]) == (saved, batches - saved)
    assert Path(record["dir"]).parent == cache
    assert json.loads((tmp_path / "straight.json").read_text())["protocol"]["cache"] is None


# --- reuse and invalidation -----------------------------------------------------------------------


def test_another_run_on_the_same_data_reuses_the_real_features(tmp_path, detector, counting):
    data = _write_h5(tmp_path / "data", moving_videos(5, 10, 16, seed=1))
    common = ["--data", data, "--i3d", detector, "--context-frames", 2, "--pred-frames", 8, "--batch-size", 2]
    first = _evaluate(["--run", _write_run(tmp_path / "a", noise=0.0), *common, "--out", tmp_path / "a.json"])
    assert first["protocol"]["cache"]["real"]["computed_batches"] == 3  # 5 clips in batches of 2
    assert Path(first["protocol"]["cache"]["dir"]).parent == tmp_path / ".vpt-eval-cache"  # beside --out

    other = _write_run(tmp_path / "b", noise=0.3)
    second = _evaluate(["--run", other, *common, "--out", tmp_path / "b.json"])
    record = second["protocol"]["cache"]
    assert record["real"]["computed_batches"] == 0 and record["real"]["reused_batches"] == 3
    assert (record["reused_batches"], record["computed_batches"]) == (0, 3)  # another model: predicted anew
    uncached = _evaluate(["--run", other, *common, "--no-cache", "--out", tmp_path / "c.json"])
    assert _numbers(second) == _numbers(uncached)
    assert second["fvd"] != first["fvd"]


def test_changed_protocol_values_do_not_reuse_predictions(tmp_path, detector, counting):
    data = _write_h5(tmp_path / "data", moving_videos(4, 10, 16, seed=2))
    run = _write_run(tmp_path / "run", noise=0.3)
    common = [
        "--run",
        run,
        "--data",
        data,
        "--i3d",
        detector,
        "--context-frames",
        2,
        "--pred-frames",
        8,
        "--batch-size",
        2,
        "--out",
        tmp_path / "m.json",
    ]
    first = _evaluate([*common, "--seed", 0])
    assert counting() == 2
    again = _evaluate([*common, "--seed", 0])
    assert counting() == 2 and again["protocol"]["cache"]["reused_batches"] == 2
    assert _numbers(again) == _numbers(first)
    reseeded = _evaluate([*common, "--seed", 1])
    assert counting() == 4 and reseeded["protocol"]["cache"]["reused_batches"] == 0
    assert reseeded["protocol"]["cache"]["real"]["reused_batches"] == 2  # clips start at frame 0: same real set
    assert reseeded["psnr"] != first["psnr"]
    _evaluate([*common, "--seed", 0, "--samples", 2])
    assert counting() == 8  # 2 batches x 2 samples, none reused


def test_videos_mode_shares_real_features_and_notices_changed_files(tmp_path, detector):
    real, fake_a, fake_b = (moving_videos(4, 10, 16, seed=s) for s in (0, 1, 2))
    for name, videos in (("real", real), ("a", fake_a), ("b", fake_b)):
        write_frame_folders(tmp_path / name, videos)
    common = [
        "--real",
        tmp_path / "real",
        "--i3d",
        detector,
        "--frames",
        10,
        "--batch-size",
        3,
        "--cache",
        tmp_path / "cache",
        "--out",
        tmp_path / "m.json",
    ]
    first = _evaluate([*common, "--fake", tmp_path / "a"])
    assert first["protocol"]["cache"]["real"]["computed_batches"] == 2
    second = _evaluate([*common, "--fake", tmp_path / "b"])
    real_record = second["protocol"]["cache"]["real"]
    assert (real_record["reused_batches"], real_record["computed_batches"]) == (2, 0)
    assert real_record["dir"] == first["protocol"]["cache"]["real"]["dir"]
    assert second["protocol"]["cache"]["computed_batches"] == 2
    uncached = _evaluate([*common[:-4], "--fake", tmp_path / "b", "--no-cache", "--out", tmp_path / "n.json"])
    assert (second["fvd"], second["kvd"]) == (uncached["fvd"], uncached["kvd"])

    frame = sorted((tmp_path / "real").rglob("*.png"))[0]
    stat = frame.stat()  # same pixels, another modification time: the real set counts as changed
    os.utime(frame, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = _evaluate([*common, "--fake", tmp_path / "b"])
    assert third["protocol"]["cache"]["real"]["computed_batches"] == 2
    assert third["protocol"]["cache"]["reused_batches"] == 2 and third["fvd"] == second["fvd"]


def test_cache_options_contradicting_each_other_are_refused(tmp_path, detector):
    result = CliRunner().invoke(
        app,
        ["eval-fvd", "--real", str(tmp_path), "--fake", str(tmp_path), "--cache", str(tmp_path / "c"), "--no-cache"],
    )
    assert "--cache and --no-cache" in str(result.exception)
