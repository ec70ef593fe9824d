import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

# Tests run on CPU with few threads; keep them deterministic and quiet.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `precision: auto` means bf16 on CPUs with bf16 units: pin fp32 so results do not depend on the CI CPU's
# model (tests of the detection itself set the probes explicitly).
os.environ.setdefault("VPT_BF16", "0")
sys.path.insert(0, str(Path(__file__).parent))


class Result(NamedTuple):
    exit_code: int
    output: str


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """`--threads N` sets torch's thread count for the whole process: each test starts at the same count, so
    one test's choice cannot change another's speed or float rounding."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch):
    """Commands run in-process read the machine's load for `--threads 0` and, when it is busy, say so in one
    extra line (`vpt.commands.options.apply_threads`). Tests see a quiet machine, so that what a command
    prints does not depend on other jobs (`test_cli_conventions.py` tests the busy case itself)."""
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


@pytest.fixture()
def invoke(capsys):
    """Run `vpt ARGS` through the real entry point (one-line errors, exit codes) and capture what it printed."""
    from vpt.cli import main

    def run(*args) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out + captured.err)

    return run


@pytest.fixture(scope="module")
def vqvae_ckpt(tmp_path_factory) -> Path:
    """The tiny taming VQGAN of the RIVER fixtures as a Lightning-style vqvae.ckpt (32x32 -> 4x16x16)."""
    import torch
    from fixture_paths import fixture
    from safetensors.torch import load_file

    path = tmp_path_factory.mktemp("ae") / "vqvae.ckpt"
    torch.save({"state_dict": load_file(fixture("river", "ldmvq_tiny.weights.safetensors"))}, path)
    return path
