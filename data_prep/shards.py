"""Parallel conversion of planned items into finished shards (shard format v1).

Items are converted in worker processes (one task per item, results consumed in plan order);
the parent writes each shard to ``shard-NNNNNN.tar.tmp``, renames it, then writes the sidecar
``shard-NNNNNN.json``. A sidecar whose settings, planned keys and planned digest (what each
sample's json takes from the plan: key, label, label name, extra fields; not ROOT's location)
match marks a finished shard, which a rerun skips; a sidecar without the digest (written by
an older version) does not. A finished shard is converted again when the file of a clip that
failed there changed since (another size or mtime, or present where it was missing): the
sidecar's ``failed_files`` records them (a sidecar with failures but without it is retried).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from avssl.data.writer import (
    EncodeSettings,
    FbankStats,
    MediaError,
    ShardWriter,
    convert,
    write_json,
)
from data_prep.common import Item

SHARD_NAME = "shard-{:06d}"


def convert_item(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: one item -> {"key", "members" | None, "failure" | None, "stats" | None}.

    ``stats``: ``[sum, sum of squares, count]`` of the clip's raw log-mel values, for every
    clip with audio (a few ms against the seconds of encoding); ``stats.json`` is reduced from
    the hash-chosen ones (:func:`data_prep.outputs.fbank_stats`)."""
    item: Item = task["item"]
    result: dict[str, Any] = {"key": item.key, "members": None, "failure": None, "stats": None}
    result["file_state"] = file_state(item.path)  # before reading: later changes show
    try:
        settings = EncodeSettings(**task["settings"])
        conv = convert(item.path, settings, task["want_video"], task["require_video"])
    except MediaError as err:
        result["failure"] = {"key": item.key, "path": str(item.path), "reason": str(err)}
        return result
    except Exception as err:  # a decoder bug must not stop the run; it is reported
        reason = f"unexpected {err.__class__.__name__}: {err}"
        result["failure"] = {"key": item.key, "path": str(item.path), "reason": reason}
        return result
    result["streams"] = {"video": conv.meta["has_video"], "audio": conv.meta["has_audio"]}
    meta = {
        "id": item.key,
        "source": task["dataset"],
        "label": item.label,
        "label_name": item.label_name,
        **conv.meta,
        "orig_path": str(item.path),
        **item.extra,
    }
    members = {}
    if conv.mp4 is not None:
        members["mp4"] = conv.mp4
    for i, jpeg in enumerate(conv.frames or []):
        members[f"f{i:03d}.jpg"] = jpeg
    if conv.audio is not None:
        members[conv.audio_codec] = conv.audio
    members["json"] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    result["members"] = members
    if conv.wave is not None:  # every clip with audio: stats.json picks among them
        from avssl.data.fbank import FbankConfig

        acc = FbankStats()
        acc.add_wave(conv.wave, FbankConfig(sample_rate=settings.sample_rate))
        result["stats"] = [acc.total, acc.total_sq, acc.count]
    return result


