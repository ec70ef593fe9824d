"""Built-in shapes data: deterministic per seed, and every caption names the motion the video shows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vpt.cli import main
from vpt.data.shapes import MOTIONS, make_shapes, render, sample_clip, shape_centroid, split_counts, trajectory
from vpt.data.video import read_video, video_info
from vpt.errors import UsageError


def _make(tmp_path, name, seed, num_videos=20, frames=12):
    out = tmp_path / name
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "make-data",
                "shapes",
                "--out",
                str(out),
                "--num-videos",
                str(num_videos),
                "--frames",
                str(frames),
                "--seed",
                str(seed),
                "--workers",
                "2",
            ]
        )
    assert exit_info.value.code == 0
    return out


def test_make_data_writes_splits_captions_and_is_deterministic(tmp_path):
    first, same, other = _make(tmp_path, "a", 3), _make(tmp_path, "b", 3), _make(tmp_path, "c", 4)
    captions = json.loads((first / "captions.json").read_text())
    assert sorted(captions) == sorted(p.relative_to(first).as_posix() for p in first.glob("*/*.mp4"))
    assert {name.split("/")[0]: 0 for name in captions}.keys() == {"train", "val", "test"}
    assert sum(name.startswith("train/") for name in captions) == split_counts(20)["train"] == 16
    assert captions == json.loads((same / "captions.json").read_text())
    assert captions != json.loads((other / "captions.json").read_text())
    for name in ("train/00000.mp4", "test/00001.mp4"):
        assert (first / name).read_bytes() == (same / name).read_bytes()
        assert video_info(first / name) == (12, 8.0, 64, 64)
    assert not np.array_equal(read_video(first / "train/00000.mp4"), read_video(other / "train/00000.mp4"))


def test_every_caption_matches_the_centroid_motion(tmp_path):
    out = tmp_path / "shapes"
    captions = make_shapes(out, num_videos=40, frames=16, seed=0, workers=1)
    seen = set()
    for name, caption in captions.items():
        centroids = shape_centroid(read_video(out / name))  # from the decoded .mp4
        assert not np.isnan(centroids).any()
        dx, dy = centroids[-1] - centroids[0]
        motion = caption.split()[-1]
        seen.add(motion)
        expected = {"left": dx < -10, "right": dx > 10, "up": dy < -10, "down": dy > 10, "falls": dy > 5}[motion]
        assert expected, f"{name} '{caption}': centroid moved by ({dx:.1f}, {dy:.1f})"
        if motion in ("left", "right"):
            assert abs(dy) < 1.0
        if motion in ("up", "down", "falls"):
            assert abs(dx) < 1.0
        steps = np.abs(np.diff(centroids, axis=0)).max()
        assert steps < 8.0  # smooth motion
    assert seen == set(MOTIONS)


def test_rendered_clip_follows_its_trajectory_and_stays_in_frame():
    for motion in MOTIONS:
        clip = sample_clip(np.random.default_rng(7), motion=motion, shape="square", frames=16)
        frames = render(clip, 16, 64)
        centres = trajectory(clip, 16, 64)
        assert np.abs(shape_centroid(frames) - centres).max() < 0.3  # a square's centroid is its centre
        assert (centres >= clip.radius).all() and (centres <= 64 - clip.radius).all()
        assert 12 <= 2 * clip.radius <= 16
        if motion != "falls":
            assert np.allclose(np.linalg.norm(np.diff(centres, axis=0), axis=1), 2.0)  # constant 2 px/frame
    assert (
        sample_clip(np.random.default_rng(0), motion="left", colour="red", shape="circle").instruction
        == "the red circle moves left"
    )
    assert (
        sample_clip(np.random.default_rng(0), motion="falls", colour="blue", shape="circle").instruction
        == "the blue circle falls"
    )


def test_long_clips_bounce_off_walls():
    clip = sample_clip(np.random.default_rng(1), motion="right", frames=80)
    xs = trajectory(clip, 80, 64)[:, 0]
    assert xs.max() <= 64 - clip.radius + 1e-9 and (np.diff(xs) < 0).any()  # it came back


def test_rerun_resumes_and_other_settings_are_refused(tmp_path):
    out = tmp_path / "s"
    make_shapes(out, num_videos=5, frames=4, workers=1)
    victim = out / "train" / "00001.mp4"
    kept = out / "train" / "00000.mp4"
    stamp = kept.stat().st_mtime_ns
    victim.unlink()
    make_shapes(out, num_videos=5, frames=4, workers=1)
    assert victim.is_file() and kept.stat().st_mtime_ns == stamp
    with pytest.raises(UsageError, match="other settings"):
        make_shapes(out, num_videos=6, frames=4, workers=1)


def test_positions_record_and_colour_centroid_locate_the_object(tmp_path):
    """positions.json holds each object's true centre; the colour centroid of the decoded video finds it
    (within a pixel), and the quickstart's position score is ~0 for the truth and the true displacement
    for copying the last context frame."""
    import json

    import torch

    from vpt.commands.quickstart import _position_scores
    from vpt.data.datasets import frames_to_tensor
    from vpt.data.shapes import colour_centroid, make_shapes
    from vpt.data.video import read_video

    make_shapes(tmp_path, num_videos=10, frames=12, size=64, workers=1)
    positions = json.loads((tmp_path / "positions.json").read_text())
    names = sorted(n for n in positions if n.startswith("test/") or n.startswith("val/"))
    records = [positions[n] for n in names]
    video = torch.stack([frames_to_tensor(read_video(tmp_path / n)) for n in names])  # (N, T, 3, H, W)
    for clip, record in zip(video, records):
        centre, pixels = colour_centroid(clip, record["colour"])
        assert np.abs(centre - np.asarray(record["centre"])).max() < 1.0 and (pixels > 50).all()

    truth = video[:, 2:]
    errors, kept = _position_scores(truth, truth, records, num_context=2)
    assert errors.max() < 1.0 and kept.all()
    copied = video[:, 1:2].expand_as(truth)
    errors, kept = _position_scores(copied, truth, records, num_context=2)
    true_shift = [np.linalg.norm(np.asarray(r["centre"])[2:] - np.asarray(r["centre"])[1], axis=1) for r in records]
    np.testing.assert_allclose(errors, np.stack(true_shift), atol=1.0)
    blank = torch.full_like(truth, -1.0)  # the object faded to black: lost in every frame
    errors, kept = _position_scores(blank, truth, records, num_context=2)
    assert not kept.any() and (errors == 32.0).all()
    errors, _ = _position_scores(blank, truth, records, num_context=2, missing_error=16.0)  # e.g. 32 px frames
    assert (errors == 16.0).all()
