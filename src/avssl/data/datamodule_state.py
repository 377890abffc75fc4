"""What a checkpoint keeps of the AVDataModule, and the hook that finishes each batch.

:class:`DataStateMixin` gives :class:`~avssl.data.datamodule.AVDataModule` its
``state_dict`` / ``load_state_dict`` (the streams' seed, the corrupt training samples skipped
by all ranks, and the training loader's position, for a resumed run; DESIGN section 9) and its
``on_after_batch_transfer``: the fbank, colour jitter and normalisation of a batch the workers
left to the device (``features_on``, :func:`~avssl.data.batching.features_on_device`), the
per-rank ``extra["skipped_total"]``, and the count of training batches in the loader's
position.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info

from avssl.data.batch import AVBatch
from avssl.data.batching import features_on_device
from avssl.data.fbank import FbankConfig
from avssl.data.loaders import TrainLoader
from avssl.data.local_view import LocalViewSpec

__all__ = ["DataStateMixin"]


class DataStateMixin:
    """The checkpoint state and batch-transfer hook of
    :class:`~avssl.data.datamodule.AVDataModule` (which sets the attributes declared here in
    its constructor)."""

    hp: Any  # AttributeDict of the constructor arguments
    fbank: FbankConfig
    local_view: LocalViewSpec | None
    skipped_total: int
    _seed_given: bool
    _train_loader: TrainLoader | None
    _restored: tuple[int, int, int] | None

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint keeps of the data (Lightning saves it under the class name): the
        streams' seed, the corrupt training samples skipped so far by all ranks (``skipped``:
        Lightning asks every rank for this state, so one all-reduce sums them) and, once
        training has started, the training loader's position: the epoch of its pass, the
        batches of it trained and the batches that epoch has."""
        state = {"seed": int(self.hp.seed), "skipped": self._skipped_all_ranks()}
        loader = self._train_loader
        if loader is not None and loader.position is not None:
            trainer = getattr(self, "trainer", None)
            length = getattr(trainer, "num_training_batches", None)
            length = len(loader) if length is None or math.isinf(length) else int(length)
            epoch, done = loader.position
            state.update(epoch=epoch, batches=done, epoch_batches=length)
        return state

    def _skipped_all_ranks(self) -> int:
        """``skipped_total`` summed over the ranks (an all-reduce when there are several)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size <= 1:
            return int(self.skipped_total)
        total = torch.tensor(float(self.skipped_total), device=trainer.strategy.root_device)
        return int(round(float(trainer.strategy.reduce(total, reduce_op="sum"))))

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restores a checkpoint's :meth:`state_dict` before the loaders are made (a resumed
        run): its seed, unless ``seed`` was given, the skipped-sample count (on rank 0, so that
        the logged sum over the ranks goes on from the run's) and the position the next
        training loader resumes from (``TrainLoader``)."""
        seed = state.get("seed")
        if seed is not None and int(seed) != self.hp.seed:
            if self._seed_given:
                rank_zero_info(f"[data] seed {self.hp.seed} as given, not the checkpoint's {seed}")
            else:
                rank_zero_info(f"[data] seed {seed}: the resumed checkpoint's")
                self.hp.seed = int(seed)
        # rank 0 carries the run's count on, the others start at 0: their sum is the run's
        rank = getattr(getattr(self, "trainer", None), "global_rank", 0)
        self.skipped_total = int(state.get("skipped", 0)) if rank == 0 else 0
        if "batches" in state:
            keys = ("epoch", "batches", "epoch_batches")
            self._restored = (int(state[keys[0]]), int(state[keys[1]]), int(state[keys[2]]))
            if self._train_loader is not None:  # made already: it takes the position too
                self._train_loader.restored, self._restored = self._restored, None

    def on_after_batch_transfer(self, batch: AVBatch, dataloader_idx: int) -> AVBatch:
        """Finishes a batch the workers left to the device (``features_on``), adds
        ``extra["skipped_total"]`` (corrupt training samples skipped so far on this rank) and
        counts a training batch in the training loader's position."""
        if isinstance(batch, AVBatch):
            batch = features_on_device(batch, self.fbank)
            if batch.local is not None and self.local_view is not None:
                local_fbank = replace(self.fbank, target_frames=self.local_view.audio_frames)
                batch.local = features_on_device(batch.local, local_fbank)
            trainer = getattr(self, "trainer", None)
            if trainer is None or trainer.training:
                self.skipped_total += int(batch.extra.get("skipped", 0))
                if self._train_loader is not None:
                    self._train_loader.batch_trained()
            batch.extra["skipped_total"] = self.skipped_total
        return batch