def file_state(path: Path) -> list[int] | None:
    """``[size, mtime_ns]`` of ``path``, or None when it cannot be read (missing)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def ordered_map(fn: Callable, tasks: Iterable, workers: int) -> Iterator:
    """``map(fn, tasks)`` in order; ``workers`` > 1 uses spawned processes, a bounded window."""
    if workers <= 1:
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        window: deque = deque()
        try:
            for task in tasks:
                window.append(pool.submit(fn, task))
                if len(window) >= 4 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        except BrokenProcessPool:
            raise RuntimeError(
                "a worker process died (crash in a decoder or out of memory); rerun the same "
                "command to resume, or use fewer WORKERS"
            ) from None
        finally:
            for fut in window:
                fut.cancel()


def planned_digest(items: list[Item]) -> str:
    """SHA-256 over what each sample's json takes from the plan, in plan order.

    Two plans with the same digest write the same ``id``, ``label``, ``label_name`` and extra
    fields for every sample, so a shard converted for one is finished for the other (the
    encoding settings are compared separately, as ``prep``). The source's absolute path is
    left out: a ROOT moved elsewhere holds the same clips under the same keys (relative
    paths), and its shards are kept (their ``orig_path`` then names the old location).
    """
    records = [[it.key, it.label, it.label_name, it.extra] for it in items]
    text = json.dumps(records, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_finished(side: dict | None, items: list[Item], prep: dict, shard_dir: Path) -> bool:
    """Whether a sidecar marks shard ``items`` as converted with the same settings and plan."""
    if side is None or side.get("prep") != prep:
        return False
    if side.get("planned") != [it.key for it in items]:
        return False
    if side.get("planned_digest") != planned_digest(items):
        return False  # labels, paths or extra fields changed (or an old sidecar without it)
    return side.get("num_samples") == 0 or (shard_dir.parent / side["file"]).is_file()


def failed_files_unchanged(side: dict, items: list[Item]) -> bool:
    """Whether every clip that failed in a finished shard still has the file it had then.

    The sidecar's ``failed_files`` maps each failed key to ``[size, mtime_ns]`` of its file
    (None where it was missing); another value now means the file was repaired or replaced
    (or appeared), so the shard is converted again. A permanently broken file keeps its state
    and its shard is reused. A sidecar with failures but no ``failed_files`` (an older
    version) cannot tell and counts as changed.
    """
    failed = [f["key"] for f in side.get("failures") or []]
    if not failed:
        return True
    recorded = side.get("failed_files")
    if not isinstance(recorded, dict):
        return False
    paths = {it.key: it.path for it in items}
    return all(
        key in recorded and key in paths and file_state(paths[key]) == recorded[key]
        for key in failed
    )


def read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_shard(
    index: int, items: list[Item], results: Iterator, shard_dir: Path, prep: dict, bar: Any
) -> dict:
    name = SHARD_NAME.format(index)
    writer = ShardWriter(shard_dir / f"{name}.tar")
    keys, failures, clip_stats = [], [], {}
    failed_files, streams = {}, {"video": 0, "audio": 0}
    try:
        for _ in items:
            res = next(results)
            if res["members"] is not None:
                writer.add(res["key"], res["members"])
                keys.append(res["key"])
                for modality, present in res["streams"].items():
                    streams[modality] += int(present)
            else:
                failures.append(res["failure"])
                failed_files[res["key"]] = res["file_state"]
            if res["stats"] is not None:
                clip_stats[res["key"]] = res["stats"]
            bar.update(1)
    except BaseException:
        writer.abort()
        raise
    if keys:
        writer.close()
    else:  # nothing converted: no tar, only the sidecar
        writer.abort()
        (shard_dir / f"{name}.tar").unlink(missing_ok=True)
    side = {
        "file": f"shards/{name}.tar",
        "num_samples": len(keys),
        "keys": keys,
        "failures": failures,
        "failed_files": failed_files,
        "num_with_video": streams["video"],
        "num_with_audio": streams["audio"],
        "planned": [it.key for it in items],
        "planned_digest": planned_digest(items),
        "prep": prep,
        "clip_stats": clip_stats,
    }
    write_json(shard_dir / f"{name}.json", side)
    return side


def _clean_stale(shard_dir: Path, num_shards: int) -> None:
    """Removes temp files and shards beyond the current plan (from an earlier, larger run)."""
    for path in shard_dir.glob("shard-*"):
        stem = path.name.split(".")[0]
        index = stem.removeprefix("shard-")
        if path.name.endswith(".tmp") or (index.isdigit() and int(index) >= num_shards):
            path.unlink(missing_ok=True)


def _finished_shards(
    shards: list[list[Item]], shard_dir: Path, prep: dict, log: Callable[[str], None]
) -> tuple[list[dict | None], list[int]]:
    """The sidecars of finished shards (None for the others) and the indices to convert.

    A shard that :func:`_is_finished` accepts is converted again when a file of a clip that
    failed there changed (:func:`failed_files_unchanged`); both counts are logged.
    """
    sidecars: list[dict | None] = []
    pending, retried = [], 0
    for i, items in enumerate(shards):
        side = read_sidecar(shard_dir / f"{SHARD_NAME.format(i)}.json")
        done = _is_finished(side, items, prep, shard_dir)
        if done and side is not None and not failed_files_unchanged(side, items):
            done, retried = False, retried + 1
        sidecars.append(side if done else None)
        if not done:
            pending.append(i)
    skipped = len(shards) - len(pending)
    if skipped:
        log(f"skipping {skipped} of {len(shards)} shards finished by an earlier run")
    if retried:
        log(f"converting again {retried} finished shard(s): a file that failed there changed")
    return sidecars, pending


def run_shards(
    shards: list[list[Item]],
    shard_dir: Path,
    prep: dict,
    workers: int,
    make_task: Callable[[Item], dict],
    progress: bool,
    log: Callable[[str], None],
) -> list[dict]:
    """Converts every unfinished shard; returns the sidecars of all shards in order."""
    from tqdm import tqdm

    shard_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale(shard_dir, len(shards))
    sidecars, pending = _finished_shards(shards, shard_dir, prep, log)
    total = sum(len(shards[i]) for i in pending)
    tasks = (make_task(item) for i in pending for item in shards[i])
    results = ordered_map(convert_item, tasks, workers)
    bar = tqdm(
        total=total,
        unit="clip",
        desc="converting",
        disable=not progress or total == 0,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    try:
        for i in pending:
            sidecars[i] = _write_shard(i, shards[i], results, shard_dir, prep, bar)
    finally:
        bar.close()
        results.close()  # type: ignore[attr-defined]
    return [s for s in sidecars if s is not None]
