"""Attention through one function, so every backend gets the same fast path.

Default: `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels on
CUDA). xformers is used only when installed *and* asked for (`VPT_ATTENTION=xformers` or
`set_backend("xformers")`), because SDPA is as fast on current torch and needs no extra package.
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F

_backend = os.environ.get("VPT_ATTENTION", "sdpa")


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def set_backend(name: str) -> None:
    """Select "sdpa" (default) or "xformers"."""
    global _backend
    if name not in ("sdpa", "xformers"):
        raise ValueError(f"unknown attention backend {name!r}; choose sdpa or xformers")
    if name == "xformers" and not xformers_available():
        from vpt.errors import UsageError

        raise UsageError(
            "attention backend xformers requested but xformers is not installed (pip install 'vpt[xformers]')"
        )
    _backend = name


def backend_name() -> str:
    return "xformers" if _backend == "xformers" and xformers_available() else "sdpa"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    causal: bool = False,
) -> torch.Tensor:
    """Softmax(q k^T / sqrt(d)) v for q, k, v of shape (B, heads, N, d) -> (B, heads, N, d).

    `dropout` drops attention probabilities (pass 0 outside training). `causal` lets query i see
    keys j <= i only (lower-triangular mask, without materialising it).
    """
    if backend_name() == "xformers" and mask is None and q.is_cuda:
        import xformers.ops as xops

        bias = xops.LowerTriangularMask() if causal else None
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, p=dropout
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
