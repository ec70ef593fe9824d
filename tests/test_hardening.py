"""User mistakes and hostile files: one-line errors, nothing outside the output folder touched, no code run.

Each test here failed before its fix.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_training import TinyDataset, TinyModel, tiny_config

from vpt.errors import ConfigError, UsageError, VptError
from vpt.fsutil import DirectoryLock, atomic_write_bytes, atomic_write_text, check_output_dir, check_output_file
from vpt.runs import Run
from vpt.training import TrainConfig, train


def _one_line(result) -> str:
    """The error line of a failed command; fails when the command succeeded or printed a traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _fake_video_dir(tmp_path: Path) -> Path:
    """A folder holding one file named like a video: enough for extract-frames to plan (and lock) its output."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"not really a video")
    return videos


# --- 1. the lock never writes through a symlink -----------------------------------------------------


def test_lock_refuses_a_symlink_and_leaves_its_target_alone(tmp_path, invoke):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "o"
    out.mkdir()
    (out / ".vpt.lock").symlink_to(victim)
    line = _one_line(invoke("extract-frames", "--video-dir", _fake_video_dir(tmp_path), "--out-dir", out))
    assert "symbolic link" in line and ".vpt.lock" in line
    assert victim.read_text() == "precious\n"
    assert (out / ".vpt.lock").is_symlink()  # refused, not replaced


def test_lock_refuses_a_symlink_on_a_run(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".vpt.lock").symlink_to(victim)
    with pytest.raises(VptError, match="symbolic link"):
        Run.open(run_dir)
    assert victim.read_text() == "precious\n"


def test_lock_refuses_a_lock_path_that_is_no_regular_file(tmp_path):
    (tmp_path / ".vpt.lock").mkdir()
    with pytest.raises(VptError, match="not a regular file"):
        DirectoryLock(tmp_path).acquire()
    os.rmdir(tmp_path / ".vpt.lock")
    os.mkfifo(tmp_path / ".vpt.lock")
    with pytest.raises(VptError, match="not a regular file"):  # and opening the fifo does not hang
        DirectoryLock(tmp_path).acquire()


# --- 2. checkpoint pointers stay inside the run ---------------------------------------------------


def _run_with_outside_checkpoint(tmp_path: Path, pointer: str, text: str) -> Run:
    elsewhere = tmp_path / "elsewhere" / "step_000002"
    elsewhere.mkdir(parents=True)
    (elsewhere / "model.safetensors").write_bytes(b"weights from outside the run")
    run = Run(tmp_path / "runs" / "r")
    (run.step_dir(1)).mkdir(parents=True)
    (run.checkpoints_dir / pointer).write_text(text)
    return run


@pytest.mark.parametrize(
    "text", ["../../elsewhere/step_000002\n", "{tmp}/elsewhere/step_000002\n", "step_000002/../step_000001"]
)
def test_latest_pointing_outside_the_run_is_refused(tmp_path, text):
    run = _run_with_outside_checkpoint(tmp_path, "latest", text.format(tmp=tmp_path))
    with pytest.raises(UsageError, match="not a step_NNNNNN folder inside"):
        run.latest_checkpoint()
    with pytest.raises(UsageError, match="not a step_NNNNNN folder inside"):
        Run.open(run.root)  # the resume path: refused before anything is loaded


def test_best_pointing_outside_the_run_is_refused(tmp_path):
    run = _run_with_outside_checkpoint(tmp_path, "best", "../../elsewhere/step_000002\n")
    with pytest.raises(UsageError, match="not a step_NNNNNN folder inside"):
        run.best_checkpoint()


def test_checkpoint_that_is_a_symlink_to_outside_is_never_used(tmp_path):
    run = _run_with_outside_checkpoint(tmp_path, "latest", "step_000002\n")
    run.step_dir(2).symlink_to(tmp_path / "elsewhere" / "step_000002")
    with pytest.raises(UsageError, match="not a step_NNNNNN folder inside"):
        run.latest_checkpoint()
    (run.checkpoints_dir / "latest").unlink()
    assert run.latest_checkpoint() == run.step_dir(1)  # the newest real one, not the link


def test_plain_pointers_still_work(tmp_path):
    run = Run(tmp_path / "r")
    run.step_dir(1).mkdir(parents=True)
    run.step_dir(3).mkdir()
    (run.checkpoints_dir / "latest").write_text("step_000001\n")
    (run.checkpoints_dir / "best").write_text("step_000003\n")
    assert run.latest_checkpoint() == run.step_dir(1) and run.best_checkpoint() == run.step_dir(3)


# --- 9. metrics.jsonl never repeats a step --------------------------------------------------------


def test_metrics_logged_before_the_first_checkpoint_are_dropped_on_restart(tmp_path):
    run = Run.open(tmp_path / "r")
    run.log_metrics({"step": 0, "note": "start"})
    run.log_metrics({"step": 10, "loss": 1.0})
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 20, "lo')  # killed mid-line, before any checkpoint
    run.release()
    again = Run.open(tmp_path / "r")
    again.log_metrics({"step": 10, "loss": 0.9})
    assert [r["step"] for r in again.read_metrics()] == [0, 10]
    assert again.metrics_path.read_text().splitlines()[-1] == '{"step": 10, "loss": 0.9}'


def test_metrics_after_the_latest_checkpoint_are_dropped_on_restart(tmp_path):
    run = Run.open(tmp_path / "r")
    run.step_dir(10).mkdir()
    for step in (5, 10, 15):
        run.log_metrics({"step": step})
    run.release()
    assert [r["step"] for r in Run.open(tmp_path / "r").read_metrics()] == [5, 10]


# --- 10. atomic writes respect the umask ----------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "metrics.jsonl", "{}\n")
        atomic_write_bytes(tmp_path / "model.safetensors", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.jsonl").stat().st_mode & 0o777 == mode
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoint_weights_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        train(TinyModel(), TinyDataset(), tiny_config(max_steps=2), Run.open(tmp_path / "r"))
    finally:
        os.umask(old)
    checkpoint = Run(tmp_path / "r").latest_checkpoint()
    for name in ("model.safetensors", "ema.safetensors"):  # safetensors' own writer leaves 0600
        assert (checkpoint / name).stat().st_mode & 0o777 == mode, name


# --- output paths checked before the work ---------------------------------------------------------


def test_output_path_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(VptError, match="--out .* is a directory"):
        check_output_file(tmp_path, "--out")
    with pytest.raises(VptError, match="is a file, not a directory"):
        check_output_file(tmp_path / "file" / "scores.json", "--out")
    check_output_file(tmp_path / "new" / "scores.json", "--out")
    with pytest.raises(VptError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "file", "--out")
    check_output_dir(tmp_path / "new", "--out")


# --- 5/6. config values: python tags, YAML 1.1 surprises ------------------------------------------


@dataclass
class _Section:
    precision: str = "auto"
    mode: str = "auto"
    lr: float = 1e-4
    steps: int = 1
    flag: bool = False
    name: str = "x"
    ratio: float | None = None
    sizes: list[int] = field(default_factory=lambda: [1])


@dataclass
class _Schema:
    train: _Section = field(default_factory=_Section)


def _typed(*overrides: str) -> _Section:
    from vpt.config import load_config

    return load_config(_Schema, overrides=overrides).train


@dataclass
class _TrainSchema:
    train: TrainConfig = field(default_factory=TrainConfig)


def test_set_values_are_read_by_the_declared_type():
    from vpt.config import load_config

    assert load_config(_TrainSchema, overrides=["train.precision=no"]).train.precision == "no"
    section = _typed(
        "train.lr=1e-3", "train.steps=010", "train.flag=on", "train.name=off", "train.ratio=null", "train.sizes=08,9"
    )
    assert section.lr == 1e-3 and section.steps == 10 and section.flag is True
    assert section.name == "off" and section.ratio is None and section.sizes == [8, 9]
    assert _typed("train.flag=no").flag is False and _typed("train.flag=YES").flag is True
    assert _typed("train.steps=1_000").steps == 1000 and _typed("train.ratio=2").ratio == 2.0
    assert _typed('train.name="010"').name == "010" and _typed("train.name=010").name == "010"
    with pytest.raises(ConfigError, match="'train.steps' expects int"):
        _typed("train.steps=1.5")
    with pytest.raises(ConfigError, match="'train.lr' expects float"):
        _typed("train.lr=fast")


def test_set_python_tag_is_never_built(tmp_path):
    marker = tmp_path / "marker"
    with pytest.raises(ConfigError, match="'train.steps' expects int"):
        _typed(
            f"train.steps=!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path [{str(marker)!r}]]"
        )
    assert not marker.exists()


def test_option_values_are_typed_and_never_built(tmp_path):
    from vpt.config import typed_value

    assert typed_value(int | None, "010", source="--option steps", key="steps") == 10
    assert typed_value(float | None, "1e-3", source="--option eta", key="eta") == 1e-3
    assert typed_value(str | None, "no", source="--option sampler", key="sampler") == "no"
    marker = tmp_path / "marker"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    with pytest.raises(ConfigError, match=r"--option steps: 'steps' expects int or null"):
        typed_value(int | None, tag, source="--option steps", key="steps")
    assert typed_value(Any, tag, source="--option x", key="x") == tag  # left as text, never constructed
    assert not marker.exists()


def test_run_config_with_a_python_tag_is_one_line(tmp_path):
    marker = tmp_path / "marker"
    run = Run(tmp_path / "r")
    run.root.mkdir()
    run.config_path.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UsageError, match=r"config.yaml: not a vpt config \(line 1: .*constructor"):
        run.read_config()
    run.config_path.write_text("- just a list\n")
    with pytest.raises(UsageError, match="expected a mapping"):
        run.read_config()
    assert not marker.exists()


# --- 3/5. weights that would run code ---------------------------------------------------------------


class _TouchMarker:
    """Unpickling this creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_metadata_with_a_second_pickle_is_refused(tmp_path):
    import torch.distributed.checkpoint as dcp

    from vpt.weights import UnsafeWeightsError, check_training_state

    state = tmp_path / "training_state"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": torch.nn.Linear(2, 2).state_dict()}, checkpoint_id=str(state / "pytorch_model_fsdp_0"))
    check_training_state(state)  # what torch writes passes
    metadata = state / "pytorch_model_fsdp_0" / ".metadata"
    marker = tmp_path / "marker"
    metadata.write_bytes(metadata.read_bytes() + pickle.dumps(_TouchMarker(marker)))  # a legacy-style second pickle
    with pytest.raises(UnsafeWeightsError) as caught:
        check_training_state(state)
    assert "\n" not in str(caught.value) and ".metadata: refusing to load: data follows" in str(caught.value)
    assert not marker.exists()


