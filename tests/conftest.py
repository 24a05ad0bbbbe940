"""Shared fixtures. Data lives in ../shared beside the checkout; tests fail (never skip) when it is absent."""
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ../shared folder (data, seed report)."""
    if not (SHARED / "data").is_dir():
        pytest.fail(f"{SHARED}/data is missing: clone llama_ft next to the project's shared/ folder.")
    return SHARED
