"""The DataLoaders of the streams: worker settings, epochs, and the resumable training loader.

Batches are built inside each DataLoader worker (``batch_size=None``): :class:`EpochLoader`
tells its stream the epoch before each pass, and :class:`TrainLoader` keeps what a resumed run
needs to go on where it stopped (the global step, and the epoch and batch of its pass, which
``AVDataModule.state_dict`` saves beside the data seed) and times how long the training loop
waits for its batches (``fetch_seconds``, read by ``avssl.callbacks.ThroughputMonitor``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import (
    _BaseDataLoaderIter,
    _MultiProcessingDataLoaderIter,
    _SingleProcessDataLoaderIter,
)


def tune_worker_process(nice: int = 0) -> None:
    """Settings for one DataLoader worker: one torch thread (decoding already uses one codec
    thread per worker, see ``avssl.data.decode.default_threads``), and glibc malloc told to keep
    freed memory (mmap threshold 128 MB, trim threshold 1 GB) so that the ~10 MB clip buffers
    allocated for every sample do not page-fault afresh each time (~30 % of a worker's time).
    ``nice`` > 0 lowers the worker's scheduling priority by that much (``os.nice``), so that
    the training process, which launches the GPU's kernels, is not kept waiting for a core."""
    torch.set_num_threads(1)
    if nice:
        os.nice(nice)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 128 << 20)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        except (OSError, AttributeError):  # not glibc
            pass


def _worker_init(_: int, nice: int = 0) -> None:
    tune_worker_process(nice)


class EpochLoader(DataLoader):
    """DataLoader that tells its stream the epoch (from ``epoch_fn`` or its own count);
    ``worker_nice``: see ``tune_worker_process``."""

    def __init__(
        self,
        dataset,
        epoch_fn: Callable[[], int | None] | None = None,
        worker_nice: int = 0,
        **kwargs,
    ):
        init = functools.partial(_worker_init, nice=worker_nice)
        super().__init__(dataset, batch_size=None, worker_init_fn=init, **kwargs)
        self.epoch_fn, self._count = epoch_fn, 0

    def next_epoch(self) -> int:
        """The epoch of the next pass: ``epoch_fn``'s (the trainer's), else the own count."""
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        return self._count if epoch is None else epoch

    def _start(self, epoch: int):
        """Starts a pass of epoch ``epoch`` (the stream is told before the workers start)."""
        stream: Any = self.dataset
        stream.set_epoch(epoch)
        self._count = epoch + 1
        return super().__iter__()

    def __iter__(self):
        return self._start(self.next_epoch())


class FetchClock:
    """Running total of the wall time (``time.perf_counter``) spent in the ``__next__`` of a
    loader's iterators, and the number of those calls (the last, StopIteration, included)."""

    __slots__ = ("seconds", "calls")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0


class _TimedIter(_BaseDataLoaderIter):
    """Times ``__next__`` into ``_clock`` (set by ``TrainLoader._get_iterator``); everything
    else is the DataLoader iterator's own."""

    _clock: FetchClock

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return super().__next__()
        finally:
            self._clock.seconds += time.perf_counter() - start
            self._clock.calls += 1


class _TimedSingleProcessIter(_TimedIter, _SingleProcessDataLoaderIter):
    pass


class _TimedMultiProcessingIter(_TimedIter, _MultiProcessingDataLoaderIter):
    pass


class TrainLoader(EpochLoader):
    """The training loader, resumable in Lightning's sense (``state_dict`` /
    ``load_state_dict``, saved in every checkpoint): its state is the global step
    (``step_fn``). It also keeps its ``position``, ``[epoch, batches trained]`` of its current
    pass (``AVDataModule`` counts the training batches after their transfer and saves the
    position with the seed); ``restored`` is the position a resumed run's checkpoint saved,
    ``(epoch, batches trained, batches of that epoch)``.

    A run resumed in the middle of an epoch finishes that epoch with batches drawn afresh, from
    a stream seeded with the resumed step as well (``TrainStream``), instead of replaying the
    batches the epoch had trained before the interruption; Lightning stops the epoch after the
    batches it had left. The shards are resampled, so the rest of the epoch has the same
    distribution as an uninterrupted run's, not the same samples. A run resumed at the end of
    an epoch (or before its first batch) is not reseeded: the pass Lightning starts on resuming
    is the next epoch (or that one) of the uninterrupted run. A checkpoint without the position
    (written before avssl kept it) reseeds the resumed pass, as before.

    ``fetch_seconds`` is the wall time the caller spent blocked in the ``__next__`` of this
    loader's iterators, summed over its passes (``fetch_calls``: how many calls): the time the
    training loop waited for a batch from the workers (or, without workers, for the stream to
    build it), not its transfer to the device. The iterators are the DataLoader's own
    (single- or multi-process, persistent workers included), subclassed to time ``__next__``.
    """

    def __init__(self, dataset, step_fn: Callable[[], int], **kwargs):
        super().__init__(dataset, **kwargs)
        self.step_fn = step_fn
        self.position: list[int] | None = None
        self.restored: tuple[int, int, int] | None = None
        self._resumed_at: int | None = None
        self._fetch = FetchClock()

    @property
    def fetch_seconds(self) -> float:
        """Seconds spent in the iterators' ``__next__`` so far (a running total)."""
        return self._fetch.seconds

    @property
    def fetch_calls(self) -> int:
        """Calls of the iterators' ``__next__`` so far."""
        return self._fetch.calls

    def _get_iterator(self) -> _BaseDataLoaderIter:
        """The DataLoader's iterator, timing its ``__next__`` (``fetch_seconds``). It holds the
        clock, not the loader: no reference cycle keeps the workers of a dropped iterator."""
        it: _TimedIter
        if self.num_workers == 0:
            it = _TimedSingleProcessIter(self)
        else:
            self.check_worker_number_rationality()
            it = _TimedMultiProcessingIter(self)
        it._clock = self._fetch
        return it

    def state_dict(self) -> dict[str, int]:
        return {"global_step": int(self.step_fn())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resumed_at = int(state["global_step"])
        epoch, done, reseed = self._resume_point()
        where = f"[data] resumed at step {self._resumed_at}"
        if reseed:
            rank_zero_info(
                f"{where}: the rest of the interrupted epoch {epoch} is drawn afresh (a stream "
                "seeded with the step), not replayed from its start"
            )
        else:
            rank_zero_info(f"{where}: epoch {epoch} from batch {done}, as an uninterrupted run")

    def _resume_point(self) -> tuple[int, int, bool]:
        """(epoch, batches it already trained, reseeded?) of the first pass after a resume."""
        if self.restored is None:  # a checkpoint without the position: reseeded, as before
            return self.next_epoch(), 0, True
        epoch, done, length = self.restored
        if done >= length:  # every batch of the epoch trained: this pass is the next epoch
            return epoch + 1, 0, False
        return epoch, done, done > 0

    def batch_trained(self) -> None:
        """Counts one more training batch of the current pass (``AVDataModule``)."""
        if self.position is not None:
            self.position[1] += 1

    def __iter__(self):
        epoch, done, reseed = self.next_epoch(), 0, False
        if self._resumed_at is not None:  # the first pass after a resume only
            epoch, done, reseed = self._resume_point()
        # set before the workers start
        self.dataset.resumed_at = self._resumed_at if reseed else None
        self._resumed_at = self.restored = None
        self.position = [epoch, done]
        return self._start(epoch)
