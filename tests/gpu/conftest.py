"""Tests that need a CUDA GPU: every test in this folder is skipped where torch sees none.

On a GPU machine: `python -m pytest tests/gpu` (benchmarks/gpu_check.sh runs them first).
"""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch sees none)")
    for item in items:
        if "gpu" in item.path.parts:
            item.add_marker(skip)


@pytest.fixture
def cuda():
    return torch.device("cuda")
