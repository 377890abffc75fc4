"""torch.hub entry points of avssl.

Load an exported encoder bundle (``avssl export``) from a local checkout::

    import torch
    enc = torch.hub.load("/path/to/avssl", "load_encoder", path="encoders/mavil", source="local")
    enc.video, enc.audio, enc.preprocessing   # frozen encoders (eval mode) + their settings

Only torch and safetensors are needed to load a bundle. When avssl is not installed in the
environment, the checkout's ``src/`` folder is used (torch.hub imports this file by path, so
this is the one place that puts ``src`` on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import os
import sys

dependencies = ["torch", "safetensors"]


def _avssl_export():
    if importlib.util.find_spec("avssl") is None:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
    from avssl import export

    return export


def load_encoder(path: str, device: str = "cpu"):
    """Loads frozen encoders from an avssl bundle folder (or a training checkpoint).

    Args:
        path: bundle folder written by ``avssl export`` (``make export``), its config.json, or
            a training checkpoint (that needs Lightning too).
        device: device for the encoders.

    Returns:
        ``avssl.export.EncoderBundle`` with ``.audio``, ``.video``, ``.config``,
        ``.preprocessing`` and ``.embed_dim``.
    """
    return _avssl_export().load_encoder(path, device=device)
