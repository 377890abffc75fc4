"""``prepare_dataset``: source adapter -> plan -> shards, splits, stats and manifest (format v1).

The output folder layout and json fields are documented in ``data_prep/README.md`` and DESIGN
section 3. A video is stored once; splits are key lists written after conversion, holding only
the keys that were converted (files that failed or were missing are in ``failures``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avssl.cli import UserError
from avssl.data.writer import EncodeSettings
from data_prep.checks import (
    check_encoding,
    check_numbers,
    check_plan_found_clips,
    consistency_notes,
)
from data_prep.common import Context, Item, Plan
from data_prep.outputs import DEFAULT_FBANK, FORMAT, VERSION, fbank_stats, write_outputs
from data_prep.shards import run_shards

__all__ = ["DATASETS", "DEFAULT_FBANK", "FORMAT", "VERSION", "fbank_stats", "prepare_dataset"]

DATASETS = (
    "ucf101",
    "hmdb51",
    "esc50",
    "vggsound",
    "audioset",
    "kinetics_sounds",
    "folder",
    "synthetic",
)


def _log(msg: str) -> None:
    print(f"data_prep: {msg}", file=sys.stderr, flush=True)


def _check_out(out: Path, dataset: str) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".data_prep_write_test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to OUT {out} ({err.strerror or err})") from None
    old = out / "manifest.json"
    if old.exists() and not old.is_file():
        raise UserError(f"OUT {out}: manifest.json is not a file; remove it or choose another OUT")
    previous = _previous_dataset(old) if old.is_file() else None
    if previous not in (None, dataset):
        raise UserError(f"OUT {out} already holds dataset {previous!r}; choose another OUT")


def _previous_dataset(manifest: Path) -> Any:
    """The ``dataset`` an existing manifest names; None when it names none: not readable, not
    JSON, or JSON other than an object (then it is not taken for a manifest of data_prep's,
    and this run replaces it)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("dataset") if isinstance(data, dict) else None


def _load_adapter(dataset: str) -> Any:
    if dataset not in DATASETS:
        raise UserError(f"unknown DATASET {dataset!r}; choose one of {', '.join(DATASETS)}")
    return importlib.import_module(f"data_prep.{dataset}")


