"""Shared fixtures: the reference data beside the repository (../shared/data, as in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: real CIFAR-10 and pretrained CIFAR ResNets (see its README)."""
    if not (SHARED_DATA / "models" / "resnet20_cifar10.th").is_file():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA
