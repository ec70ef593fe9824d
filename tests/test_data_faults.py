"""Data commands under faults: kill -9 mid-run, damaged outputs, two commands on one folder, a
read-only or full disk. Kills and locks use real `python -m vpt` subprocesses; the disk tests mount a
small tmpfs (they are skipped where mounting is not permitted)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import shapes_h5, write_clip

from vpt.data.h5 import VideoH5
from vpt.fsutil import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]
AE_CONFIG = REPO / "configs" / "ae" / "shapes.yaml"
ENV = os.environ | {
    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    "OMP_NUM_THREADS": "1",
}
KILL_TRIES = 3


# --- helpers --------------------------------------------------------------------------------------


def _vpt(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vpt", *map(str, args)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stat_fields(pid: int) -> list[str] | None:
    """(state, ppid, ...) of a process from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:  # Linux process table
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields and fields[1] == str(pid):
                found.append(int(name))
    return found


def _running(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Poll `condition` until it holds; False when `proc` ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the subprocess")


def _kill_mid_run(args: list, started, delay: float) -> tuple[list[int], bool]:
    """Start `vpt ARGS`, kill -9 it `delay` s after `started()` holds; returns (its children then, whether
    any of them still ran one second later)."""
    proc = _vpt(*args)
    _wait_for(started, proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGSTOP)  # stopped, it cannot start a worker between the listing and the kill
    _wait_for(lambda: (_stat_fields(proc.pid) or ["gone"])[0] == "T", proc)
    children = _children(proc.pid)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 1.0
    while any(_running(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.01)
    survivors = [c for c in children if _running(c)]
    for pid in survivors:  # do not leave them running when the check fails
        os.kill(pid, signal.SIGKILL)
    return children, bool(survivors)


def _timed(run) -> float:
    """Seconds an uninterrupted in-process run takes: the window the kills aim at."""
    start = time.monotonic()
    assert run().exit_code == 0
    return time.monotonic() - start


def _holding(directory: Path, pid: int) -> bool:
    try:
        return (directory / LOCK_FILE).read_text().startswith(f"{pid} ")
    except FileNotFoundError:
        return False


def _one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def _hidden_leftovers(root: Path) -> list[str]:
    """Temp files, partial frame folders and write probes anywhere under `root` (save-latents' `.partial`
    folder of finished videos is resume state, not a leftover)."""
    return sorted(
        p.name
        for p in root.rglob(".*")
        if p.name.endswith(".tmp")
        or ".tmp." in p.name
        or (p.name.endswith(".partial") and p.name != ".partial")
        or p.name.startswith(".vpt-write-probe")
    )


def _tree(root: Path) -> dict[str, bytes]:
    """Every visible file under `root` with its bytes (frame folders compare exactly)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def _h5_contents(root: Path) -> dict[str, list]:
    contents = {}
    for split in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        source = VideoH5(root / split)
        contents[split] = [(source.name(i), source.text(i), source.read(i)) for i in range(len(source))]
    return contents


def _assert_same_h5(root: Path, reference: Path) -> None:
    got, want = _h5_contents(root), _h5_contents(reference)
    assert list(got) == list(want)
    for split in want:
        assert [(n, t) for n, t, _ in got[split]] == [(n, t) for n, t, _ in want[split]]
        for (_, _, a), (_, _, b) in zip(got[split], want[split]):
            assert np.array_equal(a, b)


@pytest.fixture()
def clips(tmp_path) -> Path:
    """src/train with 6 clips of 20-30 frames at 48x48 (about a second of work for two workers)."""
    src = tmp_path / "src"
    for k in range(6):
        write_clip(src / "train" / f"clip{k}.mp4", frames=20 + 2 * k, size=48, seed=k)
    return src


@pytest.fixture()
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size; remount(option) changes it (ro, size=...)."""
    mounted = []

    def mount(size: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or 'not permitted'})")
        mounted.append(point)
        return point

    def remount(point: Path, option: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{option}", str(point)], check=True)

    yield mount, remount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(point: Path, leave: int) -> None:
    """Fill a filesystem up to `leave` bytes of free space."""
    stats = os.statvfs(point)
    (point / "filler").write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))


# --- kill -9 mid-run ------------------------------------------------------------------------------


