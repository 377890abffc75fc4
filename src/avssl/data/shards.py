"""Shard listing, reading and splitting for shard format v1 (DESIGN sections 3 and 8).

Shards are local WebDataset tars read with ``tarfile``: a shard is indexed once per process
(member headers only) and samples are read by seeking to their members, so training can visit
a shard in random order and evaluation can read exactly the samples it was assigned. The tar
reading (:func:`scan_tar`, :class:`ShardReader`, :class:`ShardError`) lives in
:mod:`avssl.data.shard_tar` and is importable from here; this module resolves a ``data``
setting to its shards and manifest (:func:`resolve`) and splits the samples.

Splitting:
    * rank / world size come from ``torch.distributed`` when initialised, else env ``RANK`` /
      ``WORLD_SIZE`` (explicit arguments win); the worker from the DataLoader worker info.
    * evaluation: the split's samples sorted by (shard, position in shard) are cut into one
      contiguous block per rank; a rank's block is cut into batches and batch ``j`` goes to
      worker ``j % num_workers``. The DataLoader fetches workers round-robin, so each rank
      yields its block in sorted order; every sample is read exactly once overall.
    * training: each (rank, worker) draws shards uniformly at random with replacement from all
      of the split's shards, with its own seed (WebDataset's ``resampled=True``), and reads each
      drawn shard's split samples once in a random order, mixing a few open shards at a time:
      every sample of the split has the same rate, whatever its shard's size and the number of
      ranks and workers (:class:`ResampledKeys`).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand
import torch

from avssl.data.shard_tar import (  # noqa: F401  (re-exported: loader, evaluators, tests)
    _BLOCK,
    ShardError,
    ShardReader,
    TarIndex,
    _intact_end,
    _report,
    index_tar,
    log,
    scan_tar,
    shard_keys,
    split_member,
)

MANIFEST = "manifest.json"
#: ``train_split: auto`` reads the first of these splits that a prepared folder has (by the
#: manifest's dataset): the official training split pretraining papers use. Datasets without
#: one (ESC-50's five evaluation folds, shards without a manifest) train on every sample.
TRAIN_SPLITS = {
    "ucf101": ("train1",),
    "hmdb51": ("train1",),
    "synthetic": ("train1",),
    "vggsound": ("train",),
    "kinetics_sounds": ("train",),
    "audioset": ("unbalanced_train_segments", "balanced_train_segments"),
    "folder": ("train",),
}


@dataclass
class DataSource:
    """The shards behind a ``data`` setting, plus the prepared folder's metadata when found."""

    shards: list[str]
    root: Path | None = None
    manifest: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes", []))

    @property
    def multilabel(self) -> bool:
        return bool(self.manifest.get("multilabel", False))

    def split_keys(self, split: str | None) -> list[str] | None:
        """Keys of ``split`` from ``splits/<split>.txt``; None when ``split`` is None/"all"."""
        if split is None or split == "all":
            return None
        if self.root is None:
            raise FileNotFoundError(
                f"split {split!r} needs a prepared folder with splits/{split}.txt, but the "
                f"shards {self.shards[0]!r}... have no manifest.json beside them; "
                "set the split to null to use every sample"
            )
        path = self.root / "splits" / f"{split}.txt"
        if not path.is_file():
            known = sorted(p.stem for p in (self.root / "splits").glob("*.txt"))
            raise FileNotFoundError(f"split file not found: {path} (available: {known})")
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]

    def auto_train_split(self) -> str | None:
        """The split ``train_split: auto`` means here (:data:`TRAIN_SPLITS`); None = all."""
        counts = self.manifest.get("splits") or {}
        known = TRAIN_SPLITS.get(self.manifest.get("dataset", ""), ())
        return next((name for name in known if counts.get(name)), None)

    def stats(self) -> dict | None:
        """Contents of ``stats.json`` (fbank mean/std) or None when absent."""
        path = self.root / "stats.json" if self.root else None
        return json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else None


def _find_root(shard: Path) -> Path | None:
    for folder in (shard.parent, shard.parent.parent):
        if (folder / MANIFEST).is_file():
            return folder
    return None


def resolve(data: str | os.PathLike) -> DataSource:
    """Resolves a prepared folder, a tar path, or a brace/glob pattern (``::``-separated list)
    to its shards. Raises ``FileNotFoundError`` naming the path when nothing is there."""
    data = str(data)
    if not data:
        raise ValueError("data is empty: give a prepared dataset folder or shard paths")
    path = Path(data)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            try:
                manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{path / MANIFEST} is not valid JSON ({err})") from None
            shards = [str(path / s["file"]) for s in manifest.get("shards", [])]
            missing = [s for s in shards if not Path(s).is_file()]
            if missing:
                raise FileNotFoundError(f"{path / MANIFEST} lists missing shard {missing[0]}")
            return DataSource(shards, path, manifest)
        shards = sorted(str(p) for p in (*path.glob("*.tar"), *path.glob("shards/*.tar")))
        if not shards:
            raise FileNotFoundError(f"no manifest.json and no *.tar shards in folder {path}")
        data = "::".join(shards)
    shards = []
    for part in data.split("::"):
        for name in braceexpand.braceexpand(part):
            matches = sorted(glob.glob(name)) if glob.has_magic(name) else [name]
            if not matches:
                raise FileNotFoundError(f"no shard matches {name}")
            for p in map(Path, matches):
                if not p.is_file():
                    what = "shard" if p.suffix == ".tar" else "data folder or shard"
                    raise FileNotFoundError(f"{what} not found: {p}")
                shards.append(str(p))
    root = _find_root(Path(shards[0]))
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8")) if root else {}
    return DataSource(shards, root, manifest)


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): explicit values, else torch.distributed, else env, else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    return rank, world_size


