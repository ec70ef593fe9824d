"""Which precision `auto` picks, and what bf16 costs in quality on a real rollout."""

from __future__ import annotations

import torch

from vpt import precision


def test_auto_is_bf16_only_where_the_device_has_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("VPT_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not precision.has_bf16_units(cpu)
    assert precision.training_precision("auto", cpu) == "no" and precision.default_precision(cpu) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert precision.training_precision("auto", cpu) == "bf16" and precision.default_precision(cpu) == "bf16"
    assert precision.training_precision("no", cpu) == "no"  # an explicit setting is kept
    monkeypatch.setenv("VPT_BF16", "0")
    assert precision.training_precision("auto", cpu) == "no"
    monkeypatch.setenv("VPT_BF16", "1")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert precision.training_precision("auto", cpu) == "bf16"


def test_bf16_rollout_stays_close_to_fp32(tmp_path):
    """The quality check behind bf16-by-default: RIVER's tiny upstream-weights model, 3 frames of RK4
    rollout from the same noise, bf16 autocast vs fp32: the frames agree to > 40 dB PSNR (measured 44.9)."""
    from fixture_paths import fixture
    from test_river import _published_checkpoint

    from vpt.metrics.frames import psnr
    from vpt.models.river import River

    model = River.from_checkpoint(_published_checkpoint(tmp_path / "model.pth"), sigma_min=1e-7)
    observations = torch.load(fixture("river", "sampler_tiny.inputs.pt"))["observations"][:1]  # (1, 2, 3, 32, 32)

    def rollout(bf16: bool) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.predict(observations, 3, steps=6, generator=torch.Generator().manual_seed(0)).float()

    fp32, bf16 = rollout(False), rollout(True)
    assert not torch.equal(fp32, bf16)  # autocast really ran in bf16
    agreement = psnr(((fp32 + 1) / 2).flatten(0, 1), ((bf16 + 1) / 2).flatten(0, 1))
    assert float(torch.as_tensor(agreement).mean()) > 40.0
