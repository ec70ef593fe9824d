"""extract-frames and convert-h5: bad files, exit codes, resume after an interruption, splits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from data_helpers import write_clip

import vpt.data.convert as convert_module
import vpt.data.extract as extract_module
from vpt.data.h5 import VideoH5
from vpt.data.sources import frame_files
from vpt.data.video import read_image, read_video


@pytest.fixture()
def videos(tmp_path):
    """src/{train,val}/ with good clips of different lengths, a nested one, a corrupt and an empty file."""
    src = tmp_path / "src"
    write_clip(src / "train" / "a.mp4", frames=6, seed=1)
    write_clip(src / "train" / "nested" / "b.mp4", frames=8, seed=2)
    write_clip(src / "train" / "c.mp4", frames=5, seed=3)
    write_clip(src / "val" / "d.mp4", frames=7, seed=4)
    (src / "train" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    (src / "val" / "empty.avi").write_bytes(b"")
    (src / "captions.json").write_text(json.dumps({"train/a.mp4": "alpha", "val/d.mp4": "delta"}))
    return src


def _failed_lines(path):
    return sorted(line.split("\t")[0] for line in path.read_text().splitlines())


def test_extract_reports_corrupt_files_and_completes_the_others(videos, tmp_path, invoke):
    out = tmp_path / "frames"
    result = invoke("extract-frames", "--video-dir", videos, "--out-dir", out, "--size", "32", "--workers", "2")
    assert result.exit_code == 1
    assert "broken.mp4" in result.output and "empty.avi" in result.output and "2 of 6 videos" in result.output
    assert _failed_lines(out / "failed.txt") == ["train/broken.mp4", "val/empty.avi"]
    assert all(len(line.split("\t")[1]) > 0 for line in (out / "failed.txt").read_text().splitlines())
    for name, count in {"train/a": 6, "train/nested/b": 8, "train/c": 5, "val/d": 7}.items():
        files = frame_files(out / name)
        assert [f.name for f in files] == [f"{k:05d}.png" for k in range(count)]
    # frames are the decoded video, resized
    assert np.array_equal(
        read_image(out / "train" / "a" / "00004.png"), read_video(videos / "train" / "a.mp4", size=32)[4]
    )
    assert json.loads((out / "captions.json").read_text())["train/a.mp4"] == "alpha"
    assert not list(out.rglob(".*partial"))

    again = invoke("extract-frames", "--video-dir", videos, "--out-dir", out, "--size", "32", "--skip-bad")
    assert again.exit_code == 0, again.output
    assert "0 videos extracted" in again.output and "4 already done" in again.output and "2 failed" in again.output


def test_extract_resumes_after_interruption_without_redoing_finished_videos(videos, tmp_path, monkeypatch):
    (videos / "train" / "broken.mp4").unlink()
    (videos / "val" / "empty.avi").unlink()
    out = tmp_path / "frames"
    real_save, calls = extract_module._save_frame, {"n": 0}

    def save_then_die(frame, path, ext):
        calls["n"] += 1
        if calls["n"] == 9:  # mid-way through the second video (a has 6 frames)
            raise KeyboardInterrupt
        real_save(frame, path, ext)

    monkeypatch.setattr(extract_module, "_save_frame", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract_module.extract_frames(videos, out, workers=1)
    monkeypatch.setattr(extract_module, "_save_frame", real_save)
    finished = out / "train" / "a"
    assert len(frame_files(finished)) == 6
    partial = [p for p in out.rglob(".*.partial")]
    assert len(partial) == 1 and not partial[0].with_name(partial[0].name[1 : -len(".partial")]).exists()
    stamps = {f: f.stat().st_mtime_ns for f in finished.iterdir()}

    summary = extract_module.extract_frames(videos, out, workers=1)
    assert (summary.skipped, summary.done, summary.failed) == (1, 3, [])
    assert {f: f.stat().st_mtime_ns for f in finished.iterdir()} == stamps  # finished video not rewritten
    assert not list(out.rglob(".*.partial"))
    for name, count in {"train/nested/b": 8, "train/c": 5, "val/d": 7}.items():
        assert len(frame_files(out / name)) == count


def test_extract_splits_a_flat_folder_deterministically(tmp_path, invoke):
    src = tmp_path / "flat"
    for k in range(12):
        write_clip(src / f"clip{k:02d}.mp4", frames=2, size=16, seed=k)
    first = invoke(
        "extract-frames",
        "--video-dir",
        src,
        "--out-dir",
        tmp_path / "one",
        "--splits",
        "0.5,0.25,0.25",
        "--workers",
        "1",
    )
    second = invoke(
        "extract-frames",
        "--video-dir",
        src,
        "--out-dir",
        tmp_path / "two",
        "--splits",
        "0.5,0.25,0.25",
        "--workers",
        "2",
    )
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output

    def layout(root):
        return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*") if p.is_dir())

    assert layout(tmp_path / "one") == layout(tmp_path / "two")
    assert len(layout(tmp_path / "one")) == 12
    assert {p.split("/")[0] for p in layout(tmp_path / "one")} <= {"train", "val", "test"}
    assert len({p.split("/")[0] for p in layout(tmp_path / "one")}) >= 2
    bad = invoke("extract-frames", "--video-dir", src, "--out-dir", tmp_path / "x", "--splits", "0.5,0.5")
    assert bad.exit_code == 2 and "--splits" in bad.output


def test_convert_reports_corrupt_files_with_exit_codes(videos, tmp_path, invoke):
    out = tmp_path / "h5"
    result = invoke("convert-h5", "--data-dir", videos, "--out-dir", out, "--image-size", "16", "--workers", "2")
    assert result.exit_code == 1 and "broken.mp4" in result.output
    assert _failed_lines(out / "failed.txt") == ["train/broken.mp4", "val/empty.avi"]
    train = VideoH5(out / "train")
    assert [train.name(i) for i in range(len(train))] == ["a.mp4", "c.mp4", "nested/b.mp4"]
    assert train.lengths.tolist() == [6, 5, 8] and train.text(0) == "alpha" and train.text(1) == ""
    assert np.array_equal(train.read(2), read_video(videos / "train" / "nested" / "b.mp4", size=16))
    assert VideoH5(out / "val").text(0) == "delta"
    again = invoke("convert-h5", "--data-dir", videos, "--out-dir", out, "--image-size", "16", "--skip-bad")
    assert again.exit_code == 0 and "2 failed" in again.output  # failures of finished shards are still reported
    changed = invoke("convert-h5", "--data-dir", videos, "--out-dir", out, "--image-size", "32")
    assert changed.exit_code == 2 and "image_size" in changed.output


def test_convert_resumes_after_interruption_without_redoing_finished_shards(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for k in range(7):
        write_clip(src / "train" / f"v{k}.mp4", frames=3 + k, size=16, seed=k)
    out, straight = tmp_path / "h5", tmp_path / "straight"
    convert_module.convert_h5(src, straight, image_size=16, videos_per_shard=2, workers=1)

    real_load, calls = convert_module._load, {"n": 0}

    def load_then_die(job):
        calls["n"] += 1
        if calls["n"] == 6:  # third shard half written
            raise KeyboardInterrupt
        return real_load(job)

    monkeypatch.setattr(convert_module, "_load", load_then_die)
    with pytest.raises(KeyboardInterrupt):
        convert_module.convert_h5(src, out, image_size=16, videos_per_shard=2, workers=1)
    monkeypatch.setattr(convert_module, "_load", real_load)
    done = sorted(p.name for p in (out / "train").iterdir())
    assert done == ["shard_0001.hdf5", "shard_0002.hdf5"]  # the half-written third shard left nothing
    (out / "train" / ".shard_0003.hdf5.99999.tmp").write_bytes(b"left by a kill -9")
    stamps = {p: p.stat().st_mtime_ns for p in (out / "train").iterdir()}

    summary = convert_module.convert_h5(src, out, image_size=16, videos_per_shard=2, workers=2)
    assert (summary.skipped, summary.done) == (4, 3)
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"shard_000{k}.hdf5" for k in range(1, 5)]
    for path, stamp in stamps.items():
        if path.suffix == ".hdf5":
            assert path.stat().st_mtime_ns == stamp  # finished shards untouched
    resumed, reference = VideoH5(out / "train"), VideoH5(straight / "train")
    assert resumed.lengths.tolist() == reference.lengths.tolist() == [3, 4, 5, 6, 7, 8, 9]
    for i in range(7):
        assert np.array_equal(resumed.read(i), reference.read(i))


def test_convert_needs_splits_for_a_flat_folder(tmp_path, invoke):
    write_clip(tmp_path / "flat" / "x.mp4", frames=2, size=16)
    result = invoke("convert-h5", "--data-dir", tmp_path / "flat", "--out-dir", tmp_path / "out")
    assert result.exit_code == 2 and "--splits" in result.output
    result = invoke(
        "convert-h5",
        "--data-dir",
        tmp_path / "flat",
        "--out-dir",
        tmp_path / "out",
        "--splits",
        "1,0,0",
        "--image-size",
        "16",
    )
    assert result.exit_code == 0, result.output
    assert VideoH5(tmp_path / "out" / "train").lengths.tolist() == [2]


def test_unknown_option_values_are_one_line_errors(tmp_path, invoke):
    result = invoke("convert-h5", "--data-dir", tmp_path, "--out-dir", tmp_path / "o", "--layout", "bogus")
    assert result.exit_code == 2 and "--layout" in result.output
    result = invoke("extract-frames", "--video-dir", tmp_path / "missing", "--out-dir", tmp_path / "o")
    assert result.exit_code == 2 and "not a directory" in result.output
    assert os.listdir(tmp_path) == []
