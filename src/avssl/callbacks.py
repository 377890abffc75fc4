"""Training callbacks a researcher wants to see in TensorBoard (issue 4, item 5).

- :class:`ThroughputMonitor`: samples/s, fraction of wall time the training loop spent waiting
  for its loader's batches, and the loader's skipped-sample counter (summed over the ranks), as
  scalars on the steps whose logs Lightning writes (every ``log_every_n_steps``).
- :class:`ImageLogger`: every N optimizer steps, the objective's ``visualize(batch)`` figures
  (input, masked input and reconstruction for a spectrogram and for video frames, side by
  side) of the first samples of the batch.

The non-finite-loss counter is logged by :class:`avssl.objectives.base.AVObjective` itself.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import fields
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from avssl.data.batch import AVBatch


def _skipped_samples(trainer: pl.Trainer, batch: Any) -> int | None:
    """Number of samples this rank's loader skipped so far (corrupt/undecodable), if it
    reports one."""
    extra = getattr(batch, "extra", None)
    if isinstance(extra, dict) and "skipped_total" in extra:  # set by AVDataModule
        value = extra["skipped_total"]
        return int(value.sum()) if torch.is_tensor(value) else int(value)
    dm = getattr(trainer, "datamodule", None)
    for name in ("skipped_total", "num_skipped"):
        value = getattr(dm, name, None)
        if callable(value):
            value = value()
        if value is not None:
            return int(value)
    return None


def _logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes this training step's logged values to the loggers (every
    ``log_every_n_steps``, and at the end); True where the trainer does not say."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def _optimizer_stepped(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """Whether this training batch ends an optimizer step (the last micro-batch of a gradient
    accumulation window, or the epoch's last batch), by Lightning's own predicate, the one that
    decides whether it writes the step's logs; True under manual optimization or where the
    trainer does not say."""
    if not getattr(pl_module, "automatic_optimization", True):
        return True
    should_accumulate = getattr(getattr(trainer, "fit_loop", None), "_should_accumulate", None)
    return True if should_accumulate is None else not should_accumulate()


def _timed_train_loader(trainer: pl.Trainer) -> Any:
    """The training loader if it times its fetches (``fetch_seconds``, e.g.
    :class:`avssl.data.loaders.TrainLoader`), else None: the trainer's training loader (the
    one iterated), or the datamodule's ``_train_loader`` where the trainer has none yet."""
    loader = getattr(trainer, "train_dataloader", None)
    if loader is None:
        loader = getattr(getattr(trainer, "datamodule", None), "_train_loader", None)
    seconds = getattr(loader, "fetch_seconds", None)
    return loader if isinstance(seconds, (int, float)) else None


def _sum_over_ranks(trainer: pl.Trainer, pl_module: pl.LightningModule, value: int) -> float:
    """``value`` summed over the ranks (one all-reduce under DDP; every rank must call it)."""
    if trainer.world_size <= 1:
        return float(value)
    total = torch.tensor(float(value), device=pl_module.device)
    return float(trainer.strategy.reduce(total, reduce_op="sum"))


class _Mark(NamedTuple):
    """Running totals at the end of an optimizer step (``ThroughputMonitor``)."""

    clock: float  # perf_counter seconds, validation left out
    samples: int  # samples trained (all ranks)
    gap_wait: float  # seconds from a batch's end to the next one's start (the fallback)
    fetch_wait: float | None  # seconds the training loader's __next__ took; None: not timed


