"""HDF5 layouts: upstream RIVER shards are read as specified and written identically; vpt's own layout."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from data_helpers import numbered_video
from fixture_paths import fixture
from PIL import Image
from typer.testing import CliRunner

from vpt.cli import app
from vpt.data.convert import STATE_FILE
from vpt.data.h5 import ShardWriter, VideoH5, compress_chunks, find_split_dir, list_shards
from vpt.errors import UsageError

SPLITS = ("train", "val", "test")


def _tree(path):
    """Everything the layout fixes: objects, kinds, shapes, dtypes, chunks, compression, scalars, attrs."""
    entries = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Group):
                entries[name] = ("group", len(obj), dict(obj.attrs))
            else:
                value = obj[()].item() if obj.shape == () else None
                entries[name] = (
                    "dataset",
                    obj.shape,
                    str(obj.dtype),
                    obj.chunks,
                    obj.compression,
                    obj.shuffle,
                    value,
                    dict(obj.attrs),
                )

        f.visititems(visit)
        entries["/"] = ("root", len(f), dict(f.attrs))
    return entries


@pytest.fixture()
def river_h5() -> Path:
    """Tiny frame folders (frames/) and what upstream RIVER's converter wrote for them (h5/)."""
    return fixture("river", "h5_layout")


def test_reads_fixture_river_shards_as_specified(river_h5):
    for split, lengths in {"train": [5, 6, 7], "val": [5], "test": [6]}.items():
        videos = VideoH5(find_split_dir(river_h5 / "h5", split))
        assert videos.layout == "river" and videos.kind == "frames" and videos.attrs == {}
        assert len(videos) == len(lengths) and [videos.num_frames(i) for i in range(len(videos))] == lengths
        assert videos.text(0) is None and not videos.has_text
    train = VideoH5(river_h5 / "h5" / "train")
    # layout.txt: train video 1 frame 3 equals PIL .resize((8, 8)) of the source PNG
    png = Image.open(river_h5 / "frames" / "train" / "00001" / "00003.png").convert("RGB").resize((8, 8))
    assert np.array_equal(train.read(1, [3])[0], np.asarray(png))
    with h5py.File(river_h5 / "h5" / "train" / "shard_0001.hdf5", "r") as f:
        assert np.array_equal(train.read(2, [6, 0, 6]), np.stack([f["2/6"][()], f["2/0"][()], f["2/6"][()]]))


