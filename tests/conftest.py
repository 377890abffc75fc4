"""Suite-wide pytest settings (GPU tests are skipped on machines without CUDA) and the tiny
synthetic shards the command-line tests share."""

from __future__ import annotations

import os

import pytest
import torch

# Keep tests from oversubscribing the (small) CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory):
    """Synthetic shards, 3 classes x 4 clips, built once per session (test_recipes.py)."""
    from test_recipes import build_tiny_shards

    return build_tiny_shards(tmp_path_factory.getbasetemp())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
