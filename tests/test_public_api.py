"""The public API: an explicit, sorted __all__ that imports without optional extras."""

from __future__ import annotations

import subprocess
import sys

import agentic


def test_all_is_sorted_and_unique() -> None:
    """__all__ is sorted (case-sensitively, as ruff sorts) and has no duplicates."""
    assert agentic.__all__ == sorted(set(agentic.__all__))


def test_every_name_in_all_exists() -> None:
    """Every exported name resolves on the package."""
    missing = [name for name in agentic.__all__ if not hasattr(agentic, name)]
    assert missing == []


def test_no_public_name_left_out() -> None:
    """Every public class or function bound on the package is listed in __all__."""
    public = {
        name
        for name, value in vars(agentic).items()
        if not name.startswith("_") and not isinstance(value, type(sys))
    }
    assert public - set(agentic.__all__) == set()


def test_import_does_not_load_optional_extras() -> None:
    """Importing agentic loads neither redis, fastapi, uvicorn nor typer."""
    code = (
        "import sys, agentic; "
        "print(sorted(m for m in ('redis', 'fastapi', 'uvicorn', 'typer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
