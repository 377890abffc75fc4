"""On-disk cache of frozen features, one file pair per (encoder, modality, data, settings).

``<cache_dir>/<hash>.safetensors`` holds ``features`` float32 ``[N, K, D]``, ``mask`` uint8
``[N]`` (0 where the sample has no such modality; its features are zeros) and ``labels``
(int64 ``[N]`` or float32 ``[N, C]``); ``<hash>.json`` holds the sample keys in row order, the
keys that failed to decode, and the settings that were hashed. No pickle is involved.

The hash covers the encoder's weights and config, the preprocessing, the number of clips, the
numerical precision, the data folder's identity (path, manifest ``created`` and size) and the
source of the code that computes features (:func:`code_identity`), so a second evaluation of the
same encoder on the same data with the same code reuses the features, while any change
extracts them afresh.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

CACHE_VERSION = 1


def hash_module(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and bytes, in sorted order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# Source folders whose code turns a clip into features (decoding, fbank, transforms, encoders):
# a change there changes the features even for the same weights, so it is part of the key.
CODE_DIRS = ("data", "models")
# ... and the evaluator modules that run the encoders over the data: the settings and the
# cache lookup (features.py), the loader stream, the clip batching, autocast and the
# per-clip encoding loop (_extract.py).
CODE_FILES = ("evaluators/features.py", "evaluators/_extract.py")


@functools.lru_cache(maxsize=1)
def code_identity() -> str:
    """sha256 of the feature-producing source files of this installation (``avssl/data``,
    ``avssl/models``, ``avssl/evaluators/features.py`` and ``avssl/evaluators/_extract.py``):
    features cached by other code are not reused (e.g. after an update of the patch embedding,
    of the fbank or of the extraction loop)."""
    root = Path(__file__).resolve().parents[1]  # the avssl package
    files = sorted(p for d in CODE_DIRS for p in (root / d).rglob("*.py"))
    files += [root / f for f in CODE_FILES]
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(settings: dict) -> str:
    """Short stable hash of a json-serialisable settings dict."""
    text = json.dumps({"cache_version": CACHE_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class CachedFeatures:
    """Features of one modality for some samples of a dataset (rows follow ``keys``)."""

    keys: list[str]
    features: torch.Tensor  # [N, K, D]
    mask: torch.Tensor  # [N] bool
    labels: torch.Tensor  # [N] long or [N, C] float
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def merge(self, other: CachedFeatures) -> CachedFeatures:
        """Rows of ``self`` then the rows of ``other`` whose keys are new."""
        have = set(self.keys)
        new = [i for i, k in enumerate(other.keys) if k not in have]
        if not self.keys:
            return other
        sel = torch.tensor(new, dtype=torch.long)
        return CachedFeatures(
            self.keys + [other.keys[i] for i in new],
            torch.cat([self.features, other.features[sel]]),
            torch.cat([self.mask, other.mask[sel]]),
            torch.cat([self.labels, other.labels[sel]]),
            {**self.failed, **other.failed},
        )


def cache_paths(cache_dir: str | os.PathLike, key: str) -> tuple[Path, Path]:
    base = Path(cache_dir)
    return base / f"{key}.safetensors", base / f"{key}.json"


def load(cache_dir: str | os.PathLike, key: str) -> CachedFeatures | None:
    """The cached features, or None when absent or unreadable (then they are re-extracted)."""
    from safetensors.torch import load_file

    tensor_path, meta_path = cache_paths(cache_dir, key)
    if not (tensor_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(tensor_path))
        feats = CachedFeatures(
            list(meta["keys"]),
            tensors["features"],
            tensors["mask"].bool(),
            tensors["labels"],
            dict(meta.get("failed", {})),
        )
    except Exception:  # noqa: BLE001 - any unreadable cache (SafetensorError, ...) is re-extracted
        return None
    if not len(feats.keys) == len(feats.features) == len(feats.mask) == len(feats.labels):
        return None
    return feats


def save(cache_dir: str | os.PathLike, key: str, feats: CachedFeatures, settings: dict) -> None:
    """Writes the pair atomically (temporary files, then rename; the json last)."""
    from safetensors.torch import save_file

    tensor_path, meta_path = cache_paths(cache_dir, key)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tensor_path.with_suffix(".safetensors.tmp")
    save_file(
        {
            "features": feats.features.float().contiguous(),
            "mask": feats.mask.to(torch.uint8).contiguous(),
            "labels": feats.labels.contiguous(),
        },
        str(tmp),
    )
    tmp.replace(tensor_path)
    meta = {"keys": feats.keys, "failed": feats.failed, "settings": settings}
    tmp_meta = meta_path.with_suffix(".json.tmp")
    tmp_meta.write_text(json.dumps(meta, default=str))
    tmp_meta.replace(meta_path)