def test_extract_frames_killed_mid_run_leaves_no_workers_and_resumes_identically(clips, tmp_path, invoke):
    reference = tmp_path / "reference"
    work = _timed(lambda: invoke("extract-frames", "--video-dir", clips, "--out-dir", reference, "--workers", "2"))
    rng = random.Random(11)
    caught_workers = redone = 0
    for attempt in range(KILL_TRIES):
        out = tmp_path / f"out{attempt}"
        children, survivors = _kill_mid_run(
            ["extract-frames", "--video-dir", clips, "--out-dir", out, "--workers", "2"],
            started=lambda: any(out.rglob(".*.partial")),
            delay=rng.uniform(0.0, 0.8 * work),
        )
        assert not survivors, f"workers {children} outlived their killed parent"
        caught_workers += bool(children)
        result = invoke("extract-frames", "--video-dir", clips, "--out-dir", out, "--workers", "2")
        assert result.exit_code == 0, result.output
        redone += int(result.output.split(" videos extracted")[0].split()[-1])
        assert _tree(out) == _tree(reference)
        assert _hidden_leftovers(out) == []
    assert caught_workers >= 1 and redone >= 1  # the kills did land while workers were extracting


def test_extract_frames_redoes_a_hand_damaged_folder(clips, tmp_path, invoke):
    out = tmp_path / "frames"
    assert invoke("extract-frames", "--video-dir", clips, "--out-dir", out, "--workers", "1").exit_code == 0
    reference = _tree(out)
    (out / "train" / "clip1" / "00003.png").unlink()
    (out / "train" / "clip4" / ".vpt-done.json").unlink()
    untouched = (out / "train" / "clip0" / "00000.png").stat().st_mtime_ns
    result = invoke("extract-frames", "--video-dir", clips, "--out-dir", out, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "2 videos extracted" in result.output and "4 already done" in result.output
    assert "2 of them had an incomplete output folder" in result.output
    assert _tree(out) == reference
    assert (out / "train" / "clip0" / "00000.png").stat().st_mtime_ns == untouched


def test_convert_killed_mid_run_resumes_identically(clips, tmp_path, invoke):
    common = ["--data-dir", clips, "--image-size", "32", "--videos-per-shard", "2", "--workers", "2"]
    reference = tmp_path / "reference"
    work = _timed(lambda: invoke("convert-h5", *common, "--out-dir", reference))
    rng = random.Random(5)
    caught_workers = redone = 0
    for attempt in range(KILL_TRIES):
        out = tmp_path / f"out{attempt}"
        children, survivors = _kill_mid_run(
            ["convert-h5", *common, "--out-dir", out],
            started=lambda: (out / ".vpt-convert.json").is_file(),
            delay=rng.uniform(0.0, 0.8 * work),
        )
        assert not survivors, f"workers {children} outlived their killed parent"
        caught_workers += bool(children)
        result = invoke("convert-h5", *common, "--out-dir", out)
        assert result.exit_code == 0, result.output
        redone += int(result.output.split(" videos converted")[0].split()[-1])
        _assert_same_h5(out, reference)
        assert _hidden_leftovers(out) == []
    assert caught_workers >= 1 and redone >= 1


# --- damaged finished outputs ---------------------------------------------------------------------


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def test_convert_rebuilds_a_truncated_finished_shard(clips, tmp_path, invoke):
    common = [
        "--data-dir",
        clips,
        "--out-dir",
        tmp_path / "h5",
        "--image-size",
        "32",
        "--videos-per-shard",
        "2",
        "--workers",
        "1",
    ]
    assert invoke("convert-h5", *common).exit_code == 0
    reference = _h5_contents(tmp_path / "h5")
    shards = tmp_path / "h5" / "train"
    stamps = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    _truncate(shards / "shard_0002.hdf5")
    result = invoke("convert-h5", *common)
    assert result.exit_code == 0, result.output
    assert "shard train/shard_0002.hdf5 is damaged (size" in result.output and "converting it again" in result.output
    assert "2 videos converted" in result.output and "4 already done" in result.output
    got = _h5_contents(tmp_path / "h5")
    assert all(np.array_equal(a[2], b[2]) and a[:2] == b[:2] for a, b in zip(got["train"], reference["train"]))
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.name != "shard_0002.hdf5"} == {
        k: v for k, v in stamps.items() if k != "shard_0002.hdf5"
    }


@pytest.fixture(scope="module")
def frames_h5(tmp_path_factory) -> Path:
    """8 shapes videos of 4 frames at 32x32 as HDF5 (train/val/test)."""
    return shapes_h5(tmp_path_factory.mktemp("shapes"), num_videos=8, frames=4, seed=2)


def test_save_latents_rebuilds_a_truncated_output_shard(frames_h5, vqvae_ckpt, tmp_path, invoke):
    out = tmp_path / "latents"
    args = ["save-latents", "--ae", vqvae_ckpt, "--data", frames_h5, "--out", out, "--workers", "0"]
    assert invoke(*args).exit_code == 0
    shutil.copytree(out, tmp_path / "reference")
    _truncate(out / "train" / "shard_0001.hdf5")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "shard train/shard_0001.hdf5 is damaged (size" in result.output and "encoding it again" in result.output
    assert f"({len(VideoH5(frames_h5 / 'train'))} encoded now" in result.output
    _assert_same_h5(out, tmp_path / "reference")


