"""extract-frames and convert-h5: bad files, exit codes, resume after an interruption, splits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from data_helpers import frame_folder, moving_clip, write_clip

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
    assert changed.exit_code == 2 and "--image-size was 16, now 32" in changed.output


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


# --- reruns with other settings: refused, or redone with --overwrite; never stale ----------------------


def _frame_sizes(root):
    """{video folder: (width, height) of its first frame} for every extracted video under `root`."""
    return {
        folder.relative_to(root).as_posix(): read_image(frame_files(folder)[0]).shape[1::-1]
        for folder in sorted(p for p in root.rglob("*") if p.is_dir() and frame_files(p))
    }


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_extract_rerun_with_another_size_is_refused_then_redone_with_overwrite(tmp_path, invoke):
    src, out = tmp_path / "flat", tmp_path / "frames"
    for k in range(2):
        write_clip(src / f"clip{k}.mp4", frames=3, size=32, seed=k)
    extract = ("extract-frames", "--video-dir", src, "--out-dir", out, "--workers", "1")
    assert invoke(*extract, "--size", "16").exit_code == 0
    before = _mtimes(out)

    refused = invoke(*extract, "--size", "24")
    assert refused.exit_code == 2 and "--size was 16, now 24" in refused.output and "--overwrite" in refused.output
    assert _frame_sizes(out) == {"clip0": (16, 16), "clip1": (16, 16)} and _mtimes(out) == before  # left alone
    other_format = invoke(*extract, "--size", "16", "--ext", "jpg")
    assert other_format.exit_code == 2 and "--ext was png, now jpg" in other_format.output

    redone = invoke(*extract, "--size", "24", "--overwrite")
    assert redone.exit_code == 0, redone.output
    assert "2 videos extracted" in redone.output and "2 outputs made with other settings were replaced" in redone.output
    assert _frame_sizes(out) == {"clip0": (24, 24), "clip1": (24, 24)}
    assert json.loads((out / "clip0" / extract_module.DONE_MARKER).read_text())["size"] == 24

    after = _mtimes(out)
    unchanged = invoke(*extract, "--size", "24")  # same settings: finished work is kept
    assert (
        unchanged.exit_code == 0 and "0 videos extracted" in unchanged.output and "2 already done" in unchanged.output
    )
    assert {p: t for p, t in _mtimes(out).items() if p.parent != out} == {
        p: t for p, t in after.items() if p.parent != out
    }


def test_extract_rerun_with_other_splits_leaves_no_video_in_two_splits(tmp_path, invoke):
    src, out = tmp_path / "flat", tmp_path / "frames"
    for k in range(3):
        write_clip(src / f"clip{k}.mp4", frames=2, size=16, seed=k)
    extract = ("extract-frames", "--video-dir", src, "--out-dir", out, "--workers", "1")
    assert invoke(*extract, "--splits", "1,0,0").exit_code == 0
    refused = invoke(*extract, "--splits", "0,0,1")
    assert refused.exit_code == 2 and "--splits moved clip0.mp4 from train/clip0 to test/clip0" in refused.output
    assert sorted(_frame_sizes(out)) == ["train/clip0", "train/clip1", "train/clip2"]
    assert invoke(*extract, "--splits", "0,0,1", "--overwrite").exit_code == 0
    assert sorted(_frame_sizes(out)) == ["test/clip0", "test/clip1", "test/clip2"]


def test_convert_rerun_after_adding_captions_is_refused_then_redone_with_overwrite(tmp_path, invoke):
    src, out = tmp_path / "src", tmp_path / "h5"
    write_clip(src / "train" / "a.mp4", frames=3, size=32, seed=1)
    write_clip(src / "train" / "b.mp4", frames=4, size=32, seed=2)
    convert = ("convert-h5", "--data-dir", src, "--out-dir", out, "--workers", "1")
    assert invoke(*convert, "--image-size", "16").exit_code == 0
    assert not VideoH5(out / "train").has_text
    shard = out / "train" / "shard_0001.hdf5"
    stamp = shard.stat().st_mtime_ns

    (src / "captions.json").write_text(json.dumps({"train/a": "alpha", "b.mp4": "beta"}))
    refused = invoke(*convert, "--image-size", "16")
    assert refused.exit_code == 2 and "captions (captions.json/.csv) added" in refused.output
    assert "--overwrite" in refused.output and shard.stat().st_mtime_ns == stamp
    resized = invoke(*convert, "--image-size", "24")
    assert resized.exit_code == 2 and "--image-size was 16, now 24" in resized.output

    redone = invoke(*convert, "--image-size", "24", "--overwrite")
    assert redone.exit_code == 0, redone.output
    train = VideoH5(out / "train")
    assert [train.text(i) for i in range(len(train))] == ["alpha", "beta"]
    assert train.read(1).shape == (4, 24, 24, 3)

    stamp = shard.stat().st_mtime_ns
    unchanged = invoke(*convert, "--image-size", "24")
    assert unchanged.exit_code == 0 and "2 already done" in unchanged.output and shard.stat().st_mtime_ns == stamp
    (src / "captions.json").write_text(json.dumps({"train/a": "alpha", "b.mp4": "bravo"}))
    edited = invoke(*convert, "--image-size", "24")
    assert edited.exit_code == 2 and "captions (captions.json/.csv) changed" in edited.output


# --- splits that come out empty ----------------------------------------------------------------------


def test_convert_refuses_splits_that_leave_train_empty_and_warns_on_a_tiny_split(tmp_path, invoke):
    flat = tmp_path / "flat"
    for name in ("clip0", "clip1", "clip2", "clip4"):  # under 0.5,0.25,0.25 every one of these hashes to val
        write_clip(flat / f"{name}.mp4", frames=2, size=16)
    convert = ("convert-h5", "--data-dir", flat, "--image-size", "16", "--workers", "1")
    empty = invoke(*convert, "--out-dir", tmp_path / "h5", "--splits", "0.5,0.25,0.25")
    assert empty.exit_code == 2 and "put none of the 4 videos into train (train 0, val 4, test 0" in empty.output
    assert not (tmp_path / "h5").exists()  # refused before anything was written

    for name in ("clip0", "clip1"):
        (flat / f"{name}.mp4").unlink()
    write_clip(flat / "clip3.mp4", frames=2, size=16)  # train
    tiny = invoke(*convert, "--out-dir", tmp_path / "h5", "--splits", "0.5,0.25,0.25")
    assert tiny.exit_code == 0, tiny.output
    assert "gave train 1, val 2, test 0: test much smaller than asked" in " ".join(tiny.output.split())

    tree = tmp_path / "tree"
    write_clip(tree / "test" / "x.mp4", frames=2, size=16)
    test_only = invoke("convert-h5", "--data-dir", tree, "--out-dir", tmp_path / "t", "--image-size", "16")
    assert test_only.exit_code == 0 and "no train videos (test 1)" in test_only.output


# --- symbolic links in the input are read through; outputs never written through them -----------------


def test_symlinked_frame_folders_and_videos_are_converted(tmp_path, invoke):
    elsewhere = tmp_path / "elsewhere"
    clip = moving_clip(5, 16, 16)
    frame_folder(elsewhere / "a", clip)
    write_clip(elsewhere / "b.mp4", frames=4, size=16)
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train" / "a").symlink_to(elsewhere / "a")
    (src / "train" / "b.mp4").symlink_to(elsewhere / "b.mp4")
    (src / "train" / "loop").symlink_to(src)  # would never end if followed
    before = _mtimes(elsewhere)

    result = invoke("convert-h5", "--data-dir", src, "--out-dir", tmp_path / "h5", "--image-size", "0")
    assert result.exit_code == 0, result.output
    assert "loop links to" in result.output and "skipped" in result.output
    train = VideoH5(tmp_path / "h5" / "train")
    assert [train.name(i) for i in range(len(train))] == ["a", "b.mp4"]
    assert np.array_equal(train.read(0), clip) and train.lengths.tolist() == [5, 4]
    assert _mtimes(elsewhere) == before
