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


@pytest.fixture(scope="session")
def resnet20_state(shared_data: Path) -> dict:
    """The pretrained ResNet-20 state_dict with the ``module.`` prefix stripped (saved on CUDA: map to CPU)."""
    import torch

    state = torch.load(shared_data / "models" / "resnet20_cifar10.th", weights_only=True, map_location="cpu")
    return {k.removeprefix("module."): v for k, v in state["state_dict"].items()}


@pytest.fixture(scope="module")
def single_thread():
    """Small models on a shared 2-core machine: one torch thread is faster, far faster when oversubscribed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
