"""Opening a weights file never runs code from it.

Crafted checkpoints in both torch formats (zip, and the legacy stream of `_use_new_zipfile_serialization=False`)
carry pickles whose unpickling would create a marker file. Every CLI path that takes a weights file must
exit non-zero with one `error:` line naming the file, and the marker must not exist. Legitimate files, and
Lightning-style checkpoints with harmless pickled objects, still load."""

from __future__ import annotations

import collections
import json
import os
import pickle
import shlex
import shutil
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from vpt import weights
from vpt.errors import VptError
from vpt.weights import Placeholder, UnsafeWeightsError, read_restricted, read_state_dict, read_weights

FORMATS = ["zip", "legacy"]
TINY_VQGAN = {
    "ch": 8,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "resolution": 32,
    "z_channels": 4,
    "embed_dim": 4,
    "n_embed": 16,
    "norm_groups": 4,
}


class TouchMarker:
    """Unpickling this calls `Path.touch(marker)`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class ShellMarker:
    """Unpickling this runs `touch marker` in a shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def save(obj, path: Path, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def evil_checkpoint(
    path: Path, fmt: str, marker: Path, state: dict[str, torch.Tensor], key: str = "state_dict"
) -> Path:
    """A plausible checkpoint (real tensors under `key`) whose extra entries run code when unpickled."""
    return save(
        {key: state, "callbacks": ShellMarker(marker), "hyper_parameters": TouchMarker(marker), "global_step": 7},
        path,
        fmt,
    )


@pytest.fixture()
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


def assert_refused(result, path: Path, marker: Path) -> None:
    code, output = result
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code != 0, output
    assert len(errors) == 1 and str(path) in errors[0] and "refusing to load" in errors[0], output
    assert "Traceback" not in output
    assert not marker.exists()


def tiny_vqgan_state() -> dict[str, torch.Tensor]:
    from vpt.models.autoencoders import build_autoencoder

    torch.manual_seed(0)
    return build_autoencoder("vqgan", TINY_VQGAN).state_dict()


# --- vpt.weights itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_payloads_do_run_under_an_unrestricted_load(tmp_path, marker, fmt):
    """Guards the other tests: these files really execute code when loaded the unsafe way."""
    for payload in (TouchMarker(marker), ShellMarker(marker)):
        path = save({"state_dict": {"w": torch.ones(2)}, "callbacks": payload}, tmp_path / f"{fmt}.ckpt", fmt)
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.unlink()


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("payload", [TouchMarker, ShellMarker])
@pytest.mark.parametrize("fmt", FORMATS)
def test_malicious_pickles_are_refused(tmp_path, marker, fmt, payload, lenient):
    path = save({"state_dict": {"w": torch.ones(2)}, "callbacks": payload(marker)}, tmp_path / "evil.ckpt", fmt)
    with pytest.raises(UnsafeWeightsError, match="refusing to load") as error:
        read_weights(path, lenient=lenient)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UnsafeWeightsError):
        read_restricted(path)  # vpt's own reader of both formats, without torch's weights_only pass first
    assert not marker.exists()


def hand_written(payload: bytes, fmt: str, path: Path) -> Path:
    """An object pickle written by hand, framed as a torch.save file of format `fmt`."""
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr("archive/data.pkl", payload)
            archive.writestr("archive/byteorder", "little")
            archive.writestr("archive/version", "3\n")
    else:
        header = (weights.LEGACY_MAGIC, weights.LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True})
        path.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in header) + payload + pickle.dumps([], protocol=2))
    return path


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "payload, verdict",
    [
        (b"(S'touch pwned'\nios\nsystem\n.", "call os.system"),  # protocol-0 INST
        (b"cbuiltins\neval\n(S'1+1'\ntR.", "call builtins.eval"),
        (b"ccopyreg\n_reconstructor\n(ccollections\nOrderedDict\nc__builtin__\nobject\nNtR.", "through copyreg"),
        # BUILD with slot state on an allowed function would set its __defaults__ for every later load
        (
            b"ctorch._utils\n_rebuild_tensor_v2\n(N(dS'__defaults__'\n(I1\nI2\ntstb.",
            "modify torch._utils._rebuild_tensor_v2",
        ),
        (b"ctorch\nFloatStorage\n(dS'dtype'\nI1\nsb.", "modify torch.FloatStorage"),
    ],
    ids=["inst", "reduce", "copyreg", "build-function", "build-storage"],
)
def test_hand_written_pickles_can_neither_call_nor_modify(tmp_path, fmt, payload, verdict):
    defaults = weights._tensor.__defaults__
    path = hand_written(payload, fmt, tmp_path / "crafted.pt")
    with pytest.raises(UnsafeWeightsError, match=verdict):
        read_weights(path, lenient=True)
    assert weights._tensor.__defaults__ == defaults


