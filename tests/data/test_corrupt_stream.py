"""Corrupt samples in the streams (avssl.data.streams): a split with only corrupt samples stops
training with "too many corrupt samples for one batch" instead of hanging, and a split with
some corrupt mp4/flac members skips them and counts them in ``extra["skipped"]`` /
``extra["skipped_keys"]`` (eval: an all-corrupt batch's keys ride with the next batch)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from avssl.data.datamodule import AVDataModule, make_eval_loader
from avssl.data.shards import resolve, split_table
from tests.data.conftest import rewrite

GARBAGE = bytes(range(256)) * 64
# global sample index -> member made garbage; eval batches of 2: [2, 3] is all corrupt
BROKEN = {2: "mp4", 3: "flac", 7: "mp4", 11: "flac"}
SKIP_LOG = "skipping corrupt sample"
MAX_DRAWS = 2000  # a stream that never gives up is stopped here (the tests fail)


def _keys(data: Path) -> list[str]:
    return [k for _, k in split_table(resolve(data), None).ordered()]


@pytest.fixture(scope="module")
def some_corrupt(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set with a garbage mp4 or flac member in the samples of ``BROKEN``."""

    def edit(s: dict, i: int) -> dict:
        if i in BROKEN:
            assert BROKEN[i] in s
            s[BROKEN[i]] = GARBAGE
        return s

    return rewrite(synth, tmp_path_factory.mktemp("some_corrupt") / "prepared", edit)


@pytest.fixture(scope="module")
def all_corrupt(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set with garbage in the mp4 and flac members of every sample."""

    def edit(s: dict, i: int) -> dict:
        s["mp4"], s["flac"] = GARBAGE, GARBAGE
        return s

    return rewrite(synth, tmp_path_factory.mktemp("all_corrupt") / "prepared", edit)


class Hang(BaseException):
    """Not an Exception: the stream's per-sample ``except Exception`` cannot swallow it."""


@pytest.fixture
def no_hang(monkeypatch):
    """Training streams draw at most ``MAX_DRAWS`` keys, then raise :class:`Hang`."""
    import avssl.data.streams as streams

    class Limited(streams.ResampledKeys):
        draws = 0

        def __next__(self):
            Limited.draws += 1
            if Limited.draws > MAX_DRAWS:
                raise Hang(f"{MAX_DRAWS} keys drawn for one batch: the stream would hang")
            return super().__next__()

    monkeypatch.setattr(streams, "ResampledKeys", Limited)


def _skip_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(SKIP_LOG)]


@pytest.mark.usefixtures("no_hang")
def test_all_corrupt_training_split_raises_instead_of_hanging(all_corrupt, small_args, caplog):
    """The stream gives up after 10 x batch_size + 100 corrupt draws for one batch."""
    batch_size = 2
    dm = AVDataModule(
        str(all_corrupt),
        **small_args(train_split=None, batches_per_epoch=2, batch_size=batch_size),
    )
    caplog.set_level(logging.WARNING, logger="avssl.data.streams")
    with pytest.raises(RuntimeError, match=r"too many corrupt samples for one batch \(last: "):
        next(iter(dm.train_dataloader()))
    skipped = _skip_records(caplog)
    assert len(skipped) == 10 * batch_size + 100 + 1
    keys = set(_keys(all_corrupt))
    assert {m.split()[3] for m in skipped} <= keys  # "skipping corrupt sample KEY in SHARD"


@pytest.mark.usefixtures("no_hang")
def test_all_corrupt_split_raises_from_a_loader_worker(all_corrupt, small_args):
    dm = AVDataModule(str(all_corrupt), **small_args(train_split=None, num_workers=1))
    with pytest.raises(RuntimeError, match="too many corrupt samples for one batch"):
        next(iter(dm.train_dataloader()))


def test_all_corrupt_eval_split_yields_nothing_and_warns_every_key(all_corrupt, small_args):
    dm = AVDataModule(str(all_corrupt), **small_args(train_split=None, val_split=None))
    loader = make_eval_loader(str(all_corrupt), None, dm.preprocessing(), batch_size=2)
    with pytest.warns(UserWarning, match="corrupt samples skipped at the end of evaluation") as w:
        batches = list(loader)
    assert batches == []
    (warning,) = [x for x in w if "end of evaluation" in str(x.message)]
    assert str(warning.message).endswith(str(_keys(all_corrupt)))


def test_eval_skips_and_counts_corrupt_mp4_and_flac(some_corrupt, small_args, caplog):
    dm = AVDataModule(str(some_corrupt), **small_args(train_split=None, val_split=None))
    caplog.set_level(logging.WARNING, logger="avssl.data.streams")
    batches = list(make_eval_loader(str(some_corrupt), None, dm.preprocessing(), batch_size=2))
    keys = _keys(some_corrupt)
    broken = [keys[i] for i in sorted(BROKEN)]
    assert [k for b in batches for k in b.key] == [k for k in keys if k not in broken]
    # 6 blocks of 2; block [2, 3] is all corrupt: no batch, its keys go with block [4, 5]
    assert [b.extra["skipped_keys"] for b in batches] == [
        [],
        [keys[2], keys[3]],
        [keys[7]],
        [],
        [keys[11]],
    ]
    assert [b.extra["skipped"] for b in batches] == [0, 2, 1, 0, 1]
    assert len(_skip_records(caplog)) == len(BROKEN)
    assert [len(b) for b in batches] == [2, 2, 1, 2, 1]


def test_training_skips_and_counts_corrupt_samples(some_corrupt, small_args, caplog):
    dm = AVDataModule(str(some_corrupt), **small_args(train_split=None, batches_per_epoch=6))
    caplog.set_level(logging.WARNING, logger="avssl.data.streams")
    keys = _keys(some_corrupt)
    broken = {keys[i] for i in BROKEN}
    loader, counted, skipped_keys = dm.train_dataloader(), 0, []
    for _ in range(3):
        for b in loader:
            assert len(b) == 2 and not broken & set(b.key)  # full batches, no corrupt key
            assert b.extra["skipped"] == len(b.extra["skipped_keys"])
            counted += b.extra["skipped"]
            skipped_keys += b.extra["skipped_keys"]
            b = dm.on_after_batch_transfer(b, 0)  # no trainer: counts as training
            assert b.extra["skipped_total"] == counted
    assert counted > 0 and set(skipped_keys) <= broken
    logged = [m.split()[3] for m in _skip_records(caplog)]
    assert logged == skipped_keys  # every skip is logged once and counted once
    assert dm.skipped_total == counted
