"""Upstream reference files kept in tests/fixtures/<backend>/ (each folder's README.md says where they come from)."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


def fixture(backend: str, name: str) -> Path:
    """tests/fixtures/<backend>/<name>; a missing file fails the test, since a parity test that skips proves nothing."""
    path = FIXTURES_DIR / backend / name
    if not path.exists():
        pytest.fail(f"fixture file missing: tests/fixtures/{backend}/{name} (it is part of the repository; restore it "
                    f"with git)", pytrace=False)
    return path
