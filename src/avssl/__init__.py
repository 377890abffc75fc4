"""avssl: self-supervised audio-visual pretraining on WebDataset shards.

The top-level package stays light: importing it pulls in neither Lightning nor PyAV.
`load_encoder` and `embed` are imported lazily from `avssl.export`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_encoder", "embed"]


def __getattr__(name: str) -> Any:
    if name in ("load_encoder", "embed"):
        from avssl import export

        return getattr(export, name)
    raise AttributeError(f"module 'avssl' has no attribute {name!r}")
