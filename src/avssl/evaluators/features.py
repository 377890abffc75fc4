"""Frozen-feature extraction with an on-disk cache (DESIGN section 5).

Every sample of the requested keys is read once by the loader's evaluation path (K uniformly
spaced clips, centre crop, one fbank window centred on each clip), each modality's encoder maps
each clip to ``[D]`` (mean-pooled tokens), and the ``[N, K, D]`` features are cached per modality
(:mod:`avssl.evaluators.cache`). By default a sample's K clip features are averaged.

*Joint* features are the concatenation of the L2-normalised audio and video features
(``[N, D_a + D_v]``); a missing modality contributes zeros. Samples without a modality get zero
features and ``mask`` False for it; evaluation leaves them out of that modality's rounds (of
the joint rounds when either is missing, :mod:`avssl.evaluators.tasks`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from avssl.cli import UserError
from avssl.evaluators import cache
from avssl.evaluators._tensors import l2_normalize, pick_device

MODALITIES = ("audio", "video")
FEATURE_KINDS = ("audio", "video", "joint")
JOINT_DOC = (
    "joint = concatenation of the L2-normalised audio and video features (clip means); "
    "evaluated on the samples that have both"
)


@dataclass
class FeatureSet:
    """Features of a list of samples; rows follow ``keys``.

    Attributes:
        keys: sample keys.
        labels: long ``[N]`` (or float ``[N, C]`` multi-hot).
        clips: modality -> float ``[N, K, D]`` per-clip features (zeros where masked).
        masks: modality -> bool ``[N]``, False where the sample lacks that modality.
        skipped: key -> reason for requested samples that could not be decoded (not in rows).
    """

    keys: list[str]
    labels: torch.Tensor
    clips: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, keys: list[str]) -> FeatureSet:
        """The rows of ``keys`` that are present (absent ones must be in ``skipped``)."""
        index = {k: i for i, k in enumerate(self.keys)}
        rows = [index[k] for k in keys if k in index]
        wanted = set(keys)
        sel = torch.tensor(rows, dtype=torch.long)
        return FeatureSet(
            [self.keys[i] for i in rows],
            self.labels[sel],
            {m: x[sel] for m, x in self.clips.items()},
            {m: x[sel] for m, x in self.masks.items()},
            {k: r for k, r in self.skipped.items() if k in wanted},
        )

    def get(self, kind: str, per_clip: bool = False) -> torch.Tensor:
        """Features ``[N, D]`` (clip mean) or ``[N, K, D]`` for "audio", "video" or "joint"."""
        if kind == "joint":
            a, v = (self.get(m, per_clip) for m in MODALITIES)
            return torch.cat([_l2(a), _l2(v)], dim=-1)  # [N, (K,) D_a + D_v]
        if kind not in self.clips:
            raise KeyError(f"no {kind} features were extracted")
        x = self.clips[kind]
        return x if per_clip else x.mean(dim=1)

    def mask(self, kind: str) -> torch.Tensor:
        """``[N]`` bool: the sample has ``kind``'s features; for "joint", both modalities
        (``JOINT_DOC``: joint features are evaluated on the samples that have both)."""
        if kind == "joint":
            return self.masks["audio"] & self.masks["video"]
        return self.masks[kind]


def _l2(x: torch.Tensor) -> torch.Tensor:
    return l2_normalize(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def data_identity(data: str) -> dict:
    """What makes a data folder (or shard list) the same data for the cache."""
    from avssl.data.shards import resolve

    src = resolve(data)
    if src.root is not None and src.manifest:
        m = src.manifest
        return {
            "root": str(src.root.resolve()),
            "created": m.get("created"),
            "num_samples": m.get("num_samples"),
            "dataset": m.get("dataset"),
        }
    return {
        "shards": [
            (str(Path(s).resolve()), os.path.getsize(s), os.path.getmtime(s)) for s in src.shards
        ]
    }


def settings_for(bundle, modality: str, data: str, num_clips: int, precision: str) -> dict:
    """The hashed settings of one modality's cache file."""
    enc = bundle.encoders()[modality]
    prep = dict(bundle.preprocessing)
    prep.pop("assumed", None)
    prep.pop("eval_transform", None)
    return {
        "modality": modality,
        "encoder_sha256": cache.hash_module(enc),
        "encoder_config": bundle.config.get(modality),
        "preprocessing": prep,
        "num_clips": int(num_clips),
        "precision": precision,
        "data": data_identity(data),
        "code": cache.code_identity(),
    }


