"""AVDataModule under a Lightning Trainer: batch counts, epochs, skipped-sample counter."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from avssl.data.batch import AVBatch
from avssl.data.datamodule import AVDataModule
from avssl.data.shards import resolve, split_table

CORRUPT_INDEX = 6  # as in conftest


class Probe(pl.LightningModule):
    """Records what the loader hands to the steps."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.train_keys: list[list[str]] = []
        self.extras: list[dict] = []
        self.val_keys: list[str] = []

    def training_step(self, batch: AVBatch, batch_idx: int):
        assert isinstance(batch, AVBatch)
        self.train_keys.append(list(batch.key))
        self.extras.append(dict(batch.extra))
        x = batch.video.mean(dim=(2, 3, 4))  # [B, C]
        return self.lin(x).pow(2).mean()

    def validation_step(self, batch: AVBatch, batch_idx: int):
        self.val_keys.extend(batch.key)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_runs_fixed_batches_per_epoch(corrupt_data, small_args):
    dm = AVDataModule(str(corrupt_data), **small_args(batches_per_epoch=2, val_split="test1"))
    model = Probe()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.train_keys) == 4 and all(len(k) == 2 for k in model.train_keys)
    assert model.train_keys[:2] != model.train_keys[2:]  # the epoch reaches the stream
    assert all("skipped_total" in e for e in model.extras)
    assert model.extras[-1]["skipped_total"] == sum(e["skipped"] for e in model.extras)
    corrupt = split_table(resolve(corrupt_data), None).ordered()[CORRUPT_INDEX][1]
    test1 = [k for k in (corrupt_data / "splits" / "test1.txt").read_text().split() if k != corrupt]
    assert sorted(model.val_keys) == sorted(test1 * 2)  # each epoch validates every sample once