def _tiny_diffusers_vae(folder: Path) -> Path:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    vae.save_pretrained(folder, safe_serialization=False)
    return folder / "diffusion_pytorch_model.bin"


def test_diffusers_folder_with_a_code_running_bin_is_one_line(tmp_path, invoke):
    from vpt.models.autoencoders.kl import KLVAE
    from vpt.weights import UnsafeWeightsError

    weights = _tiny_diffusers_vae(tmp_path / "vae")
    assert KLVAE.from_diffusers(tmp_path / "vae").config.latent_channels == 4  # a plain pickled state dict still loads
    marker = tmp_path / "marker"
    torch.save({"x": _TouchMarker(marker)}, weights)
    with pytest.raises(UnsafeWeightsError) as caught:
        KLVAE.from_diffusers(tmp_path / "vae")
    message = str(caught.value)
    assert (
        "\n" not in message
        and str(weights) in message
        and "convert diffusion_pytorch_model.bin to safetensors" in message
    )
    assert "weights_only" not in message
    assert not marker.exists()


# --- 4. every image mode is read with its own range --------------------------------------------------


def _saved(tmp_path: Path, image: Image.Image, name: str) -> Path:
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize(
    ("make", "name", "expected"),
    [
        (lambda: Image.fromarray(np.full((4, 4), 32768, np.uint16)), "grey16.png", (128, 128, 128)),  # opens as I;16
        (lambda: Image.fromarray(np.full((4, 4), 65535, np.uint16)), "white16.png", (255, 255, 255)),
        (lambda: Image.fromarray(np.full((4, 4), 257 * 10, np.uint16)), "dark16.png", (10, 10, 10)),
        (lambda: Image.fromarray(np.full((4, 4), 32768, np.uint16)).convert("I"), "grey32.tif", (128, 128, 128)),
        (
            lambda: Image.frombytes("I;16B", (4, 4), np.full((4, 4), 32768, ">u2").tobytes()),
            "grey16b.tif",
            (128, 128, 128),
        ),
        (lambda: Image.new("L", (4, 4), 77), "grey8.png", (77, 77, 77)),
        (lambda: Image.new("LA", (4, 4), (77, 0)), "greyalpha.png", (77, 77, 77)),  # alpha ignored, as FFmpeg's path
        (lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 0)), "rgba.png", (10, 20, 30)),
        (
            lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 0)),
            "rgba.tif",
            (10, 20, 30),
        ),  # Pillow path agrees with FFmpeg's
        (lambda: Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "cmyk.jpg", (255, 255, 255)),
        (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "red.tif", (255, 0, 0)),
    ],
)
def test_read_image_scales_each_mode(tmp_path, make, name, expected):
    from vpt.data.video import read_image

    image = make()
    pixels = read_image(_saved(tmp_path, image, name))
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 4, 3)
    assert np.abs(pixels.astype(int) - expected).max() <= 1, (Image.open(tmp_path / name).mode, pixels[0, 0])


