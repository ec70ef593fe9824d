"""The command line: help on everything, one-line errors, `python -m vpt`."""

from __future__ import annotations

import subprocess
import sys

import typer

from vpt.cli import app


def _commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


def test_every_command_and_option_has_help():
    import click

    root = typer.main.get_command(app)
    names = []
    for path, command in _commands(root):
        names.append(" ".join(path))
        assert command.help or command.short_help, f"vpt {' '.join(path)} has no help text"
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"vpt {' '.join(path)} {param.opts[0]} has no help text"
                assert param.show_default is not False, f"vpt {' '.join(path)} {param.opts[0]} hides its default"
    assert "info" in names


def test_python_dash_m_vpt_lists_commands():
    result = subprocess.run([sys.executable, "-m", "vpt", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "info" in result.stdout and "Usage" in result.stdout


def test_unknown_command_exits_2():
    result = subprocess.run([sys.executable, "-m", "vpt", "bogus"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "No such command" in result.stderr


def test_version_prints_the_package_version():
    import vpt

    result = subprocess.run([sys.executable, "-m", "vpt", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"vpt {vpt.__version__}"