class ThroughputMonitor(pl.Callback):
    """Logs ``perf/samples_per_sec``, ``perf/data_wait_fraction`` and ``data/skipped_samples``
    (the samples the loaders of all ranks skipped so far: its all-reduce, and the host sync that
    reads it, run only on the steps whose values Lightning writes).

    The values are computed and logged only on the training batches whose logs Lightning
    writes: every ``log_every_n_steps`` optimizer steps (and when the trainer stops), on the
    last micro-batch of the step under gradient accumulation. So each written value belongs to
    the step it is written at, and averages the optimizer steps since the previous write (or
    the last ``window`` of them).

    Data wait: with a training loader that times its fetches (``fetch_seconds``, a running
    total, as :class:`avssl.data.loaders.TrainLoader` does, the loader of ``AVDataModule``), it
    is the wall time the training loop spent blocked in the loader's ``__next__``, waiting for
    a batch; the batch's transfer to the device (``on_after_batch_transfer`` included) does not
    count, nor do the callbacks, logger writes, checkpoints and Lightning's end-of-step work.
    With any other loader it falls back to the time from this callback's ``on_train_batch_end``
    to the next ``on_train_batch_start`` (the fetch, but also every callback that runs after
    this one, e.g. ``ModelCheckpoint``, and the logger writes: an upper bound; the gap across an
    epoch boundary is not counted). Wall time runs from the end of the run's first training
    batch (whose fetch includes the workers' start-up), goes on across epochs (the first fetch
    of a pass, waiting for its workers, counts as waiting with ``TrainLoader``) and leaves
    validation out; samples are the batches' lengths times the world size. On GPU
    the times are host-side and therefore approximate, which is enough to see whether the
    loader keeps up (DESIGN section 7).

    Args:
        window: optimizer steps averaged per logged value, at most (None: every step since
            the previous write, i.e. ``log_every_n_steps`` of them). A window longer than the
            log interval overlaps the previous value's; the values are still written only
            every ``log_every_n_steps``.
    """

    def __init__(self, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 optimizer step or None, got {window}")
        self.window = window
        self._marks: deque[_Mark] = deque(maxlen=None if window is None else window + 1)
        self._reset()

    def _reset(self) -> None:
        self._marks.clear()
        self._samples = 0
        self._gap_wait = 0.0
        self._paused = 0.0  # validation time inside training
        self._last_end: float | None = None
        self._val_start: float | None = None
        self._loader: Any = None  # the training loader that times its fetches, if any
        self._fetch_seen: Any = None  # the last such loader whose totals were read
        self._fetch_base = 0.0  # its fetch_seconds when first seen
        self._fetch_carry = 0.0  # what the loaders seen before it waited

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loader = self._fetch_seen = None  # holds no loader after training

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end = None  # the gap across the epoch boundary is no fetch (fallback)
        self._loader = _timed_train_loader(trainer)  # a loader reloaded at this epoch too

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._marks and not trainer.sanity_checking:
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_start is not None:
            spent = time.perf_counter() - self._val_start
            self._paused += spent
            if self._last_end is not None:  # the validation ran after this batch's end
                self._last_end += spent
            self._val_start = None

    def _fetch_wait(self) -> float | None:
        """Seconds the training loaders' fetches took so far (None: the loader does not time
        them)."""
        loader = self._loader
        if loader is None:
            return None
        if loader is not self._fetch_seen:  # the first, or one reloaded at an epoch start
            if self._fetch_seen is not None:
                self._fetch_carry += float(self._fetch_seen.fetch_seconds) - self._fetch_base
            self._fetch_seen, self._fetch_base = loader, float(loader.fetch_seconds)
        return self._fetch_carry + float(loader.fetch_seconds) - self._fetch_base

    def _mark(self, now: float) -> _Mark:
        clock = now - self._paused
        return _Mark(clock, self._samples, self._gap_wait, self._fetch_wait())

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._last_end is not None:
            self._gap_wait += time.perf_counter() - self._last_end  # fetching this batch

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        self._last_end = now
        if not self._marks:  # the run's first batch: the clock starts at its end
            self._marks.append(self._mark(now))
            return
        self._samples += len(batch) * trainer.world_size
        if not _optimizer_stepped(trainer, pl_module):
            return  # in the middle of an accumulation window: Lightning writes nothing
        mark = self._mark(now)
        if self.window is not None:
            self._marks.append(mark)  # the last `window` steps (deque's maxlen)
        if not _logs_this_step(trainer):  # the same decision on every rank
            return
        skipped = _skipped_samples(trainer, batch)
        if skipped is not None:
            total = _sum_over_ranks(trainer, pl_module, skipped)
            pl_module.log("data/skipped_samples", total, on_step=True)
        first = self._marks[0]
        if self.window is None:  # the next value starts here
            self._marks.clear()
            self._marks.append(mark)
        elapsed = mark.clock - first.clock
        if elapsed <= 0:
            return
        if mark.fetch_wait is not None and first.fetch_wait is not None:
            wait = mark.fetch_wait - first.fetch_wait
        else:
            wait = mark.gap_wait - first.gap_wait
        samples = mark.samples - first.samples
        pl_module.log("perf/samples_per_sec", samples / elapsed, on_step=True)
        pl_module.log("perf/data_wait_fraction", wait / elapsed, on_step=True)


def _first_items(batch: Any, n: int | None) -> Any:
    """The first ``n`` samples of ``batch`` (None: all of it): an ``AVBatch`` with every tensor
    field whose first dimension is the batch's (and ``key``, ``local`` and the tensors of
    ``extra`` of that first dimension) cut to ``n``, its other fields and ``extra`` entries
    kept as they are; a tensor's first ``n`` rows; any other batch whole."""
    if n is None:
        return batch
    if torch.is_tensor(batch):
        return batch[:n]
    if not isinstance(batch, AVBatch) or len(batch) <= n:
        return batch
    size = len(batch)

    def cut(value: Any) -> Any:
        if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == size:
            return value[:n]
        return value

    out: dict[str, Any] = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if f.name == "key":
            value = list(value[:n])
        elif f.name == "local":
            value = None if value is None else _first_items(value, n)
        elif f.name == "extra":
            value = {k: cut(v) for k, v in value.items()}
        else:
            value = cut(value)
        out[f.name] = value
    return AVBatch(**out)


class ImageLogger(pl.Callback):
    """Every ``every_n_steps`` optimizer steps, logs ``pl_module.visualize(batch)`` images, once
    per step: on the batch that ended the step (the last micro-batch of a gradient accumulation
    window), at the step count it reached.

    Only rank 0 draws, under ``torch.no_grad()``; nothing happens without a TensorBoard logger
    or when the objective returns no images.

    Args:
        every_n_steps: interval in optimizer steps (0 disables).
        max_items: the first samples of the batch passed to ``visualize`` (an ``AVBatch`` or a
            tensor is cut to them, its ``local`` views and per-sample fields too; None: the
            whole batch). An objective compiled with ``torch.compile`` (its ``compile`` not
            "none") gets the whole batch: a batch of another size would recompile its blocks.
    """

    def __init__(self, every_n_steps: int = 500, max_items: int | None = 1) -> None:
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
        self.every_n_steps = every_n_steps
        self.max_items = max_items
        self._drawn_step: int | None = None  # the last step drawn

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if not self.every_n_steps or not trainer.is_global_zero or step % self.every_n_steps:
            return
        if step == self._drawn_step or not _optimizer_stepped(trainer, pl_module):
            return  # drawn already, or in the middle of an accumulation window
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        visualize = getattr(pl_module, "visualize", None)
        if tb is None or visualize is None:
            return
        self._drawn_step = step
        mark = getattr(pl_module, "mark_graph_step", None)
        if mark is not None:  # compile="graphs": this forward is a step of its own
            mark()
        # a compiled objective draws from the whole batch: its graphs are for the training
        # shapes (compiled without dynamic shapes), a cut batch would recompile every block
        compiled = getattr(pl_module, "compile_policy", "none") not in ("none", None)
        with torch.no_grad():
            images = visualize(batch if compiled else _first_items(batch, self.max_items))
        for name, img in images.items():
            tb.experiment.add_image(f"images/{name}", img.float().clamp(0, 1).cpu(), step)
