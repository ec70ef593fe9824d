"""benchmarks/gpu_check.py --dry-run: every section of the GPU check runs at toy sizes on the CPU and
reports numbers, so the script a lent GPU runs cannot rot between loans."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("river", "neuralsde", "seer", "latte", "pvdm", "rsvp")
# section -> the numbers it must report
EXPECTED = {
    **{
        f"train:{name}": ("steps_per_s", "clips_per_s", "peak_memory_gb", "tflops_per_step", "mfu") for name in BACKENDS
    },
    **{f"sample:{name}": ("frames_per_s", "steps") for name in BACKENDS},
    "compile:river": (
        "train_steps_per_s_eager",
        "train_steps_per_s_compiled",
        "sample_frames_per_s_eager",
        "sample_frames_per_s_compiled",
    ),
    "rollout_bf16": ("relative_difference",),
    "i3d_bf16": ("fvd_fp32", "fvd_bf16", "fvd_difference", "feature_relative_difference"),
    "fsdp2_resume": ("max_loss_difference", "world_size"),
    "attention": ("train_steps_per_s_sdpa",),
}


@pytest.mark.slow  # ~25 s on 2 quiet cores: two `accelerate launch` runs and I3D at 224 px
def test_dry_run_reports_every_section_with_numbers(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    failed = {name: s.get("error") for name, s in sections.items() if s["status"] != "ok"}
    assert not failed, failed
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(sections) == set(EXPECTED)
    for name, keys in EXPECTED.items():
        for key in keys:
            value = sections[name][key]
            assert isinstance(value, (int, float)) and math.isfinite(value), (name, key, value)
    for name in BACKENDS:
        assert sections[f"train:{name}"]["steps_per_s"] > 0 and sections[f"train:{name}"]["tflops_per_step"] > 0
        assert sections[f"sample:{name}"]["frames_per_s"] > 0
    # resume under the FSDP2 launch config reproduces the straight run exactly
    assert sections["fsdp2_resume"]["losses_equal"] and sections["fsdp2_resume"]["weights_identical"]
    assert sections["fsdp2_resume"]["steps"] == 4
    # bf16 is close to fp32, not equal (else autocast did not engage) and not far off
    assert 0 < sections["rollout_bf16"]["relative_difference"] < 0.1
    assert 0 < sections["i3d_bf16"]["feature_relative_difference"] < 0.1
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in BACKENDS)
    assert report["peak_flops"] > 0


class _LinearAttention(torch.nn.Module):
    """A loss of one linear layer and one self-attention, whose FLOPs have a closed form."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = torch.nn.Linear(width, width, bias=False)

    def loss(self, batch: dict) -> dict:
        tokens = self.proj(batch["x"])  # (B, heads, L, width)
        return {"loss": torch.nn.functional.scaled_dot_product_attention(tokens, tokens, tokens).square().mean()}


def test_counted_flops_are_the_forward_and_the_backward_with_cpu_attention():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import Settings, Workload, counted_flops

    batch, heads, length, width = 2, 3, 16, 8
    work = Workload("toy", _LinearAttention(width), {"x": torch.randn(batch, heads, length, width)}, None, 0, "")
    settings = Settings(torch.device("cpu"), dry_run=True, train_steps=1, budget_s=0, total_s=0,
                        compile_backend="eager", precision="fp32")  # fmt: skip
    rows = batch * heads * length
    linear = 2 * rows * width * width  # forward; the backward takes only the weight's gradient (x needs none)
    attention = 2 * 2 * batch * heads * length * length * width  # QK^T and PV
    # backward of attention: torch's formula counts 2.5x its forward (dQ, dK, dV and the recomputed scores)
    assert counted_flops(work, settings) == linear + linear + attention + 5 * attention // 2
