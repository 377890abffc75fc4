"""Host-device syncs of a training step (DESIGN section 7: none inside the step but the
non-finite guard's): on the steps whose values Lightning does not write, the only read on the
host of a tensor the objective computed is the guard's finiteness check (before, Lightning also
read the progress bar's loss at every batch's end, which on a GPU waits for the backward pass).

On the CPU every tensor is a host tensor, so the objective's losses are marked as a tensor
subclass (which the operations on them keep) and the reads of marked tensors are counted
(``Tensor.item`` and ``Tensor.tolist``)."""

from __future__ import annotations

import collections
import traceback

import pytorch_lightning as pl
import torch

from avssl.callbacks import ThroughputMonitor
from tests.objectives.test_base import FakeData, Toy

LOG_EVERY = 5


class OnDevice(torch.Tensor):
    """Stands for a tensor on the accelerator."""


class MarkedToy(Toy):
    def compute_losses(self, batch):
        return {k: v.as_subclass(OnDevice) for k, v in super().compute_losses(batch).items()}


def test_a_step_whose_logs_are_not_written_reads_the_device_once(tmp_path, monkeypatch):
    reads: dict[int, list[str]] = collections.defaultdict(list)
    step = [-1]

    def counting(read):
        def counted(self, *args):
            caller = traceback.extract_stack()[-2]
            # the subclass's __torch_function__ (torch/_tensor.py) calls the read once more
            if isinstance(self, OnDevice) and not caller.filename.endswith("torch/_tensor.py"):
                reads[step[0]].append(f"{caller.filename}:{caller.lineno}")
            return read(self, *args)

        return counted

    class Steps(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            step[0] = batch_idx

    for name in ("item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path), accelerator="cpu", max_steps=12,
        log_every_n_steps=LOG_EVERY, callbacks=[Steps(), ThroughputMonitor()],
        logger=pl.loggers.CSVLogger(str(tmp_path)), enable_checkpointing=False,
        enable_progress_bar=True, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(MarkedToy(lr=1e-3, warmup_steps=0), datamodule=FakeData(n=12))
    quiet = [i for i in range(12) if (i + 1) % LOG_EVERY]  # steps 1-4, 6-9, 11 (1-based)
    for i in quiet:
        assert len(reads[i]) == 1 and "objectives/base.py" in reads[i][0], (i, reads[i])
    assert len(reads[LOG_EVERY - 1]) > 1  # the written steps do read them (the check can fail)
    assert trainer.progress_bar_metrics["loss"] == trainer.progress_bar_metrics["loss"]  # a value