def extract_features(
    bundle,
    data: str,
    keys: list[str],
    modalities: tuple[str, ...] = MODALITIES,
    *,
    num_clips: int = 1,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = "eval_out/cache",
    precision: str | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Features of ``keys`` for each modality, read from the cache or extracted (then cached).

    Args:
        bundle: an ``avssl.export.EncoderBundle`` (``load_encoder(path)``).
        data: prepared dataset folder (or shard pattern) holding the keys.
        keys: sample keys to featurise.
        modalities: "audio" and/or "video"; the bundle must have those encoders.
        num_clips: K clips per sample, uniformly spaced.
        batch_size / num_workers: loader settings. device: None -> CUDA when available.
        cache_dir: cache folder; None disables the cache.
        precision: "fp32" or "bf16" (autocast; default bf16 on CUDA, fp32 on CPU).
        progress: tqdm progress bar.
    """
    dev = pick_device(device)
    precision = precision or ("bf16" if dev.type == "cuda" else "fp32")
    for m in modalities:
        if bundle.encoders().get(m) is None:
            raise UserError(f"encoder bundle {bundle.path} has no {m} encoder")
    settings = {m: settings_for(bundle, m, data, num_clips, precision) for m in modalities}
    hashes = {m: cache.cache_key(s) for m, s in settings.items()}
    have = _cached(cache_dir, hashes, modalities)
    todo_by_m = {m: _missing(have[m], keys) for m in modalities}
    todo = sorted({k for t in todo_by_m.values() for k in t})
    if todo:
        from avssl.evaluators._extract import run_encoders

        wanted = tuple(m for m in modalities if todo_by_m[m])
        new = run_encoders(
            bundle, data, todo, wanted, num_clips, batch_size, num_workers, dev, precision, progress
        )
        for m in wanted:
            have[m] = have[m].merge(new[m])
            if cache_dir:
                cache.save(cache_dir, hashes[m], have[m], settings[m])
    return _assemble(have, keys, modalities)


def _cached(
    cache_dir: str | os.PathLike | None, hashes: dict[str, str], modalities: tuple[str, ...]
) -> dict[str, cache.CachedFeatures]:
    """Each modality's features in the cache under its hash; empty ones where the cache has
    none or ``cache_dir`` is None (no cache)."""
    empty = cache.CachedFeatures(
        [], torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0)
    )
    return {
        m: (cache.load(cache_dir, hashes[m]) if cache_dir else None) or empty for m in modalities
    }


def _missing(feats: cache.CachedFeatures, keys: list[str]) -> list[str]:
    done = set(feats.keys) | set(feats.failed)
    return [k for k in keys if k not in done]


def _assemble(have: dict, keys: list[str], modalities: tuple[str, ...]) -> FeatureSet:
    """Rows of ``keys`` from each modality's cached features (failed keys -> ``skipped``)."""
    skipped: dict[str, str] = {}
    for m in modalities:
        skipped.update({k: have[m].failed[k] for k in keys if k in have[m].failed})
    rows_keys = [k for k in keys if k not in skipped]
    clips, masks = {}, {}
    for m in modalities:
        index = have[m].index()
        sel = torch.tensor([index[k] for k in rows_keys], dtype=torch.long)
        clips[m], masks[m] = have[m].features[sel].float(), have[m].mask[sel]
    first = have[modalities[0]]  # labels are the same in every modality's cache
    index = first.index()
    labels = first.labels[torch.tensor([index[k] for k in rows_keys], dtype=torch.long)]
    return FeatureSet(rows_keys, labels, clips, masks, skipped)


def autocast(device: torch.device, precision: str):
    """bf16 autocast context (or a null context for fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return contextlib.nullcontext()
