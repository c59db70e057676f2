"""Shared fixtures: real faces from ../shared/data (skipped with a reason where it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from maskid.paths import shared_data_dir

# Keep tests predictable on the 2-core CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        reason = "../shared/data is not present (research data lives beside the checkout)"
        if os.environ.get("MASKID_REQUIRE_SHARED"):  # CI has the data: a skip would hide it
            pytest.fail(reason + " but MASKID_REQUIRE_SHARED is set")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def lfw10(shared_data: Path) -> Path:
    return shared_data / "demo" / "lfw10"


@pytest.fixture(scope="session")
def m2fred(shared_data: Path) -> Path:
    return shared_data / "eval" / "m2fred"


@pytest.fixture(scope="session")
def mask_templates(shared_data: Path) -> Path:
    return shared_data / "masks"