def worker_info() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main one."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


@dataclass
class SplitTable:
    """The split's samples per shard, in tar order: ``keys[i]`` are in ``shards[i]``."""

    shards: list[str]
    keys: list[list[str]]

    @property
    def num_samples(self) -> int:
        return sum(len(k) for k in self.keys)

    def ordered(self) -> list[tuple[str, str]]:
        """(shard, key) for every sample, sorted by shard then position: the eval order."""
        return [(s, k) for s, keys in zip(self.shards, self.keys) for k in keys]


def split_table(source: DataSource, split: str | None) -> SplitTable:
    """Lists the samples of ``split`` (all samples when None) shard by shard."""
    wanted = source.split_keys(split)
    wanted_set = set(wanted) if wanted is not None else None
    keys = [
        [k for k in shard_keys(s) if wanted_set is None or k in wanted_set] for s in source.shards
    ]
    table = SplitTable(list(source.shards), keys)
    if table.num_samples == 0:
        raise ValueError(f"split {split!r} of {source.root or source.shards[0]} has no samples")
    return table


def eval_assignment(
    table: SplitTable, rank: int, world: int, worker: int, num_workers: int, batch_size: int
) -> list[list[tuple[str, str]]]:
    """The batches of (shard, key) that worker ``worker`` of rank ``rank`` reads (see module)."""
    items = table.ordered()
    lo, hi = rank * len(items) // world, (rank + 1) * len(items) // world
    block = items[lo:hi]
    batches = [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
    return batches[worker::num_workers]


class ResampledKeys:
    """Endless random (shard, key) stream for training: WebDataset's ``resampled=True`` with a
    shuffle. Shards are drawn uniformly with replacement from all of the split's shards (those
    with split samples), each drawn shard's split samples are read once in a random order, and
    ``mix`` shards are interleaved at random.

    A shard of L samples is drawn 1/S of the time and then gives each of its samples once, so
    in the long run every sample has the same rate, 1/N per key, whatever the shard sizes; an
    epoch, though, may draw less than a shard per worker. So the ``mix`` shards open at the
    start are the ones a long-running stream holds at a random moment (drawn in proportion to
    their size, with a uniformly random number 1..L of their samples left), which makes every
    key of the stream a uniform draw over the N samples from the first key on. ``shards_drawn``
    counts the shard reads begun (at most one shard open per L keys on average).
    """

    def __init__(self, table: SplitTable, gen: torch.Generator, mix: int = 4):
        self.table, self.gen, self.shards_drawn = table, gen, 0
        self.idx = [i for i, k in enumerate(table.keys) if k]
        if not self.idx:
            raise ValueError("no shard holds a sample of the split")
        sizes = torch.tensor([len(table.keys[i]) for i in self.idx], dtype=torch.float)
        self.active: list[list[tuple[str, str]]] = [self._in_progress(sizes) for _ in range(mix)]

    def _read(self, i: int, left: int | None = None) -> list[tuple[str, str]]:
        """Shard ``i``'s split samples in a random order (``left`` of them; None: all)."""
        self.shards_drawn += 1
        keys = self.table.keys[i]
        order = torch.randperm(len(keys), generator=self.gen).tolist()[:left]
        return [(self.table.shards[i], keys[j]) for j in order]

    def _in_progress(self, sizes: torch.Tensor) -> list[tuple[str, str]]:
        """A shard as a long-running stream would be reading it: drawn in proportion to its size
        (it takes that many keys), with 1..L of its samples left, uniformly."""
        i = self.idx[int(torch.multinomial(sizes, 1, generator=self.gen))]
        left = 1 + int(torch.randint(0, len(self.table.keys[i]), (), generator=self.gen))
        return self._read(i, left)

    def _draw(self) -> list[tuple[str, str]]:
        """A shard drawn uniformly (with replacement), read whole."""
        return self._read(self.idx[int(torch.randint(0, len(self.idx), (), generator=self.gen))])

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, str]:
        slot = int(torch.randint(0, len(self.active), (), generator=self.gen))
        if not self.active[slot]:
            self.active[slot] = self._draw()
        return self.active[slot].pop()
