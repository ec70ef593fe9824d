"""convert-h5 --dataset ucf101 / sky: the released folder layouts, split as the datasets define it."""

from __future__ import annotations

import av
import numpy as np
import pytest
from data_helpers import frame_folder, moving_clip

from vpt.data.h5 import VideoH5
from vpt.data.sources import frame_files
from vpt.data.video import read_image

UCF_TRAIN = {
    1: ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Biking/v_Biking_g09_c02.avi"],
    2: ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "Biking/v_Biking_g01_c01.avi"],
}
UCF_TEST = {
    1: ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "Biking/v_Biking_g01_c01.avi"],
    2: ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Biking/v_Biking_g09_c02.avi"],
}
CLASSES = {"ApplyEyeMakeup": 1, "Biking": 2}


def write_avi(path, frames: np.ndarray) -> None:
    """A real AVI (MPEG-4 part 2), the container UCF-101 ships in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_fold_files(lists, folds) -> None:
    """ucfTrainTestlist as released: CRLF line ends, train lines carry the class number, test lines do not."""
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_bytes("".join(f"{k} {c}\r\n" for c, k in CLASSES.items()).encode())
    for fold in folds:
        train = "".join(f"{v} {CLASSES[v.split('/')[0]]}\r\n" for v in UCF_TRAIN[fold])
        (lists / f"trainlist{fold:02d}.txt").write_bytes(train.encode())
        (lists / f"testlist{fold:02d}.txt").write_bytes("".join(f"{v}\r\n" for v in UCF_TEST[fold]).encode())


@pytest.fixture()
def ucf(tmp_path):
    """root/UCF-101/<Class>/*.avi (two classes, four videos of 5-8 frames) + root/ucfTrainTestlist/ (folds 1, 2)."""
    root = tmp_path / "ucf"
    for seed, name in enumerate(sorted(set(UCF_TRAIN[1] + UCF_TEST[1]))):
        write_avi(root / "UCF-101" / name, moving_clip(5 + seed, 32, 32, seed))
    write_fold_files(root / "ucfTrainTestlist", (1, 2))
    return root


def _split(out, split) -> dict[str, str]:
    data = VideoH5(out / split)
    return {data.name(i): data.text(i) for i in range(len(data))}


def test_ucf101_splits_are_the_fold_files_and_no_test_video_is_trained_on(ucf, tmp_path, invoke):
    for fold in (1, 2):
        out = tmp_path / f"fold{fold}"
        result = invoke(
            "convert-h5",
            "--data-dir",
            ucf,
            "--out-dir",
            out,
            "--dataset",
            "ucf101",
            "--fold",
            fold,
            "--image-size",
            "16",
            "--workers",
            "1",
        )
        assert result.exit_code == 0, result.output
        train, test = _split(out, "train"), _split(out, "test")
        assert sorted(train) == UCF_TRAIN[fold] and sorted(test) == UCF_TEST[fold]
        assert not set(train) & set(test)  # upstream PVDM evaluated on its training loader
        assert {**train, **test} == {
            name: name.split("/")[0] for name in UCF_TRAIN[fold] + UCF_TEST[fold]
        }  # class as caption
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["test", "train"]  # no val split
    frames = VideoH5(tmp_path / "fold1" / "test")
    assert frames.num_frames(0) == 5 and frames.read(0).shape == (5, 16, 16, 3)


def test_ucf101_accepts_the_fold_files_inside_the_class_folder_root(ucf, tmp_path, invoke):
    (ucf / "ucfTrainTestlist").rename(ucf / "UCF-101" / "ucfTrainTestlist")
    out = tmp_path / "out"
    result = invoke(
        "convert-h5", "--data-dir", ucf / "UCF-101", "--out-dir", out, "--dataset", "ucf101", "--image-size", "16"
    )
    assert result.exit_code == 0, result.output
    assert sorted(_split(out, "test")) == UCF_TEST[1]


def _one_line_error(result, *fragments) -> None:
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
    assert all(f in result.output for f in fragments), result.output


def test_ucf101_mistakes_are_one_line(ucf, tmp_path, invoke):
    def convert(*extra):
        return invoke("convert-h5", "--data-dir", ucf, "--out-dir", tmp_path / "out", "--dataset", "ucf101", *extra)

    _one_line_error(convert("--fold", "4"), "--fold 4", "folds 1, 2 and 3")
    _one_line_error(convert("--fold", "3"), "trainlist03.txt", "fold file not found")
    (ucf / "UCF-101" / "Biking" / "v_Biking_g01_c01.avi").unlink()
    _one_line_error(convert(), "testlist01.txt", "1 of 2", "Biking/v_Biking_g01_c01.avi")
    _one_line_error(convert("--splits", "0.5,0.25,0.25"), "--splits")
    assert not (tmp_path / "out").exists()


@pytest.fixture()
def sky(tmp_path):
    """root/sky_train/<video>/<clip>/*.jpg (three clips of two videos) and root/sky_test (one clip)."""
    root = tmp_path / "sky"
    clips = {
        "sky_train/07U1fSrk9oI/07U1fSrk9oI_1": 4,
        "sky_train/07U1fSrk9oI/07U1fSrk9oI_2": 3,
        "sky_train/0Bm3HxYsHnY/0Bm3HxYsHnY_1": 5,
        "sky_test/1Bx0sF2dyW8/1Bx0sF2dyW8_1": 4,
    }
    for seed, (clip, frames) in enumerate(clips.items()):
        frame_folder(
            root / clip,
            moving_clip(frames, 16, 16, seed),
            ext="jpg",
            pattern=clip.rsplit("/", 1)[-1] + "_frames_{:08d}",
        )
    return root


def test_sky_clip_folders_become_videos_of_their_split(sky, tmp_path, invoke):
    out = tmp_path / "out"
    result = invoke(
        "convert-h5", "--data-dir", sky, "--out-dir", out, "--dataset", "sky", "--image-size", "16", "--workers", "1"
    )
    assert result.exit_code == 0, result.output
    train, test = VideoH5(out / "train"), VideoH5(out / "test")
    assert {train.name(i): train.num_frames(i) for i in range(len(train))} == {
        "07U1fSrk9oI/07U1fSrk9oI_1": 4,
        "07U1fSrk9oI/07U1fSrk9oI_2": 3,
        "0Bm3HxYsHnY/0Bm3HxYsHnY_1": 5,
    }
    assert [test.name(0), test.num_frames(0)] == ["1Bx0sF2dyW8/1Bx0sF2dyW8_1", 4]
    # frames are the JPEGs in order (JPEG loses a little, so compare to the decoded files)
    expected = np.stack([read_image(f) for f in frame_files(sky / "sky_test" / "1Bx0sF2dyW8" / "1Bx0sF2dyW8_1")])
    assert np.array_equal(test.read(0), expected)

    for split in ("train", "test"):  # the folder names upstream PVDM's loader uses
        (sky / f"sky_{split}").rename(sky / split)
    again = invoke(
        "convert-h5", "--data-dir", sky, "--out-dir", tmp_path / "again", "--dataset", "sky", "--image-size", "16"
    )
    assert again.exit_code == 0, again.output
    assert VideoH5(tmp_path / "again" / "test").name(0) == "1Bx0sF2dyW8/1Bx0sF2dyW8_1"


def test_sky_without_its_folders_is_one_line(tmp_path, invoke):
    (tmp_path / "empty").mkdir()
    result = invoke("convert-h5", "--data-dir", tmp_path / "empty", "--out-dir", tmp_path / "out", "--dataset", "sky")
    _one_line_error(result, "sky_train")
    result = invoke("convert-h5", "--data-dir", tmp_path / "empty", "--out-dir", tmp_path / "out", "--fold", "2")
    _one_line_error(result, "--fold is for --dataset ucf101")
