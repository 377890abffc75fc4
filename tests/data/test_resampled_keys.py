"""The training key stream (``ResampledKeys`` through ``TrainStream.key_stream``): every sample of
the split is drawn at the same rate whatever its shard's size and the rank/worker layout, each
worker of each rank has its own stream, and shards are read in runs (not reopened per sample)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from avssl.data.shards import ResampledKeys, SplitTable
from avssl.data.streams import TrainStream, seed_for

# shards of unequal size (and one without split samples): 51 samples
SIZES = [30, 12, 0, 6, 3]


def _table(sizes: list[int]) -> SplitTable:
    shards = [f"shard-{i}" for i in range(len(sizes))]
    return SplitTable(shards, [[f"s{i}/k{j}" for j in range(n)] for i, n in enumerate(sizes)])


def _stream(table: SplitTable, rank: int, world: int) -> TrainStream:
    """A training stream of ``table`` for ``rank`` of ``world`` (its key streams only are used:
    nothing is decoded, so no processor is needed)."""
    proc = SimpleNamespace(k=1, audio_mode="aligned")
    return TrainStream(table, proc, 2, rank, world, 1, False, 0.0, 7, batches_per_epoch=1)


def _draw_counts(table, world: int, workers: int, draws: int, epochs: int):
    """Counts of each key over ``epochs`` epochs in which every worker of every rank draws
    ``draws`` keys (fewer than a shard holds: an epoch's share of a worker can be short), and
    the shards the streams began reading."""
    counts: Counter[str] = Counter()
    shards_drawn = 0
    for rank in range(world):
        stream = _stream(table, rank, world)
        for epoch in range(epochs):
            stream.set_epoch(epoch)
            for worker in range(workers):
                keys = stream.key_stream(worker)
                counts.update(key for _, key in (next(keys) for _ in range(draws)))
                shards_drawn += keys.shards_drawn
    return counts, shards_drawn


@pytest.mark.parametrize(
    "world,workers,draws", [(1, 1, 8), (1, 1, 200), (2, 1, 200), (2, 3, 8), (2, 3, 200)]
)
def test_every_sample_has_the_same_rate_whatever_its_shard_and_slot(world, workers, draws):
    """1 slot (rank x worker); 2 slots, fewer than the 4 shards with samples (the old code gave
    each slot its own shards, so a sample's rate went with 1 / its slot's samples); 6 slots,
    more (the old code drew the shards in proportion to their size and read them whole, so a
    sample's rate went with its shard's size once a stream reads whole shards: 200 keys);
    every stream drawing a few keys (8: an epoch's share of a worker can be less than a shard)
    or many. The mean count per sample of each shard is within 15 % of the overall mean (over
    40 seeds the largest deviation was 9 %; the old code's smallest failing one was 35 %)."""
    table = _table(SIZES)
    n = sum(SIZES)
    epochs = 60_000 // (world * workers * draws)
    counts, shards_drawn = _draw_counts(table, world, workers, draws, epochs)
    total = world * workers * epochs * draws
    assert sum(counts.values()) == total
    assert not [k for k in counts if k.startswith("s2/")]  # the shard without split samples
    mean = total / n
    for i, keys in enumerate(table.keys):
        if keys:
            rate = sum(counts[k] for k in keys) / len(keys)
            assert rate == pytest.approx(mean, rel=0.15), (i, rate, mean)
    # shards are read in runs: at most the 4 open at the start of a stream, and then about one
    # shard begun per mean shard size (12.75 keys) of the draws
    streams = world * workers * epochs
    assert shards_drawn <= streams * (4 + draws / 12.75 * 1.5)


def test_a_long_stream_draws_every_sample_alike_and_reads_whole_shards():
    """One stream, 51,000 keys: every sample's count is near 1,000 (the per-sample spread of a
    uniform draw), and a shard is begun about once per mean shard size of keys."""
    table = _table(SIZES)
    keys = ResampledKeys(table, torch.Generator().manual_seed(seed_for(3)))
    counts = Counter(key for _, key in (next(keys) for _ in range(51_000)))
    assert len(counts) == 51 and min(counts.values()) > 850 and max(counts.values()) < 1150
    assert keys.shards_drawn < 51_000 / 12.75 * 1.2


def test_workers_and_ranks_draw_different_streams_from_every_shard():
    table = _table(SIZES)
    firsts = {}
    for rank in range(2):
        stream = _stream(table, rank, 2)
        for worker in range(2):
            keys = stream.key_stream(worker)
            drawn = [next(keys) for _ in range(300)]
            firsts[rank, worker] = drawn[:20]
            # every worker of every rank draws from all the shards with samples
            assert {s for s, _ in drawn} == {"shard-0", "shard-1", "shard-3", "shard-4"}
    assert len({tuple(v) for v in firsts.values()}) == 4
    again = _stream(table, 1, 2).key_stream(1)
    assert [next(again) for _ in range(20)] == firsts[1, 1]  # seeded
