"""LPIPS structure with random torchvision-format weights (real ImageNet weights are not downloadable here):
zero for identical inputs, symmetry, equality with a hand-written VGG-16 computation, frozen but
differentiable, and clear errors for missing files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from metrics_helpers import write_backbone, write_heads

from vpt.errors import VptError
from vpt.models.lpips import SCALE, SHIFT, load_lpips, lpips_heads_path

VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16 `features` conv indices


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpips")
    backbone = write_backbone(root / "vgg16-397923af.pth", "vgg")
    heads = write_heads(root / "vgg.pth", "vgg")
    model = load_lpips("vgg", backbone_path=root / "vgg16-397923af.pth", heads_path=root / "vgg.pth")
    return model, backbone, heads


def _hand_lpips(a, b, backbone, heads, head_dropout=0.0):
    """LPIPS written out layer by layer: VGG-16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; `head_dropout` as the
    `lpips` package's heads in training mode (an nn.Dropout in front of each, layer by layer)."""
    shift, scale = torch.tensor(SHIFT).view(1, 3, 1, 1), torch.tensor(SCALE).view(1, 3, 1, 1)

    def taps(x):
        x = (x - shift) / scale
        found, convs = [], iter(VGG_CONVS)
        for block_convs in (2, 2, 3, 3, 3):
            for _ in range(block_convs):
                index = next(convs)
                x = F.relu(
                    F.conv2d(x, backbone[f"features.{index}.weight"], backbone[f"features.{index}.bias"], padding=1)
                )
            found.append(x)
            x = F.max_pool2d(x, 2, 2)
        return found

    total = torch.zeros(a.shape[0])
    for fa, fb, weight in zip(taps(a), taps(b), heads):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += (torch.nn.Dropout(head_dropout)((na - nb) ** 2) * weight).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_matches_a_hand_computation(vgg_files):
    model, backbone, heads = vgg_files
    generator = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1, torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1
    with torch.no_grad():
        got = model(a, b)
        assert got.shape == (3,)
        torch.testing.assert_close(got, _hand_lpips(a, b, backbone, heads), rtol=1e-5, atol=1e-6)
        assert torch.all(got > 0)
        torch.testing.assert_close(model(b, a), got, rtol=1e-6, atol=1e-7)  # symmetric
        assert torch.all(model(a, a) == 0)  # identical inputs


def test_head_dropout_is_the_lpips_packages_training_mode(vgg_files):
    model, backbone, heads = vgg_files
    generator = torch.Generator().manual_seed(4)
    a, b = torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1, torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1
    with torch.no_grad():
        torch.manual_seed(11)
        got = model(a, b, head_dropout=0.5)
        torch.manual_seed(11)  # the same masks, drawn from the global generator in the same order
        torch.testing.assert_close(got, _hand_lpips(a, b, backbone, heads, head_dropout=0.5), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, model(a, b))  # the masks change the distance


def test_lpips_is_frozen_but_passes_gradients_to_inputs(vgg_files):
    model = vgg_files[0]
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training  # stays in eval whatever a training loop does
    a = torch.zeros(2, 3, 32, 32, requires_grad=True)
    b = torch.rand(2, 3, 32, 32) * 2 - 1
    model(a, b).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_alexnet_variant_loads_torchvision_names(tmp_path):
    write_backbone(tmp_path / "alexnet-owt-7be5be79.pth", "alex")
    write_heads(tmp_path / "alex.pth", "alex")
    model = load_lpips("alex", backbone_path=tmp_path / "alexnet-owt-7be5be79.pth", heads_path=tmp_path / "alex.pth")
    assert [m.weight.shape[1] for m in model.lins] == [64, 192, 384, 256, 256]
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.all(model(x, x) == 0) and torch.all(model(x, y) > 0)
        with pytest.raises(VptError, match="at least 31 px"):
            model(x[..., :24, :24], y[..., :24, :24])


def test_missing_or_wrong_weights_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("VPT_LPIPS_VGG", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_cache"))
    with pytest.raises(VptError, match="vgg16-397923af.pth.*VPT_LPIPS_VGG"):
        load_lpips("vgg")
    monkeypatch.setenv("VPT_LPIPS_VGG", str(tmp_path / "absent.pth"))
    with pytest.raises(VptError, match="absent.pth does not exist"):
        load_lpips("vgg")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    with pytest.raises(VptError, match="not a torchvision vgg state dict"):
        load_lpips("vgg", backbone_path=tmp_path / "partial.pth", heads_path=tmp_path / "partial.pth")


@pytest.mark.skipif(lpips_heads_path("vgg") is None, reason="the lpips wheel (its v0.1 heads) is not installed")
def test_heads_from_the_installed_lpips_wheel_load(tmp_path):
    write_backbone(tmp_path / "vgg16.pth", "vgg")
    model = load_lpips("vgg", backbone_path=tmp_path / "vgg16.pth")  # heads found by path, lpips not imported
    installed = torch.load(lpips_heads_path("vgg"), map_location="cpu", weights_only=True)
    assert torch.equal(model.lins[4].weight, installed["lin4.model.1.weight"])
    import sys

    assert "lpips" not in sys.modules