def test_save_latents_names_a_truncated_input_shard(frames_h5, vqvae_ckpt, tmp_path, invoke):
    data = tmp_path / "frames"
    for split in ("train", "val", "test"):
        (data / split).mkdir(parents=True)
        (data / split / "shard_0001.hdf5").write_bytes((frames_h5 / split / "shard_0001.hdf5").read_bytes())
    _truncate(data / "val" / "shard_0001.hdf5")
    result = invoke("save-latents", "--ae", vqvae_ckpt, "--data", data, "--out", tmp_path / "latents", "--workers", "0")
    assert result.exit_code != 0
    assert str(data / "val" / "shard_0001.hdf5") in _one_line_error(result.output)


# --- one command per folder -----------------------------------------------------------------------


def test_second_convert_on_one_out_dir_is_refused_until_the_holder_dies(clips, tmp_path, invoke):
    out = tmp_path / "h5"
    common = ["--data-dir", clips, "--out-dir", out, "--image-size", "32", "--videos-per-shard", "2"]
    holder = _vpt("convert-h5", *common, "--workers", "1")
    try:
        assert _wait_for(lambda: _holding(out, holder.pid), holder), "the first convert-h5 ended before it was seen"
        holder.send_signal(signal.SIGSTOP)  # keep it mid-run, lock held
        before = sorted(p.name for p in out.rglob("*"))
        second = invoke("convert-h5", *common, "--workers", "1")
        assert second.exit_code == 1
        line = _one_line_error(second.output)
        assert f"another vpt process (pid {holder.pid}: vpt convert-h5" in line and str(out) in line
        assert sorted(p.name for p in out.rglob("*")) == before  # it touched nothing
    finally:
        holder.kill()
        holder.wait()
    assert _holding(out, holder.pid)  # a stale lock file from the killed holder ...
    third = invoke("convert-h5", *common, "--workers", "1")
    assert third.exit_code == 0, third.output  # ... does not block
    assert not (out / LOCK_FILE).exists()
    assert len(VideoH5(out / "train")) == 6


def test_second_train_ae_on_one_run_is_refused_until_the_holder_dies(frames_h5, tmp_path, invoke):
    run = tmp_path / "run"
    args = [
        "train-ae",
        "--config",
        AE_CONFIG,
        "--data",
        frames_h5,
        "--run",
        run,
        "--set",
        "autoencoder.arch.ch=8",
        "--set",
        "autoencoder.arch.ch_mult=[1,2]",
        "--set",
        "autoencoder.arch.resolution=32",
        "--set",
        "autoencoder.arch.n_embed=64",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.log_every=1",
        "--set",
        "loss.discriminator=none",
        "--set",
        "train.val_every=1000",
        "--set",
        "train.sample_every=1000",
    ]
    holder = _vpt(*args, "--max-steps", "100000")
    try:
        assert _wait_for(lambda: run.joinpath("metrics.jsonl").is_file() and _holding(run, holder.pid), holder), (
            "the first train-ae ended before it logged"
        )
        holder.send_signal(signal.SIGSTOP)
        logged = (run / "metrics.jsonl").read_bytes()
        second = invoke(*args, "--max-steps", "2")
        assert second.exit_code == 1
        line = _one_line_error(second.output)
        assert f"another vpt process (pid {holder.pid}: vpt train-ae" in line and str(run) in line
        assert (run / "metrics.jsonl").read_bytes() == logged  # no interleaved records
    finally:
        holder.kill()
        holder.wait()
    third = invoke(*args, "--max-steps", "2")
    assert third.exit_code == 0, third.output
    assert (run / "checkpoints" / "step_000002").is_dir()


# --- read-only and full disks ---------------------------------------------------------------------


def test_read_only_output_is_one_line_before_any_work(clips, frames_h5, vqvae_ckpt, tmpfs, invoke):
    mount, remount = tmpfs
    point = mount("1m")
    remount(point, "ro")
    for args in (
        ["extract-frames", "--video-dir", clips, "--out-dir", point / "frames"],
        ["convert-h5", "--data-dir", clips, "--out-dir", point / "h5", "--image-size", "32"],
        ["save-latents", "--ae", vqvae_ckpt, "--data", frames_h5, "--out", point / "latents"],
    ):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        line = _one_line_error(result.output)
        assert f"cannot write to {point}/" in line and "Read-only file system" in line


