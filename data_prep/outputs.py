"""The outputs of a prep run besides the shards: split key lists, ``stats.json`` (fbank
mean/std) and ``manifest.json`` (format v1, fields in ``data_prep/README.md``)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

from avssl.data.writer import FbankStats, write_json
from data_prep.common import Plan

FORMAT, VERSION = "avssl-shards", 1
# AudioSet statistics (AudioMAE), used only when a dataset has no audio at all.
DEFAULT_FBANK = (-4.2677, 4.5690)


def fbank_stats(sidecars: list[dict], limit: int) -> FbankStats:
    """The log-mel sums of up to ``limit`` clips with audio, chosen by a hash of the key:
    random-looking, deterministic, and ``limit`` clips whenever that many have audio (clips
    without audio or that failed are not drawn)."""
    clips = {k: v for side in sidecars for k, v in side["clip_stats"].items()}
    order = sorted(clips, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
    stats = FbankStats()
    for key in order[: max(0, limit)]:
        total, total_sq, count = clips[key]
        stats.merge({"total": total, "total_sq": total_sq, "count": count, "clips": 1})
    return stats


def write_outputs(out: Path, plan: Plan, sidecars: list[dict], prep: dict) -> dict:
    """Writes the splits, ``stats.json`` and ``manifest.json`` of a converted plan; returns the
    manifest."""
    converted = {k for s in sidecars for k in s["keys"]}
    failures = plan.failures + [f for s in sidecars for f in s["failures"]]
    counts = _write_splits(out / "splits", plan.splits, converted)
    _write_stats(out / "stats.json", sidecars, prep)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": plan.dataset,
        "num_samples": len(converted),
        "num_failed": len(failures),
        **{f"num_with_{m}": _count_with(sidecars, m) for m in ("video", "audio")},
        "shards": [
            {"file": s["file"], "num_samples": s["num_samples"]}
            for s in sidecars
            if s["num_samples"] > 0
        ],
        "classes": plan.classes,
        "multilabel": plan.multilabel,
        "splits": counts,
        "prep": prep,
        "failures": failures,
        "notes": plan.notes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def _write_splits(split_dir: Path, splits: dict[str, list[str]], converted: set[str]) -> dict:
    """Writes ``<split>.txt`` with the converted keys of each split (removing splits the plan
    no longer has) and returns the per-split counts."""
    split_dir.mkdir(exist_ok=True)
    for stale in split_dir.glob("*.txt"):
        if stale.stem not in splits:
            stale.unlink()
    counts = {}
    for name, keys in splits.items():
        kept = [k for k in keys if k in converted]
        (split_dir / f"{name}.txt").write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        counts[name] = len(kept)
    return counts


def _write_stats(path: Path, sidecars: list[dict], prep: dict) -> None:
    """Writes ``stats.json``: fbank mean/std over the chosen clips (AudioSet's without audio)."""
    stats = fbank_stats(sidecars, prep["stats_clips"])
    mean, std = stats.mean_std() if stats.count else DEFAULT_FBANK
    write_json(
        path,
        {
            "fbank_mean": mean,
            "fbank_std": std,
            "num_clips": stats.clips,
            "num_mel_bins": 128,
            "sample_rate": prep["sample_rate"],
            "frame_shift_ms": 10.0,
            **({} if stats.count else {"note": "no audio: AudioSet statistics as placeholder"}),
        },
    )


def _count_with(sidecars: list[dict], modality: str) -> int | None:
    """Converted samples with ``modality``; None when a shard of an older version lacks it."""
    counts = [s.get(f"num_with_{modality}") for s in sidecars if s["num_samples"] > 0]
    return None if None in counts else sum(counts)  # type: ignore[arg-type]
