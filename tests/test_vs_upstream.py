"""The pieces of benchmarks/vs_upstream.py that decide what upstream is timed with: the xformers stand-in
must compute upstream's attention exactly, and a missing checkout is one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_saved_path = list(sys.path)
sys.path.insert(0, str(ROOT / "benchmarks"))
import vs_upstream  # noqa: E402

sys.path[:] = _saved_path  # benchmarks/ holds plain modules (seer.py, river.py, ...) no test should pick up


def _attention_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """float64 softmax(q k^T / sqrt(d)) v on (N, L, d), upper triangle masked when causal."""
    scores = q.double() @ k.double().transpose(1, 2) / q.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v.double()


def test_xformers_stand_in_is_plain_and_causal_attention():
    q, k, v = (torch.randn(6, 20, 16) for _ in range(3))  # (batch * heads, tokens, head_dim), as upstream passes them
    plain = vs_upstream.memory_efficient_attention(q, k, v)
    causal = vs_upstream.memory_efficient_attention(q, k, v, attn_bias=vs_upstream.LowerTriangularMask())
    assert plain.shape == causal.shape == (6, 20, 16)
    assert (plain.double() - _attention_by_hand(q, k, v, causal=False)).abs().max() < 1e-5
    assert (causal.double() - _attention_by_hand(q, k, v, causal=True)).abs().max() < 1e-5
    assert torch.equal(causal[:, 0], v[:, 0])  # the first token sees only itself


def test_xformers_stand_in_offers_what_upstream_imports():
    modules = vs_upstream.xformers_stand_in()
    assert modules["xformers.ops"].memory_efficient_attention is vs_upstream.memory_efficient_attention
    assert modules["xformers.ops"].LowerTriangularMask is vs_upstream.LowerTriangularMask
    assert hasattr(modules["xformers.components.attention"], "AttentionMask")
    assert modules["xformers"].ops is modules["xformers.ops"]


def test_seer_workload_without_checkout_is_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "vs_upstream.py"),
            "--only",
            "seer-forward",
            "--seer",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"vs_upstream: --seer {tmp_path}: not an upstream checkout (seer/models/unet_3d_condition.py not found)"
    )