def test_read_image_palette_with_transparency(tmp_path):
    from vpt.data.video import read_image, to_rgb8

    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.info["transparency"] = 1
    assert to_rgb8(image).getpixel((0, 0)) == (200, 100, 50)
    assert tuple(read_image(_saved(tmp_path, image, "p.gif"))[0, 0]) == (200, 100, 50)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)),
        lambda: Image.fromarray(np.full((4, 4), 1 << 20, np.int32)),
    ],
)
def test_read_image_refuses_images_without_a_known_range(tmp_path, make):
    from vpt.data.video import VideoReadError, read_image

    with pytest.raises(VideoReadError, match=r"cannot read image \(32-bit .*; save it as an 8- or 16-bit PNG\)"):
        read_image(_saved(tmp_path, make(), "odd.tif"))


# --- 5. tracebacks that become one line (or no error) ----------------------------------------------


def test_ema_codebook_under_bf16_autocast_matches_float32():
    from vpt.models.autoencoders.quantize import EMAVectorQuantizer

    torch.manual_seed(0)
    plain = EMAVectorQuantizer(8, 4).train()
    mixed = EMAVectorQuantizer(8, 4).train()
    mixed.load_state_dict(plain.state_dict())
    z = torch.randn(2, 4, 3, 3) * 0.01
    expected = plain(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what train.precision=bf16 does to a MOSO autoencoder
        got = mixed(z)
    assert torch.equal(got.indices, expected.indices)
    assert mixed.embeddings.dtype == torch.float32 and torch.equal(mixed.embeddings, plain.embeddings)


def test_extract_frames_refuses_an_unfinished_target_that_is_a_symlink(tmp_path, invoke):
    videos = _fake_video_dir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").symlink_to(elsewhere)  # looks like an unfinished extraction of a.mp4
    line = _one_line(invoke("extract-frames", "--video-dir", videos, "--out-dir", out))
    assert "is a symbolic link" in line and str(out / "a") in line
    assert (elsewhere / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected an object with 'settings' and 'shards'"),
        (
            '{"settings": {}, "shards": {"train/shard_0001.hdf5": {"size": "big", "videos": 1, "failed": []}}}',
            "bad record",
        ),
        (
            '{"settings": {}, "shards": {"train/shard_0001.hdf5": {"size": 1, "videos": 1, "failed": [3]}}}',
            "bad record",
        ),
    ],
)
def test_convert_h5_tampered_state_file_is_one_line(tmp_path, invoke, text, why):
    frames = tmp_path / "frames" / "train" / "v0"
    frames.mkdir(parents=True)
    for k in range(2):
        Image.new("RGB", (8, 8)).save(frames / f"{k:05d}.png")
    out = tmp_path / "h5"
    out.mkdir()
    (out / ".vpt-convert.json").write_text(text)
    line = _one_line(invoke("convert-h5", "--data-dir", tmp_path / "frames", "--out-dir", out))
    assert ".vpt-convert.json is damaged" in line and why in line


