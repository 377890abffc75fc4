"""Shard tar reading for shard format v1 (DESIGN section 3; the loader's side of
:mod:`avssl.data.shards`).

A shard is a local WebDataset tar read with ``tarfile``: :func:`scan_tar` indexes it once per
process (member headers only) and finds damage (a tar cut in the middle of a member or at a
member boundary, an unreadable header); :class:`ShardReader` reads samples by seeking to their
members, so training can visit a shard in random order and evaluation can read exactly the
samples it was assigned. A sample that damage cut or lost reads as a :class:`ShardError`.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

# the warnings about damaged shards keep the logger name they had in avssl.data.shards
log = logging.getLogger("avssl.data.shards")


def split_member(name: str) -> tuple[str, str]:
    """``"a/b/c.d.mp4"`` -> (``"a/b/c"``, ``"d.mp4"``): key up to the first dot of the basename."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1 :])


class ShardError(ValueError):
    """A sample that a damaged shard tar (truncated, or with an unreadable header) lost."""


@dataclass
class TarIndex:
    """What :func:`scan_tar` found in a shard: the complete samples and the damage, if any."""

    samples: list[tuple[str, dict[str, tuple[int, int]]]]
    damaged: str | None = None  #: key of the sample the damage cut (none of its members kept)
    problem: str | None = None  #: what is wrong with the tar (None: intact)


_BLOCK = tarfile.BLOCKSIZE


def _intact_end(handle, offset: int) -> bool:
    """Whether the tar ends properly at ``offset``: a zero end-of-archive block there (or only
    zero bytes left: cut in the end blocks or the padding after them, nothing lost)."""
    handle.seek(offset)
    rest = handle.read(_BLOCK)
    return bool(rest) and rest.count(0) == len(rest)


def scan_tar(path: str) -> TarIndex:
    """Reads member headers only (see :func:`index_tar`) and checks that the tar ends with
    its end-of-archive block after the last member's data. Where it does not (cut in the
    middle of a member or at a member boundary, or an unreadable header), the last sample
    before the damage may lack members: it is dropped from the samples and named in
    ``damaged``; the samples after the damage are gone (a sidecar still lists their keys)."""
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    problem = None
    size = os.path.getsize(path)
    end = 0  # where the next header should be
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if info.offset_data + info.size > size:
                    problem = (
                        f"truncated: member {info.name} needs bytes up to "
                        f"{info.offset_data + info.size}, the file has {size}"
                    )
                    key = split_member(info.name)[0]
                    if not samples or samples[-1][0] != key:
                        samples.append((key, {}))
                    break
                end = tar.offset
                if not info.isfile():
                    continue
                key, ext = split_member(info.name)
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = (info.offset_data, info.size)
            else:
                end = tar.offset
    except (tarfile.ReadError, EOFError, OSError) as err:
        if not samples:
            raise ValueError(f"{path}: not a readable tar shard ({err})") from err
        problem = f"unreadable after byte {end} ({err})"
    if problem is None:
        with open(path, "rb") as handle:
            if not _intact_end(handle, end):
                problem = f"no end-of-archive block at byte {end} of {size}"
    if problem is None or not samples:
        return TarIndex(samples, None, problem)
    return TarIndex(samples[:-1], samples[-1][0], problem)


def _report(path: str, found: TarIndex) -> None:
    """Logs the damage :func:`scan_tar` found in a shard (nothing when it is intact)."""
    if found.problem is None:
        return
    log.warning(
        "shard %s is damaged (%s): %d complete samples before the damage are read%s; "
        "any samples after it are lost",
        path,
        found.problem,
        len(found.samples),
        f", sample {found.damaged!r} is cut (read as a corrupt sample)" if found.damaged else "",
    )


def index_tar(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Reads member headers only: ``[(key, {ext: (data offset, size)}), ...]`` in tar order,
    consecutive members with the same key forming one sample. A truncated or damaged tar
    yields the complete samples before the damage (:func:`scan_tar`; a warning names the
    damaged sample, which :class:`ShardReader` reports as a :class:`ShardError`)."""
    found = scan_tar(path)
    _report(path, found)
    return found.samples


def shard_keys(path: str) -> list[str]:
    """Sample keys of a shard in tar order: from the sidecar ``.json`` if present, else the tar
    (with the sample that damage to the tar cut, so that reading it fails and is counted)."""
    sidecar = Path(path).with_suffix(".json")
    if sidecar.is_file():
        keys = json.loads(sidecar.read_text(encoding="utf-8")).get("keys")
        if keys is not None:
            return list(keys)
    found = scan_tar(path)
    return [key for key, _ in found.samples] + ([found.damaged] if found.damaged else [])


class ShardReader:
    """Reads samples' members by key; keeps a few shard indexes and file handles (per process)."""

    def __init__(self, max_open: int = 8):
        self.max_open = max_open
        self._open: OrderedDict[str, tuple] = OrderedDict()

    def _get(self, path: str) -> tuple:
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        found = scan_tar(path)
        _report(path, found)  # once per process and shard
        entry = (open(path, "rb"), dict(found.samples), found)  # noqa: SIM115 (kept open)
        self._open[path] = entry
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1][0].close()
        return entry

    def read(self, path: str, key: str) -> dict[str, bytes]:
        """Returns ``{"__key__": key, ext: bytes, ...}``; KeyError if an intact shard lacks
        ``key``; :class:`ShardError` for a sample that damage to the shard cut or lost, or a
        member that reads short (the file changed since it was indexed). The streams skip
        and count a sample whose read fails, like one that does not decode."""
        handle, index, found = self._get(path)
        if key not in index:
            if found.problem is None:
                raise KeyError(f"{path}: no sample {key!r}")
            what = "cut by" if key == found.damaged else "not found in"
            raise ShardError(f"{path}: sample {key!r} {what} a damaged shard ({found.problem})")
        sample: dict = {"__key__": key}
        for ext, (offset, size) in index[key].items():
            handle.seek(offset)
            data = handle.read(size)
            if len(data) != size:
                raise ShardError(
                    f"{path}: member {key}.{ext} truncated ({len(data)} of {size} bytes)"
                )
            sample[ext] = data
        return sample

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1][0].close()
