"""Upstream reference files kept in tests/fixtures/<backend>/ (each folder's README.md says where they come from)."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


def fixture(backend: str, name: str) -> Path:
    """tests/fixtures/<backend>/<name>; a missing file fails the test, since a parity test that skips proves nothing."""
    path = FIXTURES_DIR / backend / name
    if not path.exists():
        pytest.fail(
            f"fixture file missing: tests/fixtures/{backend}/{name} (it is part of the repository; restore it "
            f"with git)",
            pytrace=False,
        )
    return path


def key_shapes(backend: str, name: str) -> dict[str, tuple[int, ...]]:
    """A recorded key list (`key<TAB>shape<TAB>dtype` lines, shapes as (..) or [..]) -> {key: shape}."""
    shapes = {}
    for line in fixture(backend, name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.strip("()[]").split(",") if s.strip())
    return shapes
