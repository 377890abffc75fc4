"""The data streams' seed (``data.init_args.seed``, by default the run's global seed) and what a
resumed run draws: the checkpoint's seed, the rest of an interrupted epoch afresh, and the
uninterrupted run's epochs after it, also when it resumes at an epoch's end."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from avssl.data.datamodule import AVDataModule

TINY = dict(num_frames=2, frame_stride=2, crop_size=16, audio_frames=64, train_split=None)


def _dm(data, **kwargs) -> AVDataModule:
    return AVDataModule(str(data), **{**TINY, "batch_size": 2, "num_workers": 0, **kwargs})


def _draws(loader) -> list:
    """(key, clip start) of every sample of one pass of ``loader``."""
    return [(k, float(s)) for b in loader for k, s in zip(b.key, b.clip_start)]


def test_the_global_seed_seeds_the_data_streams_unless_a_seed_is_given(synth, monkeypatch):
    """``make demo SEEDS=3`` passes only ``--seed_everything k``: each k its own clips, clip
    times and augmentation; the same k the same; an explicit seed wins; no global seed: 0."""
    streams, seeds = {}, {}
    for name, env, seed in [("g0", "0", None), ("g1", "1", None), ("g1 again", "1", None),
                            ("g1 seed 0", "1", 0), ("none", None, None)]:  # fmt: skip
        if env is None:
            monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
        else:
            monkeypatch.setenv("PL_GLOBAL_SEED", env)
        dm = _dm(synth, seed=seed, batches_per_epoch=3)
        streams[name], seeds[name] = _draws(dm.train_dataloader()), dm.hparams.seed
    assert streams["g0"] != streams["g1"]
    assert streams["g1"] == streams["g1 again"]
    assert streams["g1 seed 0"] == streams["g0"] == streams["none"]
    assert seeds == {"g0": 0, "g1": 1, "g1 again": 1, "g1 seed 0": 0, "none": 0}


def test_a_resumed_run_keeps_its_checkpoints_seed(synth, monkeypatch):
    """The seed used is in the data module's checkpoint state: a resume started with another
    global seed (``--resume auto`` without ``--seed_everything``) draws the run's streams; a
    seed given explicitly stays."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    first = _dm(synth, batches_per_epoch=3)
    state = first.state_dict()
    assert state["seed"] == 3
    ref = first.train_dataloader()
    e0, e1 = _draws(ref), _draws(ref)
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    resumed = _dm(synth, batches_per_epoch=3)
    resumed.load_state_dict(state)
    assert resumed.hparams.seed == 3 and resumed.state_dict()["seed"] == 3
    loader = resumed.train_dataloader()
    assert (_draws(loader), _draws(loader)) == (e0, e1)
    given = _dm(synth, batches_per_epoch=3, seed=0)
    given.load_state_dict(state)
    assert given.hparams.seed == 0


@pytest.mark.parametrize(
    "done,first_pass,reseeded",
    [(3, 1, False), (0, 0, False), (2, 0, True)],
    ids=["end of epoch 0", "start of epoch 0", "middle of epoch 0"],
)
def test_a_resume_reseeds_only_an_interrupted_epoch(synth, done, first_pass, reseeded):
    """The position a checkpoint saved (epoch 0, ``done`` of its 3 batches trained): resumed
    at the epoch's end, the pass Lightning starts is epoch 1, the uninterrupted run's; before
    its first batch, epoch 0 as it was; in the middle, epoch 0 drawn afresh; and the next
    pass is the uninterrupted run's next epoch in every case."""
    ref = _dm(synth, batches_per_epoch=3).train_dataloader()
    epochs = [_draws(ref) for _ in range(3)]
    dm = _dm(synth, batches_per_epoch=3)
    dm.load_state_dict({"seed": 0, "epoch": 0, "batches": done, "epoch_batches": 3})
    loader = dm.train_dataloader()
    loader.load_state_dict({"global_step": done})
    got = _draws(loader)
    assert (got != epochs[first_pass]) == reseeded and len(got) == len(epochs[first_pass])
    assert _draws(loader) == epochs[first_pass + 1]


class _Recorder(pl.LightningModule):
    """Records (epoch, batch index, keys, clip starts) of every training batch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        starts = [round(float(s), 3) for s in batch.clip_start]
        self.seen.append((self.current_epoch, batch_idx, tuple(batch.key), tuple(starts)))
        return (self.w * batch.video.mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(synth, seed: int, ckpt_path=None, callbacks=()) -> list[tuple]:
    pl.seed_everything(seed, verbose=False)  # sets PL_GLOBAL_SEED, as LightningCLI does
    model = _Recorder()
    trainer = pl.Trainer(
        max_steps=9,  # 3 epochs of 3 batches; avssl's runs are step-based (max_epochs -1)
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks),
    )
    trainer.fit(model, datamodule=_dm(synth, batches_per_epoch=3), ckpt_path=ckpt_path)
    return model.seen


def test_lightning_resumes_the_seed_and_the_epochs_after_a_boundary(synth, tmp_path):
    """Under a Trainer, with the global seed 2 and a resume started with seed 0: from the
    checkpoint at the end of epoch 0 (step 3) epochs 1 and 2 are the uninterrupted run's;
    from the one in the middle of epoch 1 (step 4) the rest of epoch 1 is drawn afresh and
    epoch 2 is the uninterrupted run's."""
    folder = tmp_path / "ckpt"
    every = ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    full = _fit(synth, 2, callbacks=[every])
    assert [(e, i) for e, i, *_ in full] == [(e, i) for e in range(3) for i in range(3)]
    at_end = _fit(synth, 0, ckpt_path=folder / "step=3.ckpt")
    assert at_end == full[3:]
    mid = _fit(synth, 0, ckpt_path=folder / "step=4.ckpt")
    assert [(e, i) for e, i, *_ in mid] == [(e, i) for e, i, *_ in full[4:]]
    assert mid[:2] != full[4:6] and mid[2:] == full[6:]
