"""Video I/O: decord and PyAV agree, frame access is exact, resize/fps policies, encoders."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from data_helpers import moving_clip, write_clip
from PIL import Image

from vpt.data import video as video_io
from vpt.data.video import (
    iter_frames,
    read_frames,
    read_image,
    read_video,
    resample_indices,
    resize_frames,
    to_uint8_frames,
    video_info,
    write_video,
)

# Only the decord-vs-PyAV comparison needs decord; everything else runs on PyAV alone.
requires_decord = pytest.mark.skipif(importlib.util.find_spec("decord") is None, reason="decord is not installed")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mp4", frames=20)


@requires_decord
def test_decord_and_pyav_decode_identical_frames(clip):
    by_pyav = read_video(clip, backend="pyav")
    by_decord = read_video(clip, backend="decord")
    assert by_pyav.shape == (20, 64, 64, 3) and by_pyav.dtype == np.uint8
    assert np.array_equal(by_pyav, by_decord)
    # Random access (seeks for decord, sequential decode for PyAV) returns the same frames as a full decode.
    indices = [17, 3, 3, 0, 9, 19]
    assert np.array_equal(read_frames(clip, indices, backend="decord"), by_pyav[indices])
    assert np.array_equal(read_frames(clip, indices, backend="pyav"), by_pyav[indices])


def test_decoded_mp4_is_close_to_what_was_written(clip):
    decoded = read_video(clip).astype(np.float32)
    assert np.abs(decoded - moving_clip(20)).mean() < 8.0  # crf 12 H.264; yuv420p halves chroma of the noise texture


def test_video_info_and_windowed_read(clip):
    assert video_info(clip) == (20, 8.0, 64, 64)
    full = read_video(clip)
    assert np.array_equal(read_video(clip, start=5, num_frames=4), full[5:9])
    # fps 4 from 8: every second frame; start/num_frames count output frames
    assert np.array_equal(read_video(clip, fps=4, start=1, num_frames=3), full[[2, 4, 6]])


def test_resample_indices():
    assert resample_indices(10, 8, None).tolist() == list(range(10))
    assert resample_indices(10, 8, 4).tolist() == [0, 2, 4, 6, 8]
    assert resample_indices(20, 8, 3).tolist() == [0, 2, 5, 8, 10, 13, 16, 18]  # 2.5 s at 3 fps -> 8 frames
    assert resample_indices(5, 8, 12).tolist() == [0, 0, 1, 2, 2, 3, 4, 4]  # raising the rate repeats frames


@pytest.mark.parametrize("fps", [None, 3.0, 12.0])
def test_streaming_decode_matches_read_video(clip, fps):
    streamed = np.stack(list(iter_frames(clip, size=32, fps=fps, chunk=7)))
    assert np.array_equal(streamed, read_video(clip, size=32, fps=fps))
    assert np.array_equal(
        np.stack(list(iter_frames(clip, fps=fps, backend="pyav"))), read_video(clip, fps=fps, backend="pyav")
    )


def test_resize_policies():
    frame = moving_clip(1, 48, 80)[0]
    squash = resize_frames(frame[None], 32, "squash")[0]
    assert np.array_equal(squash, np.asarray(Image.fromarray(frame).resize((32, 32), Image.Resampling.BICUBIC)))
    crop = resize_frames(frame[None], 24, "crop")[0]
    # "crop" = torchvision-style Resize(short side) then CenterCrop: 80x48 -> 40x24 -> centre 24x24
    reference = np.asarray(Image.fromarray(frame).resize((40, 24), Image.Resampling.BICUBIC))[:, 8:32]
    assert np.array_equal(crop, reference)
    assert np.array_equal(resize_frames(frame[None], None)[0], frame)


def test_read_image_converts_to_rgb(tmp_path):
    Image.fromarray(np.full((10, 14), 77, np.uint8), mode="L").save(tmp_path / "grey.png")
    rgba = np.zeros((10, 14, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "grey.png").shape == (10, 14, 3)
    assert read_image(tmp_path / "grey.png")[0, 0].tolist() == [77, 77, 77]
    assert read_image(tmp_path / "rgba.png", size=8)[4, 4].tolist() == [200, 0, 0]


def test_png_fast_path_equals_pillow(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (9, 13), dtype=np.uint8)
    images = {
        "rgb": Image.fromarray(moving_clip(1, 9, 13)[0]),
        "grey": Image.fromarray(grey, mode="L"),
        "rgba": Image.fromarray(np.dstack([grey, grey // 2, grey // 3, grey // 4]), mode="RGBA"),
        "palette": Image.fromarray(moving_clip(1, 9, 13)[0]).quantize(16),
        "grey16": Image.fromarray(rng.integers(0, 65535, (9, 13), dtype=np.uint16)),
    }
    for name, image in images.items():
        image.save(tmp_path / f"{name}.png")
        expected = np.asarray(video_io.to_rgb8(Image.open(tmp_path / f"{name}.png")))  # 16-bit scaled, not clipped
        assert np.array_equal(read_image(tmp_path / f"{name}.png"), expected), name
        resized = np.asarray(
            video_io.to_rgb8(Image.open(tmp_path / f"{name}.png")).resize((6, 6), Image.Resampling.BICUBIC)
        )
        assert np.array_equal(read_image(tmp_path / f"{name}.png", size=6), resized), name
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 20)
    with pytest.raises(video_io.VideoReadError):
        read_image(tmp_path / "bad.png")


def test_write_odd_size_pads_to_even(tmp_path):
    frames = moving_clip(6, 33, 47)
    path = write_video(tmp_path / "odd.mp4", frames, fps=10, crf=2)
    decoded = read_video(path)
    assert decoded.shape == (6, 34, 48, 3)
    error = np.abs(decoded[:, :33, :47].astype(float) - frames).mean()
    shifted = np.abs(decoded[:, 1:34, 1:48].astype(float) - frames).mean()
    assert error < 6.0 and error < shifted / 2  # the picture sits at the origin; padding went right/bottom
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_gif_round_trip_and_tensor_input(tmp_path):
    video = torch.linspace(-1, 1, 4 * 3 * 16 * 16).reshape(4, 3, 16, 16)
    frames = to_uint8_frames(video)
    assert frames.shape == (4, 16, 16, 3) and frames.dtype == np.uint8
    assert frames[0, 0, 0, 0] == 0 and frames[-1, -1, -1, -1] == 255
    path = write_video(tmp_path / "a.gif", torch.from_numpy(frames), fps=5)
    decoded = read_video(path)
    assert decoded.shape == (4, 16, 16, 3)
    assert np.abs(decoded.astype(float) - frames).mean() < 8.0  # palette quantisation
    assert video_info(path)[0] == 4


def test_write_rejects_wrong_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))
    from vpt.errors import UsageError

    with pytest.raises(UsageError, match="cannot write video"):
        write_video(tmp_path / "x.avi", np.zeros((2, 8, 8, 3), np.uint8))


def test_corrupt_file_is_a_read_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(video_io.VideoReadError):
        read_video(bad)
    with pytest.raises(video_io.VideoReadError):
        video_info(bad)


def test_decord_rejected_width_falls_back_to_pyav(tmp_path):
    # decord 0.6 raises a size-mismatch error for some widths (48 px among them); "auto" must still decode.
    path = write_video(tmp_path / "w48.mp4", moving_clip(5, 32, 48), fps=8)
    assert np.array_equal(read_video(path), read_video(path, backend="pyav"))