def _check_options(adapter: Any, dataset: str, options: dict[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in options.items() if v is not None and v != ""}
    for key in given:
        if key not in adapter.OPTIONS:
            raise UserError(f"option --{key.replace('_', '-')} does not apply to dataset {dataset}")
    return given


def prepare_dataset(
    dataset: str,
    root: str | os.PathLike | None = None,
    splits: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    workers: int = 1,
    max_failures: float = 0.05,
    *,
    shard_size: int = 256,
    short_side: int = 256,
    max_fps: float = 30.0,
    sample_rate: int = 16000,
    crf: int = 23,
    preset: str = "veryfast",
    tune: str = "fastdecode",
    audio_codec: str = "flac",
    jpeg_fps: float = 0.0,
    stats_clips: int = 2000,
    progress: bool = True,
    log: Callable[[str], None] = _log,
    **options: Any,
) -> dict:
    """Converts a dataset into shard format v1 under ``out`` and returns the manifest.

    Args:
        dataset: one of :data:`DATASETS`.
        root: the dataset's clip folder (for ``synthetic``: where to generate; default out/raw).
        splits: folder (or file) of official index/split files; found next to ROOT if None.
        out: output folder (created); a rerun skips finished shards.
        workers: conversion processes.
        max_failures: only recorded in ``manifest["prep"]``; the CLI turns it into the exit code.
        shard_size: samples per shard. short_side, max_fps, sample_rate, crf, preset, tune:
            encoding (tune: libx264's, "none" for none; see writer.X264_TUNES).
        audio_codec: the audio member, "flac" (lossless, smaller) or "wav" (16-bit PCM, the
            same samples; the loader reads it without decoding).
        jpeg_fps: > 0 keeps the video as one JPEG frame per ``1 / jpeg_fps`` seconds instead
            of the mp4 (sparse-frame recipes); 0 (default) writes the mp4.
        stats_clips: clips (with audio) used for the fbank mean/std.
        progress: show progress bars. log: one-line messages.
        **options: dataset-specific options (pattern, csv, labels, layout, num_classes, ...).

    Raises:
        UserError: unknown dataset, missing ROOT/split files, unwritable ``out``, bad option,
            no clip found (none listed or present, none failed).
    """
    adapter = _load_adapter(dataset)
    check_numbers(workers, shard_size, short_side, sample_rate, max_fps, max_failures, stats_clips)
    tune = check_encoding(crf, preset, tune, audio_codec, jpeg_fps, max_fps)
    if out is None or str(out) == "":
        raise UserError("OUT (--out) is required")
    out = Path(out)
    given = _check_options(adapter, dataset, options)
    root_p, splits_p = _optional_path(root), _optional_path(splits)
    if splits_p is not None and not splits_p.exists():
        raise UserError(f"SPLITS {splits_p} does not exist")
    _check_out(out, dataset)
    plan = adapter.collect(Context(dataset, root_p, splits_p, out, int(workers), given, progress))
    check_plan_found_clips(plan, root_p)
    plan.notes += consistency_notes(plan, getattr(adapter, "OFFICIAL_SPLITS", None))
    for note in plan.notes:
        log(note)
    settings = _settings(short_side, max_fps, sample_rate, crf, preset, tune, audio_codec, jpeg_fps)
    settings.threads = max(1, (os.cpu_count() or 1) // int(workers)) if workers > 1 else 0
    check = {
        **settings.to_dict(),
        "dataset": dataset,
        "want_video": plan.want_video,
    }
    sidecars = _convert(plan, out, settings, check, int(workers), int(shard_size), progress, log)
    prep = {
        **check,
        "video_codec": "mjpeg" if float(jpeg_fps) > 0 else "h264",
        "shard_size": shard_size,
        "max_failures": max_failures,
        "stats_clips": int(stats_clips),
        **_paths(root_p, splits_p),
        "options": given,
    }
    return write_outputs(out, plan, sidecars, prep)


def _optional_path(value: str | os.PathLike | None) -> Path | None:
    return Path(value) if value not in (None, "") else None


def _paths(root: Path | None, splits: Path | None) -> dict[str, str | None]:
    """The manifest's ``root`` and ``splits`` entries (None where not given)."""
    return {"root": str(root) if root else None, "splits": str(splits) if splits else None}


def _settings(
    short_side: int,
    max_fps: float,
    sample_rate: int,
    crf: int,
    preset: str,
    tune: str | None,
    audio_codec: str,
    jpeg_fps: float,
) -> EncodeSettings:
    """The writer's encoding settings (``tune`` None: libx264's "none")."""
    settings = EncodeSettings(int(short_side), float(max_fps), int(sample_rate), int(crf), preset)
    settings.tune = tune or "none"
    settings.audio_codec = audio_codec
    settings.jpeg_fps = float(jpeg_fps)
    return settings


def _convert(
    plan: Plan,
    out: Path,
    settings: EncodeSettings,
    check: dict,
    workers: int,
    shard_size: int,
    progress: bool,
    log: Callable[[str], None],
) -> list[dict]:
    """Groups the plan's items into shards and converts the unfinished ones."""
    items = plan.items
    shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    base = {
        "settings": {**settings.to_dict(), "threads": settings.threads},
        "dataset": plan.dataset,
        "want_video": plan.want_video,
        "require_video": plan.require_video,
    }
    log(f"{len(items)} clips in {len(shards)} shards of up to {shard_size} -> {out}")

    def make_task(item: Item) -> dict:
        return {**base, "item": item}

    return run_shards(shards, out / "shards", check, workers, make_task, progress, log)
