"""Fixtures for the export tests (see export_fakes.py for the fake objectives)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from tests.export.export_fakes import fake_checkpoint, randomize, register


@pytest.fixture(scope="session")
def fake_objectives() -> types.ModuleType:
    return register()


@pytest.fixture
def save_fake(fake_objectives, tmp_path: Path):
    """``save_fake(name, seed=0, **init) -> (objective, checkpoint path)``."""

    def _save(name: str, seed: int = 0, data: dict | None = None, **init):
        obj = getattr(fake_objectives, name)(**init)
        randomize(obj, seed)
        path = tmp_path / f"{name.lower()}-{seed}.ckpt"
        torch.save(fake_checkpoint(obj, name, data), path)
        return obj.eval(), path

    return _save
