"""torch.hub entry points of avssl.

Load an exported encoder bundle (``avssl export``) from a local checkout::

    import torch
    enc = torch.hub.load("/path/to/avssl", "load_encoder", path="encoders/mavil", source="local")
    enc.video, enc.audio, enc.preprocessing   # frozen encoders (eval mode) + their settings

Only torch and safetensors are needed to load a bundle. The code of the checkout given to
``torch.hub.load`` is used, also when another avssl is installed in the environment (torch.hub
imports this file by path, so this is the one place that puts ``src`` on ``sys.path``); an
avssl already imported in the process is kept.
"""

from __future__ import annotations

import os
import sys

dependencies = ["torch", "safetensors"]


def _avssl_export():
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
    if "avssl" not in sys.modules and os.path.isdir(os.path.join(src, "avssl")):
        sys.path.insert(0, src)  # this checkout's avssl, before any installed one
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
