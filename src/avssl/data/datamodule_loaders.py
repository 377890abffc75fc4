"""The AVDataModule's DataLoaders, and the evaluators' loader over a split.

:class:`DataLoadersMixin` gives :class:`~avssl.data.datamodule.AVDataModule` its training,
validation and evaluation loaders: the streams of :mod:`avssl.data.streams` over the module's
split tables, with its processors (:func:`~avssl.data.sampling.build_processor`) and worker
settings (workers, niceness, pinned memory; :mod:`avssl.data.loaders`). Training yields
``batches_per_epoch`` batches on every rank (default :func:`default_batches_per_epoch`);
validation and :func:`make_eval_loader` every sample of a split exactly once across ranks and
workers. All of it is importable from :mod:`avssl.data.datamodule` too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch.utils.data import IterableDataset

from avssl.data.loaders import EpochLoader, TrainLoader
from avssl.data.local_view import LocalViewSpec
from avssl.data.sampling import build_processor
from avssl.data.shards import DataSource, SplitTable, dist_info, resolve, split_table
from avssl.data.streams import EvalStream, TrainStream

__all__ = ["GPU_WORKER_NICE", "DataLoadersMixin", "default_batches_per_epoch", "make_eval_loader"]
GPU_WORKER_NICE = 10  # AVDataModule's worker_nice default when training on a GPU


def make_eval_loader(
    data: str,
    split: str | None,
    preprocessing: dict,
    num_clips: int = 1,
    batch_size: int = 8,
    num_workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    preset: str = "eval",
) -> EpochLoader:
    """Loader over every sample of ``split`` exactly once, in (shard, position) order, with
    ``num_clips`` uniformly spaced, centre-cropped clips per sample (``[B, K, ...]`` when
    ``num_clips > 1``), labels and keys. ``preprocessing`` is the bundle's dict (see
    ``AVDataModule.preprocessing``); rank/world default to torch.distributed or env."""
    source = resolve(data)
    rank, world_size = dist_info(rank, world_size)
    proc = build_processor(preprocessing, preset, num_clips, "aligned", train=False)
    stream = EvalStream(
        split_table(source, split),
        proc,
        batch_size,
        rank,
        world_size,
        len(source.classes),
        source.multilabel,
        0.0,
        0,
    )
    return EpochLoader(stream, num_workers=num_workers)


def default_batches_per_epoch(num_samples: int, batch_size: int, world: int) -> int:
    return max(1, math.ceil(num_samples / (batch_size * world)))


class DataLoadersMixin:
    """The loaders of :class:`~avssl.data.datamodule.AVDataModule` (which sets the attributes
    declared here in its constructor)."""

    hp: Any  # AttributeDict of the constructor arguments
    source: DataSource
    modalities: tuple[str, ...]
    local_view: LocalViewSpec | None
    _train_loader: TrainLoader | None
    _restored: tuple[int, int, int] | None

    if TYPE_CHECKING:  # defined by AVDataModule

        def table(self, split: str | None) -> SplitTable: ...

        def preprocessing(self) -> dict: ...

    def _epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else None

    def _global_step(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_step if trainer is not None else 0

    def _stream_args(self, split: str | None, rank: int, world: int) -> tuple:
        src = self.source
        return (
            self.table(split),
            self.hp.batch_size,
            rank,
            world,
            len(src.classes),
            src.multilabel,
            self.hp.mismatch_prob,
            self.hp.seed,
        )

    def _loader(self, stream: IterableDataset, cls: type = EpochLoader, **kwargs) -> EpochLoader:
        """A ``cls`` loader of ``stream`` with the module's worker settings (+ ``kwargs``)."""
        workers = self.hp.num_workers
        return cls(
            stream,
            num_workers=workers,
            worker_nice=self.worker_nice(),
            pin_memory=self._on_gpu() if self.hp.pin_memory is None else self.hp.pin_memory,
            prefetch_factor=2 if workers > 0 else None,
            **kwargs,
        )

    def worker_nice(self) -> int:
        """The workers' niceness (``worker_nice``; None: ``GPU_WORKER_NICE`` on a GPU, else 0)."""
        if self.hp.worker_nice is not None:
            return self.hp.worker_nice
        return GPU_WORKER_NICE if self._on_gpu() else 0

    def on_device(self) -> bool:
        """Whether the workers leave the last steps to the training device (``features_on``)."""
        mode = self.hp.features_on
        return self._on_gpu() if mode == "auto" else mode == "device"

    def _on_gpu(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self, rank: int | None = None, world_size: int | None = None):
        """Training loader; ``rank``/``world_size`` override torch.distributed/env (tests)."""
        rank, world = dist_info(rank, world_size)
        proc = build_processor(
            self.preprocessing(),
            self.hp.train_preset,
            self.hp.clips_per_video,
            self.hp.audio_mode,
            True,
            self.hp.augment,
            on_device=self.on_device(),
            keyframe_starts=self.hp.keyframe_starts,
            modalities=self.modalities,
            local=self.local_view,
        )
        table, *rest = self._stream_args(self.hp.train_split, rank, world)
        bpe = self.hp.batches_per_epoch or default_batches_per_epoch(
            table.num_samples, self.hp.batch_size, world
        )
        stream = TrainStream(
            table, proc, *rest, batches_per_epoch=bpe, repeats=self.hp.repeated_sampling
        )
        loader = self._loader(stream, TrainLoader, epoch_fn=self._epoch, step_fn=self._global_step)
        assert isinstance(loader, TrainLoader)
        loader.restored, self._restored = self._restored, None
        self._train_loader = loader
        return loader

    def val_dataloader(self, rank: int | None = None, world_size: int | None = None):
        """Validation loader over ``val_split`` (each sample once); [] when not configured."""
        if self.hp.val_split is None:
            return []
        rank, world = dist_info(rank, world_size)
        mode = self.hp.audio_mode
        proc = build_processor(
            self.preprocessing(),
            self.hp.eval_preset,
            self.hp.clips_per_video if self.hp.val_clips is None else self.hp.val_clips,
            mode,
            False,
            None,  # ``augment`` overrides the training preset only
            on_device=self.on_device(),
            modalities=self.modalities,
            local=self.local_view,  # the same local views, drawn per batch as its clips are
        )
        table, *rest = self._stream_args(self.hp.val_split, rank, world)
        return self._loader(EvalStream(table, proc, *rest))

    def eval_loader(self, split: str, num_clips: int = 1, batch_size: int | None = None):
        """Every sample of ``split`` once, K uniformly spaced centre-cropped clips (evaluators)."""
        return make_eval_loader(
            self.hp.data,
            split,
            self.preprocessing(),
            num_clips,
            batch_size or self.hp.batch_size,
            self.hp.num_workers,
        )
