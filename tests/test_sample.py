"""`vpt train` (generic) and `vpt sample` on a tiny RIVER run: contexts from images, a video, an HDF5
index and a published checkpoint; the settings record; errors that name the backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vpt.cli import app
from vpt.visualize import CONTEXT_COLOR, LABEL_HEIGHT, TRUTH_COLOR, label_strip

SIZE, FRAMES = 16, 8
runner = CliRunner()


def _invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    """Built-in shapes at 16 px -> HDF5 -> `vpt train river` on 2x2 pixel patches for 3 steps."""
    from vpt.data.convert import convert_h5
    from vpt.data.shapes import make_shapes

    root = tmp_path_factory.mktemp("sample")
    make_shapes(root / "shapes", num_videos=20, frames=FRAMES, size=SIZE, workers=1)
    convert_h5(root / "shapes", root / "h5", image_size=SIZE)
    config = root / "river.yaml"
    config.write_text(
        "backend: river\n"
        "model: {autoencoder: 'pixels:2', latent_channels: 12, inner_dim: 32, depth: 1, mid_depth: 1, heads: 4,"
        " context_frames: 2, sampler: euler, steps: 2}\n"
        f"data: {{frames: {FRAMES}}}\n"
        "train: {max_steps: 3, batch_size: 4, log_every: 1, checkpoint_every: 3, val_every: 3, sample_every: 3}\n"
    )
    result = _invoke("train", "river", "--config", config, "--data", root / "h5", "--run", root / "runs" / "tiny")
    assert result.exit_code == 0, result.output
    return {"root": root, "run": root / "runs" / "tiny", "h5": root / "h5", "shapes": root / "shapes"}


def test_train_writes_checkpoint_metrics_and_samples(tiny_run):
    run = tiny_run["run"]
    assert (run / "checkpoints" / "step_000003" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r and np.isfinite(r["val_loss"]) for r in records)
    strip = np.asarray(Image.open(run / "samples" / "step_000003.png"))
    assert strip.shape[0] > SIZE and strip.shape[1] >= FRAMES * SIZE  # truth/prediction rows, all frames
    assert (run / "samples" / "step_000003.gif").is_file()


def test_sample_from_hdf5_index_records_settings(tiny_run, tmp_path):
    out = tmp_path / "pred.png"
    result = _invoke(
        "sample",
        "--run",
        tiny_run["run"],
        "--data",
        tiny_run["h5"],
        "--index",
        1,
        "--frames",
        3,
        "--num-samples",
        2,
        "--seed",
        7,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(out))
    # truth row + 2 samples, each 2 context + 3 predicted frames, enlarged 16x (to 256 px), 2 px gaps, a label
    # strip above each row
    tile, label = 16 * SIZE, LABEL_HEIGHT
    assert image.shape == (3 * (label + tile) + 2 * 2, 5 * tile + 4 * 2, 3)
    truth_top, prediction_top = label, 2 * (label + tile + 2) + label  # first pixel rows of frames
    assert tuple(image[truth_top, 0]) == CONTEXT_COLOR  # context frames carry the red border,
    assert tuple(image[truth_top, 2 * (tile + 2)]) == TRUTH_COLOR  # the true future a green one,
    assert tuple(image[prediction_top, 2 * (tile + 2)]) not in (CONTEXT_COLOR, TRUTH_COLOR)  # predictions none
    for top, text in ((0, "truth"), (label + tile + 2, "prediction 1")):
        assert np.array_equal(image[top : top + label], label_strip(text, image.shape[1]))
        assert (image[top : top + label] < 100).all(axis=-1).sum() > 20  # dark text pixels on the white strip
    record = json.loads((tmp_path / "pred.png.json").read_text())
    assert record["legend"]["videos"] == ["truth", "prediction 1", "prediction 2"]
    assert record["legend"]["scale"] == 16 and set(record["legend"]["borders"]) == {"red", "green", "none"}
    assert record["backend"] == "river" and record["context"]["index"] == 1 and record["context"]["split"] == "test"
    assert record["context_frames"] == 2 and record["frames"] == 3 and record["seed"] == 7
    assert record["model_config"]["sampler"] == "euler" and record["run"] == str(tiny_run["run"].resolve())

    again = tmp_path / "again.png"
    assert (
        _invoke(
            "sample",
            "--run",
            tiny_run["run"],
            "--data",
            tiny_run["h5"],
            "--index",
            1,
            "--frames",
            3,
            "--num-samples",
            2,
            "--seed",
            7,
            "--out",
            again,
        ).exit_code
        == 0
    )
    assert np.array_equal(np.asarray(Image.open(again)), image)  # the record is enough to redo it


def test_sample_compile_compiles_the_sampler_and_changes_no_pixel(tiny_run, tmp_path, monkeypatch):
    """`--compile` reaches RIVER's sampler (dynamo's eager backend here: inductor takes minutes on a CPU)."""
    import torch

    import vpt.models.river as river

    modes = []
    monkeypatch.setattr(
        river,
        "compile_network",
        lambda network, mode: modes.append(mode) or torch.compile(network, backend="eager", dynamic=False),
    )
    args = ("sample", "--run", tiny_run["run"], "--data", tiny_run["h5"], "--index", 0, "--frames", 2, "--seed", 3)
    assert _invoke(*args, "--out", tmp_path / "eager.png").exit_code == 0
    result = _invoke(*args, "--compile", "--out", tmp_path / "compiled.png")
    assert result.exit_code == 0, result.output
    assert modes == ["default"]
    assert json.loads((tmp_path / "compiled.png.json").read_text())["model_config"]["compile_sampler"] is True
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "compiled.png")), np.asarray(Image.open(tmp_path / "eager.png"))
    )


def test_sample_view_height_0_writes_the_models_pixels_unlabelled(tiny_run, tmp_path):
    from vpt.data.video import read_video

    common = ("sample", "--run", tiny_run["run"], "--data", tiny_run["h5"], "--frames", 3, "--seed", 1)
    assert _invoke(*common, "--view-height", 0, "--out", tmp_path / "raw.png").exit_code == 0
    raw = np.asarray(Image.open(tmp_path / "raw.png"))
    assert raw.shape == (2 * SIZE + 2, 5 * SIZE + 4 * 2, 3)  # truth + 1 sample at 16 px, no label strips
    assert json.loads((tmp_path / "raw.png.json").read_text())["legend"]["labelled"] is False
    assert _invoke(*common, "--view-height", 40, "--out", tmp_path / "big.png").exit_code == 0
    big = np.asarray(Image.open(tmp_path / "big.png"))
    # 40 px asked: a whole factor, 3x (48 px); every model pixel a 3x3 block of the same colour
    assert big.shape == (2 * (LABEL_HEIGHT + 3 * SIZE) + 2, 5 * 3 * SIZE + 4 * 2, 3)
    prediction = big[-3 * SIZE :, 4 * (3 * SIZE + 2) :]  # the last predicted frame, no border drawn on it
    assert np.array_equal(prediction, raw[-SIZE:, 4 * (SIZE + 2) :].repeat(3, axis=0).repeat(3, axis=1))

    assert _invoke(*common, "--out", tmp_path / "pred.mp4").exit_code == 0
    video = read_video(tmp_path / "pred.mp4")  # truth and the sample side by side, 256 px frames
    assert video.shape == (5, LABEL_HEIGHT + 16 * SIZE, 2 * 16 * SIZE + 2, 3)


def test_sample_from_images_and_a_video(tiny_run, tmp_path):
    frames = [tiny_run["shapes"] / "test" / "00000.mp4"]
    from vpt.data.video import read_video

    clip = read_video(frames[0])
    images = []
    for i in range(2):
        path = tmp_path / f"frame{i}.png"
        Image.fromarray(clip[i]).save(path)
        images.append(path)
    out = tmp_path / "from_images.gif"
    result = _invoke(
        "sample", "--run", tiny_run["run"], "--image", images[0], "--image", images[1], "--frames", 2, "--out", out
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as gif:
        assert gif.n_frames == 4 and gif.size == (16 * SIZE, LABEL_HEIGHT + 16 * SIZE)  # enlarged, labelled
    assert json.loads((tmp_path / "from_images.gif.json").read_text())["context"]["images"] == [
        str(p.resolve()) for p in images
    ]

    out = tmp_path / "from_video.mp4"
    result = _invoke(
        "sample",
        "--run",
        tiny_run["run"],
        "--video",
        frames[0],
        "--context-frames",
        3,
        "--frames",
        2,
        "--option",
        "sampler=heun",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert len(read_video(out)) == 5
    record = json.loads((tmp_path / "from_video.mp4.json").read_text())
    assert record["context_frames"] == 3 and record["options"] == {"sampler": "heun"}


def test_sample_uses_newest_run_and_says_so(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_run["root"])
    result = _invoke("sample", "--data", "h5", "--frames", 1, "--out", tmp_path / "newest.png")
    assert result.exit_code == 0, result.output
    assert "newest run" in result.output and "tiny" in result.output


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["--prompt", "go left"], "backend 'river' takes no text prompt", 2),
        (["--guidance-scale", "3"], "backend 'river' has no guidance scale", 2),
        (
            ["--option", "eta=1"],
            "backend 'river' has no such sampling option (it has: past_horizon, sampler, warm_start)",
            2,
        ),
        (["--video", "x.mp4"], "exactly one of --image FILE..., --video FILE or --data DIR --index I", 2),
        (["--out", "x.avi"], "use a .mp4, .gif or .png file", 2),
        (["--index", "999"], "--index 999 is out of range", 2),
    ],
)
def test_sample_errors_are_one_line(tiny_run, tmp_path, capsys, args, message, code):
    from vpt.cli import main

    argv = [
        "sample",
        "--run",
        str(tiny_run["run"]),
        "--data",
        str(tiny_run["h5"]),
        "--out",
        str(tmp_path / "x.png"),
        *args,
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code
    assert message in " ".join(err.split()) and "Traceback" not in err


@pytest.mark.parametrize(
    "config_text, message",
    [
        ("backend: seer\n", "'backend' expects one of ['river'], got 'seer'"),
        (
            "backend: river\nmodel: {inner_dim: 32, depth: 1, mid_depth: 1}\ndata: {frames: 4}\n",
            "needs a frozen autoencoder: pass --ae",
        ),
    ],
    ids=["config of another backend", "frames without an autoencoder"],
)
def test_train_config_mistakes_exit_2(tiny_run, tmp_path, invoke, config_text, message):
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    code, output = invoke("train", "river", "--config", config, "--data", tiny_run["h5"], "--run", tmp_path / "run")
    assert code == 2
    assert message in " ".join(output.split()) and "Traceback" not in output


def test_sample_from_published_checkpoint(tmp_path):
    """`vpt sample --checkpoint model.pth` recognises RIVER's upstream file, says which release it assumes,
    resizes the input to that release's frame size and predicts with its protocol."""
    from test_river import _published_checkpoint

    checkpoint = _published_checkpoint(tmp_path / "model.pth")
    image = tmp_path / "ctx.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
    result = _invoke(
        "sample",
        "--checkpoint",
        checkpoint,
        "--image",
        image,
        "--frames",
        2,
        "--steps",
        3,
        "--out",
        tmp_path / "published.png",
    )
    assert result.exit_code == 0, result.output
    assert "RIVER bair64 (64 px frames, 1 -> 15 frames) assumed" in " ".join(result.output.split())
    assert "--release kth" in result.output
    record = json.loads((tmp_path / "published.png.json").read_text())
    assert record["backend"] == "river" and record["checkpoint"] == str(checkpoint.resolve())
    assert record["image_size"] == 64 and record["protocol"]["predicted_frames"] == 15  # a 32 px input is resized
    assert np.asarray(Image.open(tmp_path / "published.png")).shape == (LABEL_HEIGHT + 256, 3 * 256 + 2 * 2, 3)

    kth = _invoke(
        "sample",
        "--checkpoint",
        checkpoint,
        "--release",
        "kth",
        "--image",
        image,
        "--frames",
        1,
        "--steps",
        2,
        "--out",
        tmp_path / "kth.png",
    )
    assert kth.exit_code == 0, kth.output
    assert json.loads((tmp_path / "kth.png.json").read_text())["protocol"]["context_frames"] == 10
    wrong = _invoke(
        "sample", "--checkpoint", checkpoint, "--preset", "clevrer", "--image", image, "--out", tmp_path / "x.png"
    )
    assert "does not fit" in str(wrong.exception)  # a UsageError: one line, exit 2 through `vpt`