def test_eval_cache_batch_holding_an_object_array_is_one_line(tmp_path):
    from vpt.metrics.eval_cache import BatchStore

    marker = tmp_path / "marker"
    with open(tmp_path / "batch-00000000.npz", "wb") as handle:
        np.savez(handle, scores=np.array([_TouchMarker(marker), 1], dtype=object))
    with pytest.raises(VptError) as caught:
        BatchStore(tmp_path, {}).load([0, 1])
    assert "\n" not in str(caught.value) and "batch-00000000.npz: not an eval-cache batch" in str(caught.value)
    assert not marker.exists()


# --- 8. make-data: one process per --out, and --out must be a folder --------------------------------


def test_make_data_out_naming_a_file_is_one_line(tmp_path, invoke):
    (tmp_path / "taken").write_text("keep")
    line = _one_line(invoke("make-data", "shapes", "--out", tmp_path / "taken", "--num-videos", "1", "--frames", "2"))
    assert "exists and is not a directory" in line
    assert (tmp_path / "taken").read_text() == "keep"


@contextlib.contextmanager
def _lock_held_by_another_process(folder: Path):
    """A second process holding `folder`'s vpt lock for the duration; yields its pid."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from vpt.fsutil import DirectoryLock; "
            "DirectoryLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_second_make_data_on_the_same_out_is_refused(tmp_path, invoke):
    out = tmp_path / "shapes"
    with _lock_held_by_another_process(out) as pid:
        line = _one_line(invoke("make-data", "shapes", "--out", out, "--num-videos", "1", "--frames", "2"))
    assert f"another vpt process (pid {pid}" in line
    assert not (out / "shapes.json").exists()  # refused before writing anything


def test_second_eval_fvd_on_the_same_out_folder_is_refused(tmp_path, invoke):
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    out = tmp_path / "scores"
    out.mkdir()
    with _lock_held_by_another_process(out) as pid:
        line = _one_line(
            invoke("eval-fvd", "--real", tmp_path / "real", "--fake", tmp_path / "fake", "--out", out / "metrics.json")
        )
    assert f"another vpt process (pid {pid}" in line
    assert not (out / "metrics.json").exists()


# --- 7. DataLoader workers die with their main process ----------------------------------------------

_LOADER_SCRIPT = """
import os, sys, time
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from vpt.data.parallel import exit_with_parent

