"""Which checkpoint `vpt sample` and `vpt eval-fvd` predict with (`--step N`, a run's step folder), the
clips `eval-fvd --save-samples` writes, and the warnings on scores that rest on too few samples."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from metrics_helpers import moving_videos
from PIL import Image
from test_metrics_eval_fvd import CopyLastBackend, _write_h5, _write_run

from vpt.models.registry import BACKENDS
from vpt.visualize import CONTEXT_COLOR, LABEL_HEIGHT, TRUTH_COLOR


def _add_checkpoint(run_dir, step: int, gain: float) -> None:
    from safetensors.torch import save_file

    from vpt.runs import Run

    run = Run(run_dir)
    pending = run.pending_dir(step)
    pending.mkdir(parents=True)
    save_file({"gain": torch.tensor(gain)}, pending / "model.safetensors")
    run.commit_checkpoint(step, keep_last=10)


@pytest.fixture()
def two_steps(tmp_path, monkeypatch):
    """A copy-last run with step 1 (gain 1: predicts the context frame) and step 2 (gain 0.5, the latest)."""
    monkeypatch.setitem(BACKENDS, CopyLastBackend.name, f"test_metrics_eval_fvd:{CopyLastBackend.__name__}")
    run = _write_run(tmp_path / "run", noise=0.0)
    _add_checkpoint(run, 2, 0.5)
    return run


def _sample(invoke, tmp_path, name: str, *args):
    image = tmp_path / "context.png"
    if not image.exists():
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(image)
    out = tmp_path / f"{name}.png"
    code, output = invoke("sample", *args, "--image", image, "--frames", 2, "--view-height", 0, "--out", out)
    assert code == 0, output
    return np.asarray(Image.open(out)), json.loads(out.with_name(out.name + ".json").read_text())


def test_sample_step_picks_that_checkpoint(two_steps, tmp_path, invoke):
    from vpt.data.datasets import frames_to_tensor
    from vpt.data.video import read_image, to_uint8_frames

    step_1, record_1 = _sample(invoke, tmp_path, "step1", "--run", two_steps, "--step", 1)
    latest, record_latest = _sample(invoke, tmp_path, "latest", "--run", two_steps)
    folder, record_folder = _sample(invoke, tmp_path, "folder", "--run", two_steps / "checkpoints" / "step_000001")
    as_checkpoint, _ = _sample(
        invoke, tmp_path, "as_checkpoint", "--checkpoint", two_steps / "checkpoints" / "step_000001"
    )
    step_2, record_2 = _sample(invoke, tmp_path, "step2", "--run", two_steps, "--step", 2)

    context = frames_to_tensor(read_image(tmp_path / "context.png", None, "squash")[None])  # (1, 3, 8, 8)
    last_predicted = lambda image: image[1:-1, -7:-1]  # inside the 1 px border the context frames get  # noqa: E731
    assert np.array_equal(last_predicted(step_1), to_uint8_frames(context)[0, 1:-1, 1:-1])  # gain 1
    assert np.array_equal(last_predicted(step_2), to_uint8_frames(context * 0.5)[0, 1:-1, 1:-1])  # gain 0.5
    assert np.array_equal(folder, step_1) and np.array_equal(as_checkpoint, step_1)
    assert np.array_equal(latest, step_2) and not np.array_equal(step_1, step_2)
    assert record_1["step"] == 1 and record_folder["step"] == 1 and record_2["step"] == record_latest["step"] == 2
    assert record_1["checkpoint_dir"].endswith("step_000001") and record_folder["run"] == str(two_steps.resolve())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--step", "5"], "has no checkpoint of step 5 (available steps: 1, 2)"),
        (["--step", "2", "--checkpoint", "x.pth"], "give either --run or --checkpoint"),
        (["--step", "7"], "is a symlink; vpt reads a run's weights only from inside it"),
        (["--folder", "step_000007"], "is a symlink; vpt reads a run's weights only from inside it"),
        (["--folder", "step_000001", "--step", "2"], "names the checkpoint of step 1 and --step says 2: give one"),
    ],
    ids=["missing step", "with --checkpoint", "symlinked step", "symlinked folder", "two steps"],
)
def test_checkpoint_choice_mistakes_are_one_line(two_steps, tmp_path, invoke, args, message):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes((two_steps / "checkpoints/step_000001/model.safetensors").read_bytes())
    os.symlink(outside, two_steps / "checkpoints" / "step_000007")
    run = str(two_steps)
    if args[0] == "--folder":
        run, args = str(two_steps / "checkpoints" / args[1]), args[2:]
    for command, out in ((["sample", "--image", "x.png"], "x.png"), (["eval-fvd", "--data", str(tmp_path)], "x.json")):
        code, output = invoke(*command, "--run", run, *args, "--out", tmp_path / out)
        assert code == 2 and message in " ".join(output.split()), output
        assert "Traceback" not in output and not (tmp_path / out).exists()


def _evaluate(invoke, out, *args):
    code, output = invoke("eval-fvd", *args, "--pred-frames", 8, "--no-fvd", "--out", out)
    assert code == 0, output
    return json.loads(out.read_text()), " ".join(output.split())


def test_eval_fvd_step_scores_that_checkpoint_and_warns_on_one_sequence(two_steps, tmp_path, invoke, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_cache"))  # no AlexNet weights: LPIPS is skipped
    monkeypatch.delenv("VPT_LPIPS_ALEX", raising=False)
    data = _write_h5(tmp_path / "data", moving_videos(3, 9, 16, seed=0))
    common = ("--data", data, "--context-frames", 1)
    step_1, _ = _evaluate(invoke, tmp_path / "step1.json", "--run", two_steps, "--step", 1, *common)
    # the cache beside --out holds step 1's batches: the folder form must find them, the latest must not
    step_folder = two_steps / "checkpoints" / "step_000001"  # as --checkpoint: a run's folder, not published weights
    folder, _ = _evaluate(invoke, tmp_path / "folder.json", "--checkpoint", step_folder, *common)
    latest, _ = _evaluate(invoke, tmp_path / "latest.json", "--run", two_steps, *common)
    assert folder["psnr"] == step_1["psnr"] and latest["psnr"] != step_1["psnr"]
    assert step_1["protocol"]["step"] == folder["protocol"]["step"] == 1 and latest["protocol"]["step"] == 2
    assert folder["protocol"]["mode"] == "run" and folder["protocol"]["run"] == str(two_steps.resolve())
    assert step_1["details"]["psnr"]["ci95"] is not None and step_1["warnings"] == []

    one, output = _evaluate(invoke, tmp_path / "one.json", "--run", two_steps, "--max-videos", 2, *common)
    assert one["protocol"]["counts"]["sequences"] == 2 and one["warnings"] == []
    data_1 = _write_h5(tmp_path / "data1", moving_videos(1, 9, 16, seed=0))
    one, output = _evaluate(invoke, tmp_path / "one.json", "--run", two_steps, "--data", data_1, "--context-frames", 1)
    assert one["details"]["psnr"]["ci95"] is None and one["details"]["psnr"]["std"] is None
    assert len(one["warnings"]) == 1 and "PSNR/SSIM rest on one test sequence" in one["warnings"][0]
    assert "no 95% confidence interval" in output and "(no CI)" in output


def test_few_clips_warning_names_the_counts_and_a_meaningful_one():
    from vpt.metrics.evaluate import MEANINGFUL_FVD_CLIPS, few_clips_warning

    text = few_clips_warning(16, 32, 400)
    assert "16 real and 32 generated clips" in text and "rank-deficient" in text and "256" in text
    assert "2048" in text and "\n" not in text
    assert few_clips_warning(MEANINGFUL_FVD_CLIPS, 100 * MEANINGFUL_FVD_CLIPS, 400) is None
    assert few_clips_warning(MEANINGFUL_FVD_CLIPS - 1, 10_000, 400) is not None


def test_eval_fvd_save_samples_writes_the_scored_clips_labelled(two_steps, tmp_path, invoke, monkeypatch):
    from vpt.data.video import read_video

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_cache"))
    monkeypatch.delenv("VPT_LPIPS_ALEX", raising=False)
    videos = moving_videos(5, 9, 16, seed=1)
    data = _write_h5(tmp_path / "data", videos)
    out = tmp_path / "m.json"
    report, _ = _evaluate(
        invoke, out, "--run", two_steps, "--step", 1, "--data", data, "--context-frames", 1, "--batch-size", 2,
        "--samples", 2, "--save-samples", 3, "--view-height", 128,
    )  # fmt: skip
    files = sorted((tmp_path / "m_samples").iterdir())
    assert [f.name for f in files] == ["clip_00000.mp4", "clip_00001.mp4", "clip_00002.mp4"]
    saved = report["saved_samples"]
    assert [c["file"] for c in saved["clips"]] == [str(f.resolve()) for f in files]
    assert saved["legend"]["videos"] == ["truth", "prediction 1", "prediction 2"] and saved["legend"]["scale"] == 8
    video = read_video(files[2])  # truth | 2 samples, each 16 px enlarged 8x, under a label strip
    assert video.shape == (9, LABEL_HEIGHT + 128, 3 * 128 + 2 * 2, 3)
    frame_top = LABEL_HEIGHT + 1  # inside the 4 px border (H.264 blurs its edge a little)
    assert np.abs(video[0, frame_top, 1].astype(int) - CONTEXT_COLOR).max() < 40  # first frame: context
    assert np.abs(video[-1, frame_top, 1].astype(int) - TRUTH_COLOR).max() < 40  # truth after it: green
    assert (video[0, 2 : LABEL_HEIGHT - 2, :60] < 100).all(axis=-1).any()  # dark text on the white label strip
    # gain 1 predicts the context frame: the samples' last frame is video 2's first frame, enlarged
    expected = videos[2, 0].repeat(8, axis=0).repeat(8, axis=1).astype(int)[8:-8, 8:-8]
    shown = video[-1, LABEL_HEIGHT + 8 : -8, 130 + 8 : 130 + 120].astype(int)
    assert np.abs(shown - expected).mean() < 12