def test_convert_on_a_full_disk_stops_cleanly_and_continues_after_space_is_freed(clips, tmp_path, tmpfs, invoke):
    common = [
        "--data-dir",
        clips,
        "--image-size",
        "48",
        "--compression",
        "none",
        "--videos-per-shard",
        "2",
        "--workers",
        "2",
    ]
    assert invoke("convert-h5", *common, "--out-dir", tmp_path / "reference").exit_code == 0
    mount, remount = tmpfs
    point = mount("1m")  # the 6 clips need about 1 MB uncompressed
    result = invoke("convert-h5", *common, "--out-dir", point / "h5")
    assert result.exit_code == 1
    assert "disk full while writing" in _one_line_error(result.output) and "finished shards are kept" in result.output
    assert _hidden_leftovers(point) == []
    kept = sorted(p.name for p in (point / "h5" / "train").glob("*.hdf5"))
    assert kept and len(kept) < 3
    remount(point, "size=4m")
    result = invoke("convert-h5", *common, "--out-dir", point / "h5")
    assert result.exit_code == 0, result.output
    assert f"{2 * len(kept)} already done" in result.output
    _assert_same_h5(point / "h5", tmp_path / "reference")


def test_extract_on_a_full_disk_stops_cleanly_and_continues_after_space_is_freed(clips, tmp_path, tmpfs, invoke):
    assert (
        invoke("extract-frames", "--video-dir", clips, "--out-dir", tmp_path / "reference", "--workers", "2").exit_code
        == 0
    )
    mount, remount = tmpfs
    point = mount("8m")
    _fill(point, leave=256 * 1024)
    result = invoke("extract-frames", "--video-dir", clips, "--out-dir", point / "frames", "--workers", "2")
    assert result.exit_code == 1
    assert "disk full while writing" in _one_line_error(result.output) and "finished videos are kept" in result.output
    assert _hidden_leftovers(point) == []
    (point / "filler").unlink()
    result = invoke("extract-frames", "--video-dir", clips, "--out-dir", point / "frames", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert _tree(point / "frames") == _tree(tmp_path / "reference")


def test_save_latents_on_a_full_disk_stops_cleanly_and_continues_after_space_is_freed(
    frames_h5, vqvae_ckpt, tmp_path, tmpfs, invoke
):
    args = ["save-latents", "--ae", vqvae_ckpt, "--data", frames_h5, "--workers", "0"]
    assert invoke(*args, "--out", tmp_path / "reference").exit_code == 0
    mount, remount = tmpfs
    point = mount("4m")
    _fill(point, leave=48 * 1024)  # 8 videos x 4 frames of 4x16x16 float32 latents: about 130 KB
    result = invoke(*args, "--out", point / "latents")
    assert result.exit_code == 1
    assert "disk full while writing" in _one_line_error(result.output)
    assert _hidden_leftovers(point) == []
    (point / "filler").unlink()
    result = invoke(*args, "--out", point / "latents")
    assert result.exit_code == 0, result.output
    _assert_same_h5(point / "latents", tmp_path / "reference")


def test_run_lock_survives_fresh_force_and_does_not_disturb_the_run_layout(tmp_path):
    from vpt.runs import Run, newest_run

    def other_process_can_lock(directory: Path) -> bool:
        code = "import sys; from vpt.fsutil import exclusive_lock\nwith exclusive_lock(sys.argv[1]): pass"
        return (
            subprocess.run([sys.executable, "-c", code, str(directory)], env=ENV, capture_output=True).returncode == 0
        )

    root = tmp_path / "runs" / "r"
    run = Run.open(root)
    assert (root / LOCK_FILE).read_text().startswith(f"{os.getpid()} ")
    assert not run.exists() and newest_run(tmp_path / "runs") is None  # the lock file alone is not a run
    run.write_config({"train": {}})
    (run.checkpoints_dir / ".pending_step_000002").mkdir()
    (run.checkpoints_dir / "step_000001").mkdir()
    again = Run.open(root)  # the same process may reopen its own run
    assert again.latest_step() == 1 and not (run.checkpoints_dir / ".pending_step_000002").exists()
    inode = (root / LOCK_FILE).stat().st_ino
    fresh = Run.open(root, fresh=True, force=True)
    assert not fresh.exists() and sorted(p.name for p in root.iterdir()) == [LOCK_FILE, "checkpoints", "samples"]
    assert (root / LOCK_FILE).stat().st_ino == inode and not other_process_can_lock(root)  # still the held lock
    for handle in (run, again, fresh):
        handle.release()
    assert not (root / LOCK_FILE).exists() and other_process_can_lock(root)
