"""Shared fixtures: the real SmolLM2 model and tiny synthetic models written by fixtures.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mer
from mer.default_model import pull


def smollm2_path() -> Path:
    """Return the SmolLM2-135M-Instruct Q4_1 file: $MER_TEST_MODEL, else the default model
    (downloaded on first use)."""
    if os.environ.get("MER_TEST_MODEL"):
        return Path(os.environ["MER_TEST_MODEL"])
    return pull()


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """Path of the real SmolLM2 model."""
    path = smollm2_path()
    if not path.is_file():
        pytest.skip(f"real model not found at {path}")
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_file: Path) -> mer.Model:
    """The real SmolLM2 model, opened once for the session with 2 threads."""
    return mer.Model(smollm2_file, threads=2)
