"""The logged skipped-sample counter under 2-process CPU (gloo) DDP: ``data/skipped_samples`` is
the sum of the samples the loaders of both ranks skipped (DESIGN section 9: corrupt samples are
counted and logged), reduced only on the steps whose values Lightning writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.multiprocessing as mp

from avssl.callbacks import ThroughputMonitor
from avssl.data.datamodule import AVDataModule
from tests.data.conftest import rewrite
from tests.ranks import free_port, run_ranks

BROKEN = (1, 4, 6, 9, 11)  # samples with a garbage mp4 member
STEPS, LOG_EVERY = 6, 2


@pytest.fixture(scope="module")
def broken_data(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def edit(s: dict, i: int) -> dict:
        if i in BROKEN:
            s["mp4"] = bytes(range(256)) * 64
        return s

    return rewrite(synth, tmp_path_factory.mktemp("skip_ddp") / "prepared", edit)


class _Recorder(pl.LightningModule):
    """Records this rank's ``skipped_total`` per step and what is logged as the counter."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.own: list[int] = []
        self.logged: list[tuple[int, float]] = []

    def training_step(self, batch, batch_idx):
        self.own.append(int(batch.extra["skipped_total"]))
        return (self.w * batch.video.mean()).sum()

    def log(self, name, value, *args, **kwargs):
        if name == "data/skipped_samples":
            self.logged.append((len(self.own), float(value)))
        super().log(name, value, *args, **kwargs)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _rank(rank: int, port: int, data: str, out: dict) -> None:
    """One DDP rank, as torchrun starts it (Lightning reads the environment)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")  # fmt: skip
    os.environ.pop("PL_GLOBAL_SEED", None)
    torch.set_num_threads(1)
    dm = AVDataModule(data, batch_size=2, num_workers=0, num_frames=2, frame_stride=2,
                      crop_size=16, audio_frames=64, train_split=None)  # fmt: skip
    model = _Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=STEPS,
        log_every_n_steps=LOG_EVERY,
        use_distributed_sampler=False,
        callbacks=[ThroughputMonitor()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    # what a checkpoint keeps: every rank is asked (as Lightning's dump does), the sum is kept
    out[rank] = {"own": model.own, "logged": model.logged, "state": dm.state_dict()}


@pytest.mark.slow
def test_the_logged_counter_sums_the_ranks_skipped_samples(broken_data):
    out = mp.Manager().dict()
    run_ranks(_rank, (free_port(), str(broken_data), out))
    own = [out[r]["own"] for r in range(2)]
    assert [len(o) for o in own] == [STEPS, STEPS]
    assert own[0][-1] > 0 and own[1][-1] > 0  # both ranks met corrupt samples
    for rank in range(2):
        logged = out[rank]["logged"]
        for step, value in logged:  # rank 0's is what the loggers write
            assert value == own[0][step - 1] + own[1][step - 1], (rank, step)
        # logged on the steps Lightning writes (every LOG_EVERY-th), the same value on both ranks
        assert [step for step, _ in logged] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
        assert logged == out[0]["logged"]
        assert out[rank]["state"]["skipped"] == own[0][-1] + own[1][-1]


def test_a_resumed_run_counts_on_from_its_checkpoints_skipped_samples(broken_data, tmp_path):
    """The count is in the data module's checkpoint state: a resumed run's logged counter goes on
    from it (before, it restarted at 0)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    class PerBatch(_Recorder):  # also the samples each batch skipped
        def training_step(self, batch, batch_idx):
            self.per_batch = [*getattr(self, "per_batch", []), int(batch.extra["skipped"])]
            return super().training_step(batch, batch_idx)

    def fit(max_steps, ckpt_path=None, callbacks=()):
        dm = AVDataModule(str(broken_data), batch_size=2, num_workers=0, num_frames=2,
                          frame_stride=2, crop_size=16, audio_frames=64,
                          train_split=None)  # fmt: skip
        model = PerBatch()
        trainer = pl.Trainer(
            accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=list(callbacks),
            enable_checkpointing=bool(callbacks),
        )  # fmt: skip
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model.own, model.per_batch

    every = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, filename="{step}")
    first, _ = fit(3, callbacks=[every])
    assert first[-1] > 0  # corrupt samples were met before the checkpoint
    saved = torch.load(tmp_path / "step=3.ckpt", weights_only=True)["AVDataModule"]["skipped"]
    assert saved == first[-1]
    resumed, per_batch = fit(STEPS, ckpt_path=tmp_path / "step=3.ckpt")
    assert len(resumed) == STEPS - 3
    assert resumed == [saved + sum(per_batch[: i + 1]) for i in range(len(per_batch))]
