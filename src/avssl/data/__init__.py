"""Shard reading, decoding, clip sampling, transforms, the DataModule and the synthetic data.

Imports are lazy so that light modules (the synthetic generator's worker processes, the shard
writer) do not pay for importing torch and Lightning.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AVBatch", "AVDataModule"]


def __getattr__(name: str) -> Any:
    if name == "AVBatch":
        from avssl.data.batch import AVBatch

        return AVBatch
    if name == "AVDataModule":
        from avssl.data.datamodule import AVDataModule

        return AVDataModule
    raise AttributeError(f"module 'avssl.data' has no attribute {name!r}")
