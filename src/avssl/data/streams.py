"""The training and evaluation streams: batches built inside each DataLoader worker.

``TrainStream`` yields exactly ``batches_per_epoch`` batches per rank from resampled shards,
``EvalStream`` every sample of a split once (see :mod:`avssl.data.shards` for the splitting).
A sample that fails to decode is skipped, logged, and counted in ``AVBatch.extra["skipped"]``
(with ``extra["skipped_keys"]``). ``TrainStream(repeats=R)`` is repeated sampling (MAE-ST,
Feichtenhofer et al. 2022, https://arxiv.org/abs/2205.09113): R batch entries from each
decoded sample, each with its own random clip times, audio windows and augmentation, so the
mp4 is opened and the audio decoded once for R entries; entries left over when a batch is full
open the worker's next batch (at the end of an epoch they are dropped: the keys are resampled
anyway).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from avssl.data.batch import AVBatch
from avssl.data.batching import collate, mismatch
from avssl.data.sampling import SampleProcessor
from avssl.data.shards import ResampledKeys, ShardReader, SplitTable, eval_assignment, worker_info

log = logging.getLogger(__name__)

RESUMED = 0x5E5  # in a resumed epoch's seed, between the usual parts and the step
KEYS = 0x4B5  # after the parts of a training key stream's seed (its own generator)


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixing ``parts`` (seed, epoch, rank, worker, ...)."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


class _Stream(IterableDataset):
    """Shared parts of the train and eval streams (per-worker batching, skip counting)."""

    def __init__(
        self,
        table: SplitTable,
        proc: SampleProcessor,
        batch_size: int,
        rank: int,
        world: int,
        num_classes: int,
        multilabel: bool,
        mismatch_prob: float,
        seed: int,
    ):
        self.table, self.proc, self.batch_size = table, proc, batch_size
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0
        self.num_classes, self.multilabel, self.mismatch_prob = (
            num_classes,
            multilabel,
            mismatch_prob,
        )
        self._prev: dict | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _process(self, reader, shard: str, key: str, gen, proc=None) -> dict | None:
        try:
            return (proc or self.proc)(reader.read(shard, key), gen)
        except Exception as err:  # noqa: BLE001 (any decoding failure = a corrupt sample)
            log.warning("skipping corrupt sample %s in %s: %s", key, shard, err)
            return None

    def _batch(self, items: list[dict], gen, skipped: list[str]) -> AVBatch:
        flags = None
        if self.proc.audio_mode == "mismatched" and items:
            flags = mismatch(items, self.mismatch_prob, gen, self._prev)
            self._prev = items[-1]
        batch = collate(items, self.proc, self.num_classes, self.multilabel)
        batch.audio_mismatched = torch.tensor(flags) if flags is not None else None
        batch.extra.update(skipped=len(skipped), skipped_keys=skipped)
        return batch


def split_repeats(item: dict, repeats: int, k: int) -> list[dict]:
    """The ``repeats`` entries of an item processed with ``repeats * k`` clips: entry ``r``
    holds clips ``r k .. (r + 1) k - 1`` (with their audio); key and label are shared."""

    def part(x, r: int):
        if x is None:
            return None
        if isinstance(x, tuple):
            return tuple(part(v, r) for v in x)
        return x[r * k : (r + 1) * k]

    shared = ("key", "label")
    return [{n: v if n in shared else part(v, r) for n, v in item.items()} for r in range(repeats)]


class TrainStream(_Stream):
    """Endless resampled shards cut to exactly ``batches_per_epoch`` batches per rank;
    ``repeats`` > 1: repeated sampling (module docstring). Every worker of every rank draws
    from all of the split's shards (:class:`~avssl.data.shards.ResampledKeys`), seeded by
    (seed, epoch, rank, worker), and by the global step too when ``resumed_at`` is set (an
    epoch a run resumed in the middle of; ``avssl.data.loaders.TrainLoader``)."""

    def __init__(self, *args, batches_per_epoch: int, repeats: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if repeats < 1:
            raise ValueError(f"repeated_sampling must be >= 1, got {repeats}")
        if repeats > 1 and self.proc.audio_mode == "mismatched":
            raise ValueError(
                "repeated_sampling > 1 does not go with audio_mode 'mismatched' (an entry could "
                "take the audio of its own video as the mismatched one)"
            )
        self.batches_per_epoch, self.repeats = batches_per_epoch, repeats
        self.resumed_at: int | None = None  # set by TrainLoader for the epoch a run resumed in
        self._repeated = copy.copy(self.proc)  # decodes all the clips of the R entries at once
        self._repeated.k = self.proc.k * repeats

    def _entries(self, reader, shard: str, key: str, gen) -> list[dict] | None:
        """The batch entries of one sample (None when it fails to decode)."""
        if self.repeats == 1:
            item = self._process(reader, shard, key, gen)
            return None if item is None else [item]
        item = self._process(reader, shard, key, gen, self._repeated)
        return None if item is None else split_repeats(item, self.repeats, self.proc.k)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _seed_parts(self, worker: int) -> list[int]:
        """What this epoch's draws of worker ``worker`` are seeded by (class docstring)."""
        parts = [self.seed, self.epoch, self.rank, worker]
        if self.resumed_at is not None:  # a resumed epoch: not the interrupted one's draws again
            parts += [RESUMED, self.resumed_at]
        return parts

    def key_stream(self, worker: int) -> ResampledKeys:
        """The (shard, key) stream of this epoch for worker ``worker`` of this rank. Its own
        generator: the keys do not depend on how many numbers the samples' clip times and
        augmentation draw (``generator``), nor on the corrupt samples skipped."""
        gen = torch.Generator().manual_seed(seed_for(*self._seed_parts(worker), KEYS))
        return ResampledKeys(self.table, gen)

    def generator(self, worker: int) -> torch.Generator:
        """The generator of this epoch's clip times, audio windows and augmentation for worker
        ``worker`` of this rank."""
        return torch.Generator().manual_seed(seed_for(*self._seed_parts(worker)))

    def __iter__(self) -> Iterator[AVBatch]:
        worker, num_workers = worker_info()
        count = self.batches_per_epoch // num_workers + (
            worker < self.batches_per_epoch % num_workers
        )
        keys, gen, reader = self.key_stream(worker), self.generator(worker), ShardReader()
        pending: list[dict] = []  # entries of a repeated sample that did not fit the last batch
        for _ in range(count):
            items, pending = pending[: self.batch_size], pending[self.batch_size :]
            skipped: list[str] = []
            while len(items) < self.batch_size:
                shard, key = next(keys)
                entries = self._entries(reader, shard, key, gen)
                if entries is None:
                    skipped.append(key)
                    if len(skipped) > 10 * self.batch_size + 100:
                        raise RuntimeError(f"too many corrupt samples for one batch (last: {key})")
                else:
                    room = self.batch_size - len(items)
                    items += entries[:room]
                    pending += entries[room:]
            yield self._batch(items, gen, skipped)
        reader.close()


class EvalStream(_Stream):
    """Every sample of the split once across ranks and workers, in (shard, position) order."""

    def _blocks(self, num_workers: int, worker: int) -> list:
        return eval_assignment(
            self.table, self.rank, self.world, worker, num_workers, self.batch_size
        )

    def __len__(self) -> int:
        return len(self._blocks(1, 0))

    def __iter__(self) -> Iterator[AVBatch]:
        worker, num_workers = worker_info()
        reader, skipped = ShardReader(), []
        for j, plan in enumerate(self._blocks(num_workers, worker)):
            index = worker + j * num_workers  # the batch's place in this rank's order
            gen = torch.Generator().manual_seed(seed_for(self.seed, self.rank, index))
            items: list[dict] = []
            for shard, key in plan:
                item = self._process(reader, shard, key, gen)
                if item is None:
                    skipped.append(key)
                else:
                    items.append(item)
            if items:  # skipped keys of an all-corrupt batch ride with the next batch
                yield self._batch(items, gen, skipped)
                skipped = []
        if skipped:
            warnings.warn(
                f"corrupt samples skipped at the end of evaluation: {skipped}", stacklevel=2
            )
        reader.close()
