"""Clip datasets: sampling bounds, determinism, sources, captions (json, csv, SSv2, Bridge, Epic), latents."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from data_helpers import frame_folder, numbered_video, write_clip
from PIL import Image

from vpt.config import validate
from vpt.data.datasets import ClipDataset, DataConfig, VideoDataset, clip_start, open_source, trilinear_resample
from vpt.data.h5 import ShardWriter
from vpt.data.sources import bridge_caption, natural_key, ssv2_label
from vpt.errors import ConfigError, UsageError
from vpt.training.sampler import SampleKey


def _frame_values(item) -> list[int]:
    """The source frame numbers a clip holds (frames of numbered videos carry their index as value)."""
    return [round((v + 1) * 127.5) for v in item["video"][:, 0, 0, 0].tolist()]


@pytest.fixture()
def numbered_h5(tmp_path):
    with ShardWriter(tmp_path / "h5" / "train" / "shard_0001.hdf5") as shard:
        for length in (7, 10, 30, 3):
            shard.add(numbered_video(length), text=f"video of {length}")
    return tmp_path / "h5"


def test_clip_starts_cover_exactly_zero_to_len_minus_span(numbered_h5):
    # 3 frames every 3rd frame: span 7. The 7-frame video (len == span) has a single clip; the 3-frame one is left out.
    dataset = ClipDataset(DataConfig(path=str(numbered_h5), frames=3, frame_skip=2))
    assert len(dataset) == 3
    assert _frame_values(dataset[SampleKey(0, 123)]) == [0, 3, 6]
    starts = {_frame_values(dataset[SampleKey(1, seed)])[0] for seed in range(400)}
    assert starts == set(range(0, 10 - 7 + 1))  # every start 0..len-span reachable, none beyond
    for seed in range(50):
        values = _frame_values(dataset[SampleKey(2, seed)])
        assert values[1] - values[0] == 3 and 0 <= values[0] <= 30 - 7
    assert _frame_values(dataset[1]) == [0, 3, 6]  # an int key is the deterministic clip from frame 0


def test_clip_start_distribution_is_uniform():
    generator = np.random.default_rng(0)
    counts = np.bincount([clip_start(12, 8, generator) for _ in range(5000)], minlength=5)
    assert len(counts) == 5 and counts.min() > 850  # 5 starts, ~1000 each
    assert clip_start(8, 8, np.random.default_rng(1)) == 0
    with pytest.raises(Exception, match="shorter than the clip span"):
        clip_start(7, 8, None)


def test_same_key_same_clip_and_text_and_flip(numbered_h5, tmp_path):
    config = DataConfig(path=str(numbered_h5), frames=4, hflip=True)
    dataset = ClipDataset(config)
    first, again = dataset[SampleKey(2, 99)], ClipDataset(config)[SampleKey(2, 99)]
    assert torch.equal(first["video"], again["video"]) and first["text"] == "video of 30" and first["index"] == 2
    assert first["video"].dtype == torch.float32 and first["video"].shape == (4, 3, 8, 8)

    # flips happen for about half of the seeds and are mirror images
    pattern = numbered_video(5, 6).copy()
    pattern[:, :, :3] = 0
    with ShardWriter(tmp_path / "flip" / "shard_0001.hdf5") as shard:
        shard.add(pattern)
    flips = ClipDataset(DataConfig(path=str(tmp_path / "flip"), frames=5, hflip=True))
    plain = flips[0]["video"]
    flipped = [not torch.equal(flips[SampleKey(0, s)]["video"], plain) for s in range(100)]
    assert 25 < sum(flipped) < 75
    assert torch.equal(flips[SampleKey(0, flipped.index(True))]["video"], plain.flip(-1))


def test_loader_workers_give_the_same_batches_as_the_main_process(numbered_h5):
    dataset = ClipDataset(DataConfig(path=str(numbered_h5), frames=2, frame_skip=1))
    keys = [SampleKey(i % 3, 1000 + i) for i in range(12)]

    def batches(workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=keys, num_workers=workers)
        return [(b["video"], b["index"], b["text"]) for b in loader]

    serial, parallel = batches(0), batches(2)
    for (v0, i0, t0), (v1, i1, t1) in zip(serial, parallel):
        assert torch.equal(v0, v1) and torch.equal(i0, i1) and t0 == t1
    assert serial[0][0].shape == (4, 2, 3, 8, 8) and isinstance(serial[0][2], list)


def test_whole_video_uniform_and_trilinear(numbered_h5):
    whole = VideoDataset(DataConfig(path=str(numbered_h5)))
    assert len(whole) == 4 and _frame_values(whole[1]) == list(range(10)) and whole[3]["text"] == "video of 3"
    assert _frame_values(VideoDataset(DataConfig(path=str(numbered_h5)), max_frames=4)[2]) == [0, 1, 2, 3]
    uniform = ClipDataset(DataConfig(path=str(numbered_h5), frames=5, clip_sampling="uniform"))
    assert _frame_values(uniform[1]) == [1, 3, 5, 7, 9]
    # Seer upstream: 4 frames from 8 by trilinear resampling = 50/50 blends of frames (0,1), (2,3), ...
    video = torch.arange(8, dtype=torch.float32)[:, None, None, None].expand(8, 3, 2, 2)
    assert trilinear_resample(video, 4)[:, 0, 0, 0].tolist() == [0.5, 2.5, 4.5, 6.5]
    # data.clip_sampling: trilinear blends the whole 10-frame video to 4 frames at (i + 1/2) * 10/4 - 1/2
    trilinear = ClipDataset(DataConfig(path=str(numbered_h5), frames=4, clip_sampling="trilinear"))
    blended = [(v + 1) * 127.5 for v in trilinear[1]["video"][:, 0, 0, 0].tolist()]  # frame numbers, blended
    assert blended == pytest.approx([0.75, 3.25, 5.75, 8.25], abs=1e-4)


def test_short_videos_pad_end_follows_seers_upstream_loader(tmp_path):
    """Upstream Seer reads a whole video into [-1, 1] (ToTensor, then 2x - 1) and casts it to F frames: a longer
    one blended by trilinear interpolation, one of F frames as it is, a shorter one followed by frames of zeros."""
    lengths, frames = (3, 8, 11), 8
    videos = [np.random.default_rng(length).integers(0, 256, (length, 4, 4, 3), dtype=np.uint8) for length in lengths]
    with ShardWriter(tmp_path / "h5" / "train" / "shard_0001.hdf5") as shard:
        for video in videos:
            shard.add(video)

    def upstream_clip(video: np.ndarray) -> torch.Tensor:  # (F, 3, H, W), by upstream's rule
        scaled = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255 * 2 - 1  # (N, 3, H, W)
        if len(video) > frames:
            return trilinear_resample(scaled, frames)
        return torch.cat([scaled, torch.zeros(frames - len(video), *scaled.shape[1:])])

    config = DataConfig(path=str(tmp_path / "h5"), frames=frames, clip_sampling="trilinear")
    padded = ClipDataset(dataclasses.replace(config, short_videos="pad_end"), uint8_frames=True)
    stretched = ClipDataset(config)
    for index, video in enumerate(videos):
        torch.testing.assert_close(padded[SampleKey(index, 0)]["video"], upstream_clip(video), atol=1e-6, rtol=0)
    assert torch.equal(padded[0]["video"][3:], torch.zeros(5, 3, 4, 4))  # zero in [-1, 1]: mid-grey, not black
    assert torch.equal(padded[2]["video"], stretched[2]["video"])  # longer videos blend either way
    assert not torch.allclose(stretched[0]["video"][3:], torch.zeros(5, 3, 4, 4))  # the default stretches instead
    with ShardWriter(tmp_path / "latents" / "train" / "shard_0001.hdf5", kind="latents") as shard:
        shard.add(np.zeros((3, 4, 2, 2), dtype=np.float16))
    with pytest.raises(ConfigError, match="short_videos: pad_end .* train on the frames"):
        ClipDataset(DataConfig(path=str(tmp_path / "latents"), clip_sampling="trilinear", short_videos="pad_end"))


def test_resize_on_read(numbered_h5):
    dataset = ClipDataset(DataConfig(path=str(numbered_h5), frames=2, image_size=4))
    assert dataset[0]["video"].shape == (2, 3, 4, 4)


def test_frames_stored_at_the_training_size_are_read_unchanged(tmp_path):
    """Frames resized beforehand, by any filter (BAIR's OpenCV bilinear 64 px, say), reach training byte for byte
    when data.image_size is their size or unset; only a downscale resizes, with Pillow bicubic."""
    frames = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)  # (T, H, W, 3)
    with ShardWriter(tmp_path / "h5" / "train" / "shard_0001.hdf5") as shard:
        shard.add(frames)

    def read(image_size: int | None) -> np.ndarray:  # (T, H, W, 3)
        config = DataConfig(path=str(tmp_path / "h5"), frames=4, image_size=image_size)
        return ClipDataset(config, uint8_frames=True)[0]["video"].permute(0, 2, 3, 1).numpy()

    assert np.array_equal(read(None), frames) and np.array_equal(read(8), frames)
    bicubic = [np.asarray(Image.fromarray(frame).resize((4, 4), Image.Resampling.BICUBIC)) for frame in frames]
    assert np.array_equal(read(4), np.stack(bicubic))


def test_latent_h5_items_are_the_stored_latents(tmp_path):
    latents = np.random.default_rng(0).standard_normal((9, 4, 2, 2)).astype(np.float16)
    with ShardWriter(
        tmp_path / "train" / "shard_0001.hdf5", kind="latents", compression=None, attrs={"scale": 0.18}
    ) as shard:
        shard.add(latents)
    dataset = ClipDataset(DataConfig(path=str(tmp_path), frames=3, frame_skip=1, image_size=64))
    item = dataset[SampleKey(0, 5)]
    start = int(np.flatnonzero((latents.astype(np.float32) == item["video"][0].numpy()).all(axis=(1, 2, 3)))[0])
    assert torch.equal(item["video"], torch.from_numpy(latents[start : start + 5 : 2].astype(np.float32)))
    assert dataset.is_latent and "text" not in item
    with pytest.raises(ConfigError, match="hflip"):
        ClipDataset(DataConfig(path=str(tmp_path), frames=3, hflip=True))


def test_video_files_and_frame_folders_with_captions_json_and_csv(tmp_path):
    videos = tmp_path / "videos"
    write_clip(videos / "train" / "a.mp4", frames=6, size=16)
    write_clip(videos / "train" / "b.mp4", frames=5, size=16, seed=1)
    (videos / "captions.json").write_text(json.dumps({"train/a.mp4": "push the cup", "b": "open the door"}))
    dataset = ClipDataset(DataConfig(path=str(videos), frames=4))
    assert [dataset[i]["text"] for i in range(2)] == ["push the cup", "open the door"]
    assert dataset[SampleKey(0, 3)]["video"].shape == (4, 3, 16, 16)

    frames = tmp_path / "frames"
    frame_folder(frames / "val" / "clip_a", numbered_video(5, 8), pattern="img_{:d}")  # not zero-padded
    frame_folder(frames / "val" / "clip_b", numbered_video(12, 8), pattern="img_{:d}")
    (frames / "captions.csv").write_text('video,caption\nval/clip_a,first caption\nclip_b,"second, with comma"\n')
    dataset = ClipDataset(DataConfig(path=str(frames), split="val", frames=12, clip_sampling="uniform"))
    assert dataset[0]["text"] == "first caption" and dataset[1]["text"] == "second, with comma"
    assert _frame_values(dataset[1]) == list(range(12))  # img_10 after img_9: natural order
    with pytest.raises(UsageError, match="no 'train' folder"):
        open_source(frames, "train")


def test_short_video_file_is_a_clear_error(tmp_path):
    write_clip(tmp_path / "train" / "short.mp4", frames=3, size=16)
    dataset = ClipDataset(DataConfig(path=str(tmp_path), frames=5))
    with pytest.raises(Exception, match="short.mp4.*shorter than the clip span 5"):
        dataset[SampleKey(0, 0)]


def test_ssv2_annotations(tmp_path):
    root = tmp_path / "sthv2"
    (root / "annotations").mkdir(parents=True)
    entries = [
        {"id": "101", "label": "Moving pen up", "template": "Moving [something] up", "placeholders": ["pen"]},
        {"id": "7", "template": "Putting [something] into [something]", "placeholders": ["a coin", "a jar"]},
    ]
    (root / "annotations" / "train.json").write_text(json.dumps(entries))
    (root / "annotations" / "validation.json").write_text(json.dumps(entries[:1]))
    frame_folder(root / "rawframes" / "101", numbered_video(13, 8), ext="jpg", pattern="img_{:05d}")
    # a video instead of frames; SSv2 ships .webm (Matroska), so H.264-in-Matroska under that name stands in for VP9
    write_clip(root / "20bn-something-something-v2" / "7.mkv", frames=4, size=16)
    (root / "20bn-something-something-v2" / "7.mkv").rename(root / "20bn-something-something-v2" / "7.webm")
    dataset = ClipDataset(DataConfig(path=str(root), frames=3, image_size=8))
    assert [dataset[i]["text"] for i in range(2)] == ["Moving pen up", "Putting a coin into a jar"]
    assert dataset[0]["video"].shape == (3, 3, 8, 8) and dataset[1]["video"].shape == (3, 3, 8, 8)
    assert len(ClipDataset(DataConfig(path=str(root), split="val", frames=3))) == 1
    assert ssv2_label({"template": "Holding [something]", "placeholders": []}) == "Holding [something]"
    with pytest.raises(UsageError, match="test.json"):
        open_source(root, "test")


def test_bridge_episodes_and_task_captions(tmp_path):
    root = tmp_path / "bridge"
    episodes = [f"put_spoon_in_pot_distractors/{k}" for k in range(4)] + ["open-drawer/0"]
    for episode in episodes:
        frame_folder(root / "rawframes" / episode, numbered_video(6, 8), ext="jpg", pattern="img_{:05d}")
    (root / "path_id_bridgedata.txt").write_text(json.dumps(episodes))
    train = ClipDataset(DataConfig(path=str(root), frames=2))
    val = ClipDataset(DataConfig(path=str(root), split="val", frames=2))
    assert (len(train), len(val)) == (4, 1)  # first 80 % train, the rest val, in list order
    assert train[0]["text"] == "put spoon in pot" and val[0]["text"] == "open drawer"
    assert bridge_caption("Take_the-lid_distractors") == "Take the lid"


def test_epic_kitchens_segments(tmp_path):
    root = tmp_path / "epic"
    folder = root / "EPIC-KITCHENS" / "P01" / "rgb_frames" / "P01_01"
    frame_folder(folder, numbered_video(20, 8), ext="jpg", pattern="frame_{:010d}")  # frame_0000000000.jpg ...
    (root / "epic-kitchens-100-annotations").mkdir()
    header = "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
    rows = [
        "P01_01_0,P01,P01_01,00:00:01.00,00:00:01.00,00:00:02.00,3,9,open cupboard,open,3,cupboard,3,['cupboard'],[3]\n",
        "P01_01_1,P01,P01_01,00:00:03.00,00:00:03.00,00:00:04.00,12,19,take plate,take,0,plate,2,['plate'],[2]\n",
    ]
    (root / "epic-kitchens-100-annotations" / "EPIC_100_train.csv").write_text(header + "".join(rows))
    dataset = ClipDataset(DataConfig(path=str(root), frames=7, clip_sampling="uniform"))
    assert [dataset[i]["text"] for i in range(2)] == ["open cupboard", "take plate"]
    assert dataset.source.num_frames(0) == 7 and dataset.source.num_frames(1) == 8  # start..stop inclusive
    values = _frame_values(dataset[0])
    assert values[0] == 3 and values[-1] == 9  # jpg: exact for flat frames
    with pytest.raises(UsageError, match="EPIC_100_validation.csv"):
        open_source(root, "val")


def test_natural_key_orders_numbers():
    assert sorted(["img_10", "img_9", "img_100", "img_1"], key=natural_key) == ["img_1", "img_9", "img_10", "img_100"]


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="data.path is empty"):
        ClipDataset(DataConfig())
    with pytest.raises(UsageError, match="not found"):
        ClipDataset(DataConfig(path=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="frames"):
        DataConfig(frames=0)


LABELLED_LENGTHS = (8, 9, 3, 7)


@pytest.fixture()
def labelled_h5(tmp_path):
    """Videos whose every pixel says where it comes from: channel 0 holds the video's number, channel 1 the frame's."""
    with ShardWriter(tmp_path / "h5" / "train" / "shard_0001.hdf5") as shard:
        for number, length in enumerate(LABELLED_LENGTHS):
            video = np.zeros((length, 4, 4, 3), dtype=np.uint8)
            video[..., 0], video[..., 1] = number, np.arange(length)[:, None, None]
            shard.add(video)
    return tmp_path / "h5"


def _labels(frames: torch.Tensor) -> list[tuple[int, int]]:
    """(video, frame) of each of (T, 3, H, W) frames in [-1, 1] of `labelled_h5`."""
    values = ((frames[:, :2, 0, 0] + 1) * 127.5).round().int()  # (T, 2)
    return [tuple(pair) for pair in values.tolist()]


def test_joint_images_are_single_frames_of_random_videos_of_the_whole_dataset(labelled_h5):
    plain = ClipDataset(DataConfig(path=str(labelled_h5), frames=4))
    longer = ClipDataset(DataConfig(path=str(labelled_h5), frames=7))  # next_clip's data: the clip's next 3 frames
    joint = ClipDataset(DataConfig(path=str(labelled_h5), frames=4, joint_images=3))
    assert len(joint) == len(plain) == 3  # the 3-frame video gives no clip, but its frames can be images
    drawn, continuations = set(), 0
    for seed in range(200):
        key = SampleKey(seed % 3, seed)
        item, clip = joint[key], plain[key]
        assert item["joint_images"] == 3 and "joint_images" not in clip
        assert torch.equal(item["video"][:4], clip["video"])  # the clip itself is what it is without the option
        assert torch.equal(item["video"], joint[key]["video"])  # the same key draws the same images
        images = _labels(item["video"][4:])
        assert all(0 <= frame < LABELLED_LENGTHS[video] for video, frame in images)
        drawn.update(images)
        continuations += images == _labels(longer[SampleKey(seed % 3, seed)]["video"][4:])
    # every frame of every video, the short one's included, is drawn; the next frames of the clip almost never
    assert drawn == {(video, frame) for video, length in enumerate(LABELLED_LENGTHS) for frame in range(length)}
    assert continuations <= 2
    assert not torch.equal(joint[SampleKey(0, 1)]["video"][4:], joint[SampleKey(0, 2)]["video"][4:])  # by seed
    assert torch.equal(joint[1]["video"], joint[1]["video"])  # an evaluation key draws the same images each time


def test_short_videos_are_padded_in_front_with_black_frames(tmp_path):
    with ShardWriter(tmp_path / "h5" / "train" / "shard_0001.hdf5") as shard:
        for length in (12, 5, 3):  # a whole clip, a short video, one shorter than half a clip
            shard.add(numbered_video(length))
    path = str(tmp_path / "h5")
    assert len(ClipDataset(DataConfig(path=path, frames=8))) == 1  # the short videos are left out
    padded = ClipDataset(DataConfig(path=path, frames=8, pad_short=True))
    assert len(padded) == 2
    assert padded[SampleKey(0, 0)]["padded_frames"] == 0
    starts = set()
    for seed in range(40):
        item = padded[SampleKey(1, seed)]
        assert item["padded_frames"] == 4 and torch.equal(item["video"][:4], torch.full((4, 3, 8, 8), -1.0))
        values = _frame_values(item)[4:]
        assert values == list(range(values[0], values[0] + 4))  # the video's own frames, last
        starts.add(values[0])
    assert starts == {0, 1}
    raw = ClipDataset(DataConfig(path=path, frames=8, pad_short=True), uint8_frames=True)
    assert torch.equal(
        raw.on_device({"video": raw[SampleKey(1, 3)]["video"]})["video"], padded[SampleKey(1, 3)]["video"]
    )


@pytest.mark.parametrize(
    "section, message",
    [
        ({"joint_images": -1}, "data.joint_images must be >= 0"),
        ({"joint_images": "random_videos"}, "'data.joint_images' expects int"),
        ({"pad_short": "front"}, "'data.pad_short' expects bool"),
        ({"pad_short": True, "frames": 5}, "data.pad_short needs an even data.frames"),
        ({"pad_short": True, "clip_sampling": "uniform"}, "data.pad_short pads random clips"),
        ({"short_videos": "pad"}, "'data.short_videos' expects one of"),
        ({"short_videos": "pad_end", "clip_sampling": "uniform"}, "data.short_videos: pad_end pads trilinear clips"),
    ],
)
def test_joint_images_and_padding_mistakes_are_one_line(section, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate(DataConfig, section, source="cfg.yaml", prefix="data.")
    assert "\n" not in str(info.value)


def test_uint8_frames_then_on_device_equal_the_float_items(numbered_h5):
    cfg = DataConfig(path=str(numbered_h5), frames=4, frame_skip=1, image_size=32, hflip=True)
    floats, raw = ClipDataset(cfg), ClipDataset(cfg, uint8_frames=True)
    keys = [SampleKey(i % len(floats), 100 + i) for i in range(6)]
    expected = torch.stack([floats[k]["video"] for k in keys])  # (B, T, C, H, W) float32
    batch = torch.utils.data.default_collate([raw[k] for k in keys])
    assert batch["video"].dtype == torch.uint8
    converted = raw.on_device(batch)["video"]
    assert converted.dtype == torch.float32
    torch.testing.assert_close(converted, expected, atol=1e-6, rtol=0)