def test_predict_reports_every_frame_it_makes(tiny_run):
    """`vpt sample`'s bar ticks per predicted frame: a backend reports each frame of each sample."""
    import torch

    from vpt.models.backend import Backend

    model = Backend.from_run(tiny_run["run"])
    reported = []
    with model.reporting_frames(reported.append):
        model.predict(torch.zeros(3, 2, 3, SIZE, SIZE), 4, generator=torch.Generator().manual_seed(0))
    assert reported == [3, 3, 3, 3]  # one call per frame, counting the 3 samples of the batch
    model.predict(torch.zeros(1, 2, 3, SIZE, SIZE), 1)  # outside the context nothing is called
    assert len(reported) == 4


def test_requests_beyond_the_training_range_are_flagged(tiny_run, tmp_path, capsys):
    """A rollout whose context distances exceed the training clips says so once; within range it is quiet."""
    import torch

    from vpt.models.backend import Backend

    model = Backend.from_run(tiny_run["run"])
    trained = model.trained_frames
    assert trained == FRAMES  # the run's data.frames
    capsys.readouterr()
    model.predict(torch.zeros(1, 2, 3, SIZE, SIZE), trained - 2)  # distances up to T - 2: trained range
    assert "extrapolates" not in capsys.readouterr().err
    model.predict(torch.zeros(1, 2, 3, SIZE, SIZE), trained + 3)
    assert f"--option past_horizon={trained - 1}" in " ".join(capsys.readouterr().err.split())
    model.predict(torch.zeros(1, 2, 3, SIZE, SIZE), trained + 3, past_horizon=trained - 1)
    assert "extrapolates" not in capsys.readouterr().err


def test_default_precision_is_fp32_for_published_weights_and_the_device_s_own_for_a_run(
    tiny_run, tmp_path, monkeypatch
):
    """On a device with bf16 units (VPT_BF16=1 says so, as an AMX CPU would), a run's weights sample in bf16 by
    default and published weights in fp32, as upstream samples them; --precision overrides either, and the
    .json records what ran."""
    from test_river import _published_checkpoint

    monkeypatch.setenv("VPT_BF16", "1")
    image = tmp_path / "ctx.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(image)
    checkpoint = _published_checkpoint(tmp_path / "model.pth")
    cases = (
        (["--run", tiny_run["run"]], "bf16"),
        (["--checkpoint", checkpoint, "--steps", 2], "fp32"),
        (["--checkpoint", checkpoint, "--steps", 2, "--precision", "bf16"], "bf16"),
    )
    for number, (source, expected) in enumerate(cases):
        out = tmp_path / f"p{number}.png"
        result = _invoke("sample", *source, "--image", image, "--frames", 1, "--view-height", 0, "--out", out)
        assert result.exit_code == 0, result.output
        assert json.loads(out.with_name(out.name + ".json").read_text())["precision"] == expected, source