class Pids(Dataset):
    def __len__(self):
        return 10_000
    def __getitem__(self, index):
        return os.getpid()

loader = DataLoader(Pids(), batch_size=1, num_workers=2, worker_init_fn=exit_with_parent(), persistent_workers=True)
pids = set()
for batch in loader:
    pids.add(int(batch[0]))
    if len(pids) == 2:
        break
print(*sorted(pids), flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_dataloader_workers_die_within_a_second_of_a_kill_9(tmp_path):
    script = tmp_path / "loader.py"
    script.write_text(_LOADER_SCRIPT)
    main = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"},
    )
    workers: list[int] = []
    try:
        workers = [int(pid) for pid in main.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        main.send_signal(signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 1.0
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(pid) for pid in workers), "DataLoader workers outlived their main process"
    finally:
        main.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- helpers that make the pending fixes one-liners ------------------------------------------------


def test_trainer_state_is_checked_field_by_field(tmp_path):
    checkpoint = tmp_path / "step_000002"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text('{"step": 2, "world_size": 1, "sharded": false, "best": 0.5}')
    assert Run.read_trainer_state(checkpoint)["step"] == 2
    for text, why in [
        ('{"step": "2"}', "step='2'"),
        ('{"step": 2, "best": "x"}', "best='x'"),
        ("[2]", "not a JSON object"),
        ("{", "unreadable trainer state"),
    ]:
        (checkpoint / "trainer_state.json").write_text(text)
        with pytest.raises(VptError, match=r"trainer_state.json: .*" + why.replace("[", r"\[")):
            Run.read_trainer_state(checkpoint)


# --- checks in the training loop, the commands and the latent cache ---------------------------------------


@pytest.mark.parametrize("lr", ["-1", "nan"])
def test_train_lr_must_be_finite_and_not_negative(tmp_path, invoke, lr):
    line = _one_line(
        invoke(
            "train-ae",
            "--config",
            Path(__file__).parents[1] / "configs" / "ae" / "shapes.yaml",
            "--data",
            tmp_path / "missing",
            "--run",
            tmp_path / "r",
            "--set",
            f"train.lr={lr}",
        )
    )
    assert "train.lr must be a finite number >= 0" in line


@pytest.mark.parametrize("option", ["sampler=bogus"])
def test_sample_options_are_typed_and_checked(option):
    from vpt.commands.sample import _predict_kwargs
    from vpt.models.river import River

    model = River.__new__(River)  # only the class's name and predict signature are used
    with pytest.raises(VptError, match=option.split("=")[0]):
        _predict_kwargs(model, None, None, [option])


def test_eval_fvd_out_naming_a_directory_is_refused_first(tmp_path, invoke):
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    line = _one_line(invoke("eval-fvd", "--real", tmp_path / "real", "--fake", tmp_path / "fake", "--out", tmp_path))
    assert "is a directory" in line


def test_tampered_trainer_state_is_one_line(tmp_path):
    from vpt.training.checkpoint import read_best

    run = Run(tmp_path / "r")
    run.step_dir(2).mkdir(parents=True)
    (run.checkpoints_dir / "best").write_text("step_000002\n")
    (run.step_dir(2) / "trainer_state.json").write_text("[1, 2]")
    with pytest.raises(VptError, match="trainer_state.json: damaged trainer state"):
        read_best(run)


@pytest.mark.parametrize("text", ["{", "[1]", '{"shards": 5}'])
def test_tampered_latents_manifest_is_one_line(tmp_path, text):
    from vpt.data.latents import _claim

    (tmp_path / "latents.json").write_text(text)
    manifest = {
        "autoencoder": "a",
        "autoencoder_sha256": "0",
        "data": "d",
        "dtype": "float16",
        "image_size": 32,
        "posterior": False,
    }
    with pytest.raises(VptError, match="latents.json"):
        shards = _claim(tmp_path, manifest)["shards"]
        assert isinstance(shards, dict), shards


def test_shard_missing_a_dataset_is_one_line(tmp_path):
    import h5py

    from vpt.data.h5 import ShardWriter, VideoH5

    shard = tmp_path / "train" / "shard_0001.hdf5"
    with ShardWriter(shard) as writer:
        writer.add(np.zeros((2, 8, 8, 3), np.uint8), name="v0")
    with h5py.File(shard, "a") as handle:
        del handle["lengths"]
    with pytest.raises(UsageError, match=r"shard_0001.hdf5: damaged shard \(.*'lengths'"):
        VideoH5(tmp_path / "train")


def test_save_latents_partial_result_holding_an_object_array_is_one_line(tmp_path):
    from vpt.data.latents import _load_npy

    marker = tmp_path / "marker"
    with open(tmp_path / "0.npy", "wb") as handle:
        np.save(handle, np.array([_TouchMarker(marker), 1], dtype=object), allow_pickle=True)
    with pytest.raises(VptError) as caught:
        _load_npy(tmp_path / "0.npy")
    assert "\n" not in str(caught.value) and "0.npy: damaged partial result" in str(caught.value)
    assert not marker.exists()
