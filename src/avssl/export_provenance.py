"""The ``provenance`` entry of an export bundle's config: the checkpoint the encoders come from
(file name and SHA-256), its objective, recipe, step, epoch and training data, which encoders
were exported, the avssl and Lightning versions that trained it and the avssl version and time
of the export, and its hyper-parameters (those that are not JSON as their ``repr``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from avssl.export import FORMAT_VERSION_PLAIN


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _provenance(ckpt: dict, exported: dict, shared: bool, src: Path) -> dict:
    import avssl

    meta = ckpt["avssl"]
    hparams = {k: v for k, v in dict(ckpt.get("hyper_parameters") or {}).items() if k[:1] != "_"}
    try:
        json.dumps(hparams)
    except TypeError:
        hparams = {k: repr(v) for k, v in hparams.items()}
    return {
        "objective": meta["objective"],
        "recipe": meta.get("recipe"),
        "step": ckpt.get("global_step"),
        "epoch": ckpt.get("epoch"),
        "avssl_version": meta.get("version"),
        "exported_with": avssl.__version__,
        "format_version": FORMAT_VERSION_PLAIN,
        "encoder": {"which": exported.get("which"), "note": exported.get("note", "")},
        "train_data": meta.get("train_data"),
        "shared_backbone": shared,
        "checkpoint": src.name,
        "checkpoint_sha256": _sha256(src),
        "lightning_version": ckpt.get("pytorch-lightning_version"),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hyper_parameters": hparams,
    }
