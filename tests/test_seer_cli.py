"""`vpt train seer` + `vpt sample --image ... --prompt ...` end to end on the built-in shapes data (CPU, toy size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TINY = Path(__file__).resolve().parents[1] / "configs" / "seer" / "tiny.yaml"
# configs/seer/tiny.yaml shrunk further so the whole round trip stays within seconds.
SMALL = [
    "--set",
    "model.frames=3",
    "--set",
    "data.frames=3",
    "--set",
    "data.image_size=16",
    "--set",
    "model.unet.block_out_channels=[32,32,64]",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "model.sampler.steps=2",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from vpt.data.shapes import make_shapes

    out = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes(out, num_videos=10, frames=8, size=32, workers=1)
    return out


def test_train_tiny_then_sample_from_an_image_with_a_prompt(tmp_path, invoke, shapes):
    from PIL import Image

    from vpt.models.backend import Backend

    run = tmp_path / "run"
    code, output = invoke("train", "seer", "--config", TINY, "--data", shapes, "--run", run, "--max-steps", 2, *SMALL)
    assert code == 0, output
    assert (run / "checkpoints" / "step_000002" / "model.safetensors").is_file()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    assert f'vpt sample --run {run} --image FRAME.png --prompt "INSTRUCTION"' in " ".join(
        output.split()
    )  # the hint fits text models

    book = tmp_path / "book.jpg"
    Image.new("RGB", (48, 40), (200, 120, 40)).save(book)
    out = tmp_path / "pred.gif"
    code, output = invoke(
        "sample",
        "--run",
        run,
        "--image",
        book,
        "--prompt",
        "close book",
        "--guidance-scale",
        2.5,
        "--num-samples",
        2,
        "--seed",
        3,
        "--out",
        out,
    )
    assert code == 0, output
    record = json.loads(out.with_name("pred.gif.json").read_text())
    assert (record["prompt"], record["guidance_scale"], record["frames"], record["image_size"]) == (
        "close book",
        2.5,
        2,
        16,
    )
    with Image.open(out) as gif:
        assert gif.n_frames == 3  # the image + F - R = 2 predicted frames

    # The run rebuilds the trained model: its weights equal the checkpoint's.
    from safetensors.torch import load_file

    model = Backend.from_run(run)
    saved = load_file(run / "checkpoints" / "step_000002" / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_missing_sd_folder_is_a_one_line_error(tmp_path, invoke, shapes):
    code, output = invoke(
        "train",
        "seer",
        "--config",
        TINY,
        "--data",
        shapes,
        "--run",
        tmp_path / "run",
        "--set",
        "model.vae=pretrained",
        "--set",
        f"model.pretrained={tmp_path / 'no_sd'}",
        *SMALL,
    )
    assert code == 1
    assert "Stable Diffusion folder not found" in output and "Traceback" not in output


def test_uncaptioned_data_is_refused_before_the_model_is_built(tmp_path, invoke):
    from vpt.data.shapes import make_shapes

    data = tmp_path / "shapes"
    make_shapes(data, num_videos=4, frames=4, size=16, workers=1)
    (data / "captions.json").unlink()
    run = tmp_path / "run"
    code, output = invoke("train", "seer", "--config", TINY, "--data", data, "--run", run, *SMALL)
    assert code == 2 and "has no captions, but seer needs them" in output and "captions.json" in output
    assert not (run / "config.yaml").exists()  # refused before the run was started
