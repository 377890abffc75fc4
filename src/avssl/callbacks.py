"""Training callbacks a researcher wants to see in TensorBoard (issue 4, item 5).

- :class:`ThroughputMonitor`: samples/s, fraction of wall time spent waiting for data, and the
  loader's skipped-sample counter (summed over the ranks), as scalars every
  ``log_every_n_steps``.
- :class:`ImageLogger`: every N steps, the objective's ``visualize(batch)`` figures (input,
  masked input and reconstruction for a spectrogram and for video frames, side by side).

The non-finite-loss counter is logged by :class:`avssl.objectives.base.AVObjective` itself.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger


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


def _sum_over_ranks(trainer: pl.Trainer, pl_module: pl.LightningModule, value: int) -> float:
    """``value`` summed over the ranks (one all-reduce under DDP; every rank must call it)."""
    if trainer.world_size <= 1:
        return float(value)
    total = torch.tensor(float(value), device=pl_module.device)
    return float(trainer.strategy.reduce(total, reduce_op="sum"))


class ThroughputMonitor(pl.Callback):
    """Logs ``perf/samples_per_sec``, ``perf/data_wait_fraction`` and ``data/skipped_samples``
    (the samples the loaders of all ranks skipped so far: its all-reduce, and the host sync that
    reads it, run only on the steps whose values Lightning writes).

    Wait time is measured on the host from the end of one training batch to the start of the
    next (Lightning fetches the batch in between); step time is batch-start to batch-start. On
    GPU the numbers are host-side and therefore approximate, which is enough to see whether the
    loader keeps up (DESIGN section 7).

    Args:
        window: steps averaged per logged value (defaults to the trainer's log interval).
    """

    def __init__(self, window: int | None = None) -> None:
        self.window = window
        self._reset()
        self._last_end: float | None = None
        self._last_start: float | None = None
        self._prev_samples = 0

    def _reset(self) -> None:
        self._wait = 0.0
        self._total = 0.0
        self._samples = 0
        self._steps = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end = None
        self._last_start = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last_end is not None and self._last_start is not None:
            self._wait += now - self._last_end  # fetching this batch
            self._total += now - self._last_start  # the whole previous step
            self._samples += self._prev_samples
            self._steps += 1
        self._last_start = now
        self._prev_samples = len(batch) * trainer.world_size

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._last_end = time.perf_counter()
        skipped = _skipped_samples(trainer, batch)
        if skipped is not None and _logs_this_step(trainer):  # the same decision on every rank
            total = _sum_over_ranks(trainer, pl_module, skipped)
            pl_module.log("data/skipped_samples", total, on_step=True)
        window = self.window or int(getattr(trainer, "log_every_n_steps", 50))
        if self._steps < max(window, 1) or self._total <= 0:
            return
        pl_module.log("perf/samples_per_sec", self._samples / self._total, on_step=True)
        pl_module.log("perf/data_wait_fraction", self._wait / self._total, on_step=True)
        self._reset()


class ImageLogger(pl.Callback):
    """Every ``every_n_steps`` training steps, logs ``pl_module.visualize(batch)`` images.

    Only rank 0 draws, under ``torch.no_grad()``; nothing happens without a TensorBoard logger
    or when the objective returns no images.

    Args:
        every_n_steps: interval in optimizer steps (0 disables).
        max_items: samples of the batch passed to ``visualize``.
    """

    def __init__(self, every_n_steps: int = 500, max_items: int = 1) -> None:
        self.every_n_steps = every_n_steps
        self.max_items = max_items

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
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        visualize = getattr(pl_module, "visualize", None)
        if tb is None or visualize is None:
            return
        mark = getattr(pl_module, "mark_graph_step", None)
        if mark is not None:  # compile="graphs": this forward is a step of its own
            mark()
        with torch.no_grad():
            images = visualize(batch)
        for name, img in images.items():
            tb.experiment.add_image(f"images/{name}", img.float().clamp(0, 1).cpu(), step)