def _plain_checkpoint() -> dict:
    generator = torch.Generator().manual_seed(0)
    state = collections.OrderedDict(
        weight=torch.randn(4, 3, generator=generator),
        bias=torch.arange(4),
        half=torch.randn(2, 2, generator=generator).to(torch.bfloat16),
        flag=torch.tensor([True, False]),
    )
    state["view"] = state["weight"][1:, ::2]  # shares its storage with `weight`
    return {
        "state_dict": state,
        "epoch": 3,
        "name": "tiny",
        "lr": 0.5,
        "steps": [1, 2],
        "pair": (1, "a"),
        "blob": b"\x00\xff",
        "tags": {"a", "b"},
        "param": torch.nn.Parameter(torch.ones(2)),
        "none": None,
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_legitimate_checkpoints_load_through_both_readers(tmp_path, fmt):
    expected = _plain_checkpoint()
    path = save(expected, tmp_path / "plain.pt", fmt)
    for loaded in (read_weights(path), read_restricted(path)):
        assert type(loaded["state_dict"]) is collections.OrderedDict
        assert list(loaded["state_dict"]) == list(expected["state_dict"])
        for key, tensor in expected["state_dict"].items():
            assert loaded["state_dict"][key].dtype == tensor.dtype and torch.equal(loaded["state_dict"][key], tensor), (
                key
            )
        plain = {k: v for k, v in expected.items() if k not in ("state_dict", "param")}
        assert {k: loaded[k] for k in plain} == plain
        assert isinstance(loaded["param"], torch.nn.Parameter) and torch.equal(loaded["param"], expected["param"])
    shared = read_restricted(path)["state_dict"]
    assert shared["view"].untyped_storage().data_ptr() == shared["weight"].untyped_storage().data_ptr()


@pytest.mark.parametrize("fmt", FORMATS)
def test_lightning_checkpoint_with_custom_objects_keeps_tensors_and_imports_nothing(tmp_path, fmt):
    module_name = "vpt_tests_not_installed_lightning"
    module = types.ModuleType(module_name)

    class ModelCheckpoint:
        def __init__(self):
            self.monitor, self.best_model_score = "val/rec_loss", torch.tensor(0.25)

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module_name, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    state = collections.OrderedDict(w=torch.randn(3, 2), b=torch.zeros(3))
    sys.modules[module_name] = module  # only while saving: pickle names classes by module
    try:
        path = save(
            {
                "state_dict": state,
                "callbacks": {ModelCheckpoint: {"best": np.float64(0.25)}},
                "checkpoint_callback": ModelCheckpoint(),
                "epoch": 2,
            },
            tmp_path / "last.ckpt",
            fmt,
        )
    finally:
        del sys.modules[module_name]

    with pytest.raises(UnsafeWeightsError, match="ModelCheckpoint"):
        read_weights(path)  # tensors only unless the caller asks for Lightning leniency
    loaded = read_weights(path, lenient=True)
    assert module_name not in sys.modules
    assert loaded["epoch"] == 2 and all(torch.equal(loaded["state_dict"][k], v) for k, v in state.items())
    ((callback_class, callback_state),) = loaded["callbacks"].items()
    assert issubclass(callback_class, Placeholder) and callback_class.qualified_name == f"{module_name}.ModelCheckpoint"
    assert isinstance(callback_state["best"], Placeholder)  # a numpy scalar: kept out, not rebuilt
    assert isinstance(loaded["checkpoint_callback"], callback_class)
    assert not hasattr(loaded["checkpoint_callback"], "monitor")  # its state is dropped


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("lenient", [False, True])
def test_truncated_and_foreign_files_are_one_line(tmp_path, fmt, lenient):
    data = save(_plain_checkpoint(), tmp_path / "full.pt", fmt).read_bytes()
    for name, content in (
        ("cut.pt", data[: len(data) - 7]),
        ("half.pt", data[: len(data) // 2]),
        ("text.pt", b"hello"),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(VptError) as error:
            read_weights(path, lenient=lenient)
        assert type(error.value) is VptError, error.value  # broken, not malicious: no "refusing" verdict
        assert str(path) in str(error.value) and "\n" not in str(error.value)
        with pytest.raises(VptError, match="not a readable weights file"):
            read_restricted(path)
    with pytest.raises(VptError, match="weights file not found"):
        read_weights(tmp_path / "missing.pt")


def test_shard_sets_and_index_files_read_as_one_state_dict(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(3)}, tmp_path / "model-00002-of-00002.safetensors")
    state = read_state_dict(tmp_path / "model-00002-of-00002.safetensors")
    assert sorted(state) == ["a", "b"] and torch.equal(state["b"], torch.zeros(3))

    torch.save({"module.c": torch.ones(1)}, tmp_path / "part1.bin")
    torch.save({"state_dict": {"module.d": torch.full((2,), 2.0)}}, tmp_path / "part2.bin")
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"c": "part1.bin", "d": "part2.bin"}}))
    state = read_state_dict(index)
    assert sorted(state) == ["c", "d"] and torch.equal(state["d"], torch.full((2,), 2.0))  # DDP prefix removed

    (tmp_path / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(VptError, match="incomplete shard set"):
        read_state_dict(tmp_path / "model-00002-of-00002.safetensors")
    torch.save({"c": torch.ones(1)}, tmp_path / "part2.bin")
    with pytest.raises(VptError, match="repeats c"):
        read_state_dict(index)


def test_tensor_records_must_stay_inside_their_storage():
    storage = weights._typed_storage(torch.float32, 8)  # two floats
    assert weights._tensor(storage, 1, (1,), (1,)).shape == (1,)
    with pytest.raises(ValueError, match="past its storage"):
        weights._tensor(storage, 0, (100,), (1,))  # set_() alone would grow the storage to fit


def _dcp_checkpoint(directory: Path) -> Path:
    """A torch.distributed.checkpoint folder (what accelerate writes for a sharded FSDP model), one process."""
    import warnings

    import torch.distributed.checkpoint as dcp

    model = torch.nn.Linear(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(directory))
    return directory


def test_training_state_with_sharded_metadata_is_checked_before_torch_unpickles_it(tmp_path, marker):
    state = tmp_path / "training_state"
    _dcp_checkpoint(state / "pytorch_model_fsdp_0")
    torch.save(
        {"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}]}, state / "optimizer.bin"
    )
    weights.check_training_state(state)  # what torch and accelerate write passes
    (state / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps(ShellMarker(marker)))
    with pytest.raises(UnsafeWeightsError, match=r"\.metadata: refusing to load: .*posix\.system"):
        weights.check_training_state(state)
    assert not marker.exists()


def test_training_state_refuses_files_that_need_extra_allowed_globals(tmp_path):
    """accelerate reads its own RNG pickles with numpy added to torch's allow-list; vpt's check does not."""
    torch.save({"numpy_random_seed": np.random.get_state()}, tmp_path / "random_states_0.pkl")
    with pytest.raises(UnsafeWeightsError, match="random_states_0.pkl: refusing to load"):
        weights.check_training_state(tmp_path)


# --- every CLI path that reads weights ------------------------------------------------------------


@pytest.fixture(scope="module")
def frames_h5(tmp_path_factory) -> Path:
    from data_helpers import shapes_h5

    return shapes_h5(tmp_path_factory.mktemp("shapes"), num_videos=6, frames=2)


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "context.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_save_latents_ae(tmp_path, marker, invoke, frames_h5, fmt):
    evil = evil_checkpoint(tmp_path / "vqvae.ckpt", fmt, marker, tiny_vqgan_state())
    assert_refused(
        invoke("save-latents", "--ae", evil, "--data", frames_h5, "--out", tmp_path / "latents", "--workers", 0),
        evil,
        marker,
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_train_ae_init_from(tmp_path, marker, invoke, frames_h5, fmt):
    from test_ae_train import CONFIG

    evil = evil_checkpoint(tmp_path / "vqvae.ckpt", fmt, marker, tiny_vqgan_state())
    assert_refused(
        invoke(
            "train-ae",
            "--config",
            CONFIG,
            "--data",
            frames_h5,
            "--run",
            tmp_path / "run",
            "--init-from",
            evil,
            "--max-steps",
            1,
        ),
        evil,
        marker,
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_sample_published_checkpoint_with_ae(tmp_path, marker, invoke, image, fmt):
    from test_river import _published_checkpoint  # the tiny upstream-format model.pth of the RIVER fixtures

    checkpoint = _published_checkpoint(tmp_path / "model.pth")
    evil = evil_checkpoint(tmp_path / "vqvae.ckpt", fmt, marker, tiny_vqgan_state())
    assert_refused(
        invoke(
            "sample",
            "--checkpoint",
            checkpoint,
            "--ae",
            evil,
            "--image",
            image,
            "--frames",
            1,
            "--out",
            tmp_path / "out.png",
        ),
        evil,
        marker,
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_sample_published_river_checkpoint(tmp_path, marker, invoke, image, fmt):
    state = {
        "module.vector_field_regressor.token_proj.weight": torch.zeros(8, 12),
        "module.ae.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
    }
    evil = evil_checkpoint(tmp_path / "model.pth", fmt, marker, state, key="model")
    assert_refused(
        invoke("sample", "--checkpoint", evil, "--image", image, "--frames", 1, "--out", tmp_path / "out.png"),
        evil,
        marker,
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_fvd_i3d(tmp_path, marker, invoke, fmt):
    evil = evil_checkpoint(
        tmp_path / "i3d_pretrained_400.pt", fmt, marker, {"conv3d_1a_7x7.conv3d.weight": torch.zeros(64, 3, 7, 7, 7)}
    )
    assert_refused(
        invoke(
            "eval-fvd",
            "--real",
            tmp_path / "real",
            "--fake",
            tmp_path / "fake",
            "--i3d",
            evil,
            "--out",
            tmp_path / "metrics.json",
        ),
        evil,
        marker,
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_fvd_lpips_weights(tmp_path, marker, invoke, monkeypatch, fmt):
    from metrics_helpers import write_heads

    heads = tmp_path / "vgg_heads.pth"
    write_heads(heads, "vgg")
    monkeypatch.setattr("vpt.models.lpips.lpips_heads_path", lambda net: heads)
    evil = evil_checkpoint(
        tmp_path / "vgg16-397923af.pth", fmt, marker, {"features.0.weight": torch.zeros(64, 3, 3, 3)}
    )
    assert_refused(
        invoke(
            "eval-fvd",
            "--real",
            tmp_path / "real",
            "--fake",
            tmp_path / "fake",
            "--no-fvd",
            "--paired",
            "--lpips-weights",
            evil,
            "--out",
            tmp_path / "metrics.json",
        ),
        evil,
        marker,
    )


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    from test_seer_weights import write_tiny_sd

    return write_tiny_sd(tmp_path_factory.mktemp("sd15"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_sample_released_seer_folder(tmp_path, marker, invoke, image, sd_dir, fmt):
    release = tmp_path / "bridge_seer" / "learned_sdunet-steps-80000"
    release.mkdir(parents=True)
    evil = evil_checkpoint(release / "pytorch_model.bin", fmt, marker, {"conv_in.weight": torch.zeros(32, 4, 3, 3)})
    torch.save({"pos_embed": torch.zeros(1, 16, 32)}, release / "pytorch_model_1.bin")
    assert_refused(
        invoke(
            "sample",
            "--checkpoint",
            release.parent,
            "--ae",
            sd_dir,
            "--image",
            image,
            "--prompt",
            "go",
            "--size",
            32,
            "--steps",
            1,
            "--frames",
            1,
            "--out",
            tmp_path / "out.png",
        ),
        evil,
        marker,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, frames_h5) -> tuple[Path, list]:
    """A `vpt train-ae` run with one checkpoint, and the arguments that resume it."""
    from test_ae_train import CONFIG, TINY

    from vpt.cli import main

    run = tmp_path_factory.mktemp("ae") / "run"
    args = [
        "train-ae",
        "--config",
        CONFIG,
        "--data",
        frames_h5,
        "--run",
        run,
        *TINY,
        "--set",
        "loss.discriminator=none",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.val_every=0",
        "--set",
        "train.sample_every=0",
    ]
    try:
        main([str(a) for a in args + ["--max-steps", 1]])
    except SystemExit as exc:  # typer exits 0 after a command
        assert not exc.code, exc.code
    return run, args


def test_run_rng_state_reads_with_weights_only(finished_run):
    run, _ = finished_run
    state = torch.load(run / "checkpoints" / "step_000001" / "rng_state_0.pt", weights_only=True)
    assert set(state) >= {"python", "numpy", "torch"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["rng_state_0.pt", "training_state/optimizer.bin"])
def test_resume_with_a_tampered_run_file(tmp_path, marker, invoke, finished_run, name, fmt):
    source, args = finished_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    target = run / "checkpoints" / "step_000001" / name
    original = torch.load(target, weights_only=True)
    save({**original, "callbacks": ShellMarker(marker), "extra": TouchMarker(marker)}, target, fmt)
    resumed = [run if a == source else a for a in args]
    assert_refused(invoke(*resumed, "--max-steps", 2), target, marker)
