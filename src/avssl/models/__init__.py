"""avssl.models: torch-only encoders, decoders, fusion layers, masking and shared helpers.

Uniform encoder interface (DESIGN section 3): ``embed_dim``, ``forward_features(x, keep=None)``
-> ``[B, N, D]``, ``forward(x)`` -> ``[B, D]`` mean-pooled, ``patchify``, ``grid_size``,
``config()``; :func:`build_encoder` rebuilds an encoder from its ``config()``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from avssl.models.vit import SIZES, AudioViT, VideoViT, ViTEncoder

__all__ = ["SIZES", "AudioViT", "VideoViT", "ViTEncoder", "build_encoder"]

_ENCODERS: dict[str, type[ViTEncoder]] = {"audio": AudioViT, "video": VideoViT}


def build_encoder(config: dict[str, Any]) -> nn.Module:
    """Builds an encoder from ``encoder.config()`` (weights are not included).

    Args:
        config: dict with ``"modality"`` (``"audio"`` or ``"video"``) and the constructor
            arguments of that encoder.

    Raises:
        ValueError: unknown modality or constructor arguments.
    """
    cfg = dict(config)
    modality = cfg.pop("modality", None)
    if modality not in _ENCODERS:
        raise ValueError(
            f"encoder config: unknown modality {modality!r}; expected one of {sorted(_ENCODERS)}"
        )
    try:
        return _ENCODERS[modality](**cfg)
    except TypeError as err:
        raise ValueError(f"encoder config for {modality}: {err}") from None