def test_convert_river_layout_matches_fixture_exactly(river_h5, tmp_path):
    out = tmp_path / "h5"
    result = CliRunner().invoke(
        app,
        [
            "convert-h5",
            "--data-dir",
            str(river_h5 / "frames"),
            "--out-dir",
            str(out),
            "--image-size",
            "8",
            "--extension",
            "png",
            "--layout",
            "river",
            "--workers",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    settings = json.loads((out / STATE_FILE).read_text())["settings"]
    assert settings["videos_per_shard"] == 100_000  # upstream's shard size, the river layout's default
    for split in SPLITS:
        assert [p.name for p in list_shards(out / split)] == ["shard_0001.hdf5"]
        written, expected = out / split / "shard_0001.hdf5", river_h5 / "h5" / split / "shard_0001.hdf5"
        assert _tree(written) == _tree(expected)
        with h5py.File(written, "r") as a, h5py.File(expected, "r") as b:
            for name in b["len"]:
                for frame in b[name]:
                    assert np.array_equal(a[f"{name}/{frame}"][()], b[f"{name}/{frame}"][()]), f"{split} {name}/{frame}"


def test_vpt_layout_holds_the_same_frames_as_river(river_h5, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "convert-h5",
            "--data-dir",
            str(river_h5 / "frames"),
            "--out-dir",
            str(tmp_path),
            "--image-size",
            "8",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    ours, theirs = VideoH5(tmp_path / "train"), VideoH5(river_h5 / "h5" / "train")
    assert ours.layout == "vpt" and ours.attrs["vpt_layout_version"] == 1 and ours.attrs["image_size"] == 8
    assert ours.lengths.tolist() == theirs.lengths.tolist()
    assert [ours.name(i) for i in range(3)] == ["00000", "00001", "00002"]
    for i in range(3):
        assert np.array_equal(ours.read(i), theirs.read(i))
    with h5py.File(tmp_path / "train" / "shard_0001.hdf5", "r") as f:
        video = f["videos/2"]
        assert video.shape == (7, 8, 8, 3) and video.chunks == (1, 8, 8, 3) and video.compression == "lzf"


def test_writer_reader_round_trip_with_text_and_strided_reads(tmp_path):
    with ShardWriter(tmp_path / "s" / "shard_0001.hdf5", attrs={"note": "x"}) as shard:
        shard.add(numbered_video(10), text="first", name="a.mp4")
        shard.add(numbered_video(4), name="b.mp4")
    with ShardWriter(tmp_path / "s" / "shard_0002.hdf5") as shard:
        shard.add(numbered_video(6), text="third")
    videos = VideoH5(tmp_path / "s")
    assert len(videos) == 3 and videos.lengths.tolist() == [10, 4, 6] and videos.attrs["note"] == "x"
    assert [videos.text(i) for i in range(3)] == ["first", "", "third"] and videos.name(0) == "a.mp4"
    assert videos.shard_range(1) == range(2, 3)
    for indices in ([0, 3, 6, 9], [9, 1, 1, 5], [2]):  # strided slice, fancy with repeats, single
        assert videos.read(0, indices)[:, 0, 0, 0].tolist() == indices
    assert videos.read(2, [5])[0, 0, 0, 0] == 5
    with pytest.raises(IndexError):
        videos.read(1, [4])
    with pytest.raises(IndexError):
        videos.read(3, [0])


def test_chunks_compressed_elsewhere_read_back_identically(tmp_path):
    flat = numbered_video(6, 16)  # compresses well
    noise = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)  # LZF stores it raw
    latents = np.random.default_rng(1).standard_normal((3, 4, 2, 2)).astype(np.float16)
    with ShardWriter(tmp_path / "f" / "shard_0001.hdf5") as shard:
        shard.add(compress_chunks(flat, "lzf"))
        shard.add(compress_chunks(noise, "lzf"))
        with pytest.raises(ValueError, match="compressed with"):
            shard.add(compress_chunks(flat, None))
    with ShardWriter(tmp_path / "l" / "shard_0001.hdf5", kind="latents", compression="none") as shard:
        shard.add(compress_chunks(latents, "none"))
    frames, stored = VideoH5(tmp_path / "f"), VideoH5(tmp_path / "l")
    assert np.array_equal(frames.read(0), flat) and np.array_equal(frames.read(1), noise)
    assert frames.lengths.tolist() == [6, 4] and np.array_equal(stored.read(0), latents)
    with h5py.File(tmp_path / "f" / "shard_0001.hdf5", "r") as f:
        assert f["videos/0"].compression == "lzf" and f["videos/0"].id.get_storage_size() < flat.nbytes / 4


def test_failed_writer_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "shard_0001.hdf5") as shard:
            shard.add(numbered_video(3))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_latent_shards(tmp_path):
    latents = np.random.default_rng(0).standard_normal((5, 4, 2, 2)).astype(np.float16)
    with ShardWriter(
        tmp_path / "shard_0001.hdf5", kind="latents", compression=None, attrs={"ae": "vqgan_f8_small", "scale": 0.5}
    ) as shard:
        shard.add(latents, name="0")
    videos = VideoH5(tmp_path)
    assert videos.kind == "latents" and videos.attrs["ae"] == "vqgan_f8_small" and videos.attrs["scale"] == 0.5
    assert videos.read(0).dtype == np.float16 and np.array_equal(videos.read(0, [4, 1]), latents[[4, 1]])
    assert videos.frame_shape() == (4, 2, 2)
    with pytest.raises(ValueError):
        with ShardWriter(tmp_path / "x" / "shard_0001.hdf5", kind="latents") as shard:
            shard.add(np.zeros((2, 4, 2, 2), np.float64))


def test_reader_pickles_into_dataloader_workers(tmp_path):
    with ShardWriter(tmp_path / "shard_0001.hdf5") as shard:
        for length in range(3, 11):
            shard.add(numbered_video(length))
    videos = VideoH5(tmp_path)
    videos.read(0, [0])  # the parent has an open handle now; workers must not inherit it
    clone = pickle.loads(pickle.dumps(videos))
    assert clone._files == {} and np.array_equal(clone.read(7), videos.read(7))

    class Last(torch.utils.data.Dataset):
        def __len__(self):
            return len(videos)

        def __getitem__(self, i):
            return int(videos.read(i, [videos.num_frames(i) - 1])[0, 0, 0, 0])

    loader = torch.utils.data.DataLoader(Last(), batch_size=None, num_workers=2)
    assert sorted(int(x) for x in loader) == [length - 1 for length in range(3, 11)]


def test_find_split_dir(tmp_path):
    with ShardWriter(tmp_path / "validation" / "shard_0001.hdf5") as shard:
        shard.add(numbered_video(2))
    assert find_split_dir(tmp_path, "val") == tmp_path / "validation"
    assert find_split_dir(tmp_path / "validation", "train") == tmp_path / "validation"  # a split dir itself
    with pytest.raises(UsageError, match="splits found: validation"):
        find_split_dir(tmp_path, "train")
    with pytest.raises(UsageError, match="not found"):
        find_split_dir(tmp_path / "missing", "train")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "shard_0001.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(UsageError, match="not a readable HDF5"):
        VideoH5(tmp_path / "junk")
