"""The extraction loop: the loader's evaluation stream over chosen keys -> encoder features.

On a GPU the loader workers leave the fbank and the normalisation to the GPU
(:func:`avssl.data.batching.features_on_device`, as training does): the same inputs to float
rounding for ~1.5x the samples per worker."""

from __future__ import annotations

import torch

from avssl.cli import UserError
from avssl.evaluators.cache import CachedFeatures


def make_loader(
    data: str,
    keys: list[str],
    prep: dict,
    num_clips: int,
    batch_size: int,
    num_workers: int,
    on_device: bool = False,
):
    """The loader's evaluation stream (every key once, K uniformly spaced centre-cropped clips)
    restricted to ``keys``, in (shard, position) order; ``on_device``: batches to finish with
    ``features_on_device``."""
    from avssl.data.datamodule import EpochLoader, build_processor
    from avssl.data.shards import SplitTable, resolve, shard_keys
    from avssl.data.streams import EvalStream

    source = resolve(data)
    wanted = set(keys)
    table = SplitTable(
        list(source.shards), [[k for k in shard_keys(s) if k in wanted] for s in source.shards]
    )
    proc = build_processor(prep, "eval", num_clips, "aligned", train=False, on_device=on_device)
    stream = EvalStream(
        table, proc, batch_size, 0, 1, len(source.classes), source.multilabel, 0.0, 0
    )
    return EpochLoader(stream, num_workers=num_workers)


def _encode(enc, x: torch.Tensor, mask: torch.Tensor, k: int, device, amp, what: str):
    """Per-clip features ``[B, K, D]`` of the rows where ``mask`` is True (zeros elsewhere)."""
    b = len(mask)
    out = torch.zeros(b, k, enc.embed_dim)
    if not bool(mask.any()):
        return out
    rows = mask.to(x.device)
    xs = x[rows] if k > 1 else x[rows].unsqueeze(1)  # [b', K, ...]
    flat = xs.reshape(-1, *xs.shape[2:]).to(device, non_blocking=True)  # [b' * K, ...]
    try:
        with torch.inference_mode(), amp:
            f = enc(flat).float()  # [b' * K, D]
    except (RuntimeError, ValueError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{what} rejects the data's input of shape {list(flat.shape[1:])}: {msg}"
        ) from None
    out[mask] = f.cpu().reshape(-1, k, f.shape[-1])  # [b', K, D]
    return out


def run_encoders(
    bundle,
    data,
    keys,
    modalities,
    num_clips,
    batch_size,
    num_workers,
    device,
    precision,
    progress,
    on_device: bool | None = None,
) -> dict[str, CachedFeatures]:
    """Runs the bundle's encoders over ``keys``; returns per-modality ``CachedFeatures``.
    ``on_device`` (default: on a GPU) finishes the inputs on ``device`` (module docstring)."""
    from tqdm import tqdm

    from avssl.data.fbank import FbankConfig

    device = torch.device(device)
    on_device = device.type == "cuda" if on_device is None else on_device
    fbank = FbankConfig(**bundle.preprocessing["fbank"])
    loader = make_loader(
        data, keys, bundle.preprocessing, num_clips, batch_size, num_workers, on_device
    )
    encs = {m: bundle.encoders()[m].to(device).eval() for m in modalities}
    feats: dict[str, list] = {m: [] for m in modalities}
    masks: dict[str, list] = {m: [] for m in modalities}
    out_keys: list[str] = []
    labels: list[torch.Tensor] = []
    failed: dict[str, str] = {}
    bar = tqdm(total=len(keys), desc="features", unit="video", disable=not progress)
    for batch in loader:
        if on_device:  # inputs finished on the device; masks and labels stay on the host
            _finish_on_device(batch, device, fbank)
        _encode_batch(bundle, encs, batch, modalities, num_clips, device, precision, feats, masks)
        bar.update(_note_batch(batch, out_keys, labels, failed))
    bar.close()
    return _collect_all(keys, out_keys, feats, masks, labels, failed, encs)


def _finish_on_device(batch, device: torch.device, fbank) -> None:
    """Replaces the batch's audio and video by their fbank / normalised frames made on
    ``device`` (:func:`avssl.data.batching.features_on_device`)."""
    from avssl.data.batching import features_on_device

    done = features_on_device(batch.to(device, non_blocking=True), fbank)
    batch.audio, batch.video = done.audio, done.video


def _encode_batch(
    bundle,
    encs: dict,
    batch,
    modalities,
    num_clips: int,
    device: torch.device,
    precision,
    feats: dict[str, list],
    masks: dict[str, list],
) -> None:
    """Appends each modality's per-clip features of the batch (:func:`_encode`) to ``feats``
    and its mask to ``masks``."""
    from avssl.evaluators.features import autocast

    for m in modalities:
        x, mask = (
            (batch.audio, batch.audio_mask) if m == "audio" else (batch.video, batch.video_mask)
        )
        what = f"the {m} encoder of bundle {bundle.path}"
        amp = autocast(device, precision)
        feats[m].append(_encode(encs[m], x, mask, num_clips, device, amp, what))
        masks[m].append(mask)


def _note_batch(batch, out_keys: list[str], labels: list, failed: dict[str, str]) -> int:
    """Appends the batch's keys and labels, records the keys the loader could not decode in
    ``failed``; returns how many requested keys the batch settled (for the progress bar)."""
    out_keys += batch.key
    labels.append(batch.label)
    skipped = batch.extra.get("skipped_keys", [])
    failed.update({key: "could not be decoded (see the loader's warning)" for key in skipped})
    return len(batch.key) + len(skipped)


def _collect_all(keys, out_keys, feats, masks, labels, failed, encs) -> dict[str, CachedFeatures]:
    """Per-modality ``CachedFeatures`` of the gathered batches; the requested keys the loader
    never yielded are added to ``failed``."""
    seen = set(out_keys)
    failed.update(
        {k: "not yielded by the loader" for k in keys if k not in seen and k not in failed}
    )
    lab = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    return {
        m: _collect(out_keys, feats[m], masks[m], lab, failed, encs[m].embed_dim) for m in feats
    }


def _collect(keys, feats, masks, labels, failed, dim) -> CachedFeatures:
    if not feats:  # every requested sample failed
        return CachedFeatures(
            [], torch.zeros(0, 1, dim), torch.zeros(0, dtype=torch.bool), labels, dict(failed)
        )
    return CachedFeatures(list(keys), torch.cat(feats), torch.cat(masks), labels, dict(failed))
