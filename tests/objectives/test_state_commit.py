"""Objective state moves only with a batch whose loss was finite (``commit_state``): one NaN
clip must not poison AVID's memory bank or XKD's teacher centres, XKD's EMA teacher stays put
through a skipped step, and validation commits nothing."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from avssl.objectives.contrastive import AVContrastive
from avssl.objectives.xkd import XKD
from tests.objectives.batches import make_batch
from tests.objectives.test_base import _trainer
from tests.objectives.test_xkd import TINY as XKD_TINY


def _batches(n: int, bad: int) -> list:
    """``n`` batches of 4; batch ``bad`` has a NaN video clip (its 3rd); batch i + 2 repeats
    batch i's keys, so the bad batch's samples come back (clean) two batches later."""
    out = []
    for i in range(n):
        b = make_batch(B=4, seed=i)
        b.key = [f"s{i % 2}_{j}" if i >= 2 else f"s{i}_{j}" for j in range(4)]
        if i == bad:
            b.video[2] = float("nan")
        out.append(b)
    return out


class Batches(pl.LightningDataModule):
    def __init__(self, batches: list) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None, shuffle=False)


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float | None] = []
        self.teacher: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        # None for a skipped step (its returned loss is a zero that changes nothing)
        self.losses.append(None if module.last_step_skipped else float(outputs["loss"]))
        if hasattr(module, "teacher"):
            self.teacher.append([p.detach().clone() for p in module.teacher.parameters()])


def test_a_nan_clip_leaves_avids_memory_bank_clean(tmp_path):
    """Before: the NaN clip's new row held NaN, every later draw of it made the loss NaN."""
    torch.manual_seed(0)
    tiny = dict(size="tiny", depth=1, proj_dim=16, proj_hidden_dim=32, heads="avid")
    model = AVContrastive(**tiny, memory_bank=True, bank_negatives=64, lr=1e-3, warmup_steps=0)
    spy = Losses()
    _trainer(tmp_path, max_steps=5, callbacks=[spy]).fit(model, datamodule=Batches(_batches(5, 1)))
    assert spy.losses[1] is None and model.nonfinite_total == 1
    clean = [v for i, v in enumerate(spy.losses) if i != 1]
    assert all(v is not None and torch.isfinite(torch.tensor(v)) for v in clean)
    n = len(model.bank_index)
    assert n == 8 and set(model.bank_index) == {f"s{i}_{j}" for i in (0, 1) for j in range(4)}
    for m in ("audio", "video"):
        assert torch.isfinite(model.bank[m][:n]).all()
        assert model.bank_valid[m][:n].all()


def test_a_nan_batch_keeps_no_new_key_and_no_memory():
    """A skipped batch (not committed) adds no key and moves no memory; the same batch, clean,
    then starts its samples' memories as usual."""
    torch.manual_seed(0)
    tiny = dict(size="tiny", depth=1, proj_dim=16, proj_hidden_dim=32)
    model = AVContrastive(**tiny, memory_bank=True, bank_negatives=8).train()
    clean = make_batch(B=4, seed=0)
    model.compute_losses(clean)
    model.commit_state()
    bank = {m: b.clone() for m, b in model.bank.items()}
    bad = make_batch(B=4, seed=1)
    bad.key = ["fake/0", "new/1", "new/2", "fake/3"]
    bad.video[1] = float("nan")
    with torch.no_grad():
        assert not torch.isfinite(model.compute_losses(bad)["loss"])
    # training_step commits nothing here
    assert set(model.bank_index) == set(clean.key)
    n = len(clean.key)
    for m in ("audio", "video"):
        assert torch.equal(model.bank[m][:n], bank[m][:n])
        assert not model.bank_valid[m][n:].any()
    bad.video[1] = 0.5
    assert torch.isfinite(model.compute_losses(bad)["loss"])
    model.commit_state()
    assert set(model.bank_index) == set(clean.key) | {"new/1", "new/2"}
    assert torch.isfinite(model.bank["video"][: len(model.bank_index)]).all()


def _xkd() -> XKD:
    torch.manual_seed(0)
    return XKD(**XKD_TINY, lr=1e-3, warmup_steps=0)


def test_a_nan_clip_leaves_xkds_centres_and_teacher_alone(tmp_path):
    """Before: the centres took the NaN teacher logits (every later loss NaN), and the EMA
    teacher moved at the skipped step (Lightning passes ``{}``, not None, for its outputs)."""
    model = _xkd()
    spy = Losses()
    _trainer(tmp_path, max_steps=4, callbacks=[spy]).fit(model, datamodule=Batches(_batches(4, 1)))
    assert spy.losses[1] is None and model.nonfinite_total == 1
    assert all(spy.losses[i] is not None for i in (0, 2, 3))
    assert torch.isfinite(model.center_audio).all() and torch.isfinite(model.center_video).all()
    assert not torch.equal(model.center_video, torch.zeros_like(model.center_video))
    # the EMA runs in optimizer_step, before the batch-end hooks: teacher[i] is after step i
    same = [torch.equal(a, b) for a, b in zip(spy.teacher[0], spy.teacher[1])]
    assert all(same)  # the skipped step (batch 1) moved no teacher weight
    assert not all(torch.equal(a, b) for a, b in zip(spy.teacher[1], spy.teacher[2]))
    assert all(torch.isfinite(p).all() for p in model.teacher.parameters())


def test_validation_commits_nothing(tmp_path, monkeypatch):
    """Validation batches compute the losses in evaluation mode: no staged update, no commit."""
    model = _xkd()
    calls = []
    monkeypatch.setattr(XKD, "commit_state", lambda self: calls.append(1))
    loader = torch.utils.data.DataLoader(_batches(2, -1), batch_size=None)
    _trainer(tmp_path).validate(model, dataloaders=loader, verbose=False)
    assert calls == [] and model._staged_centres is None
    assert torch.equal(model.center_audio, torch.zeros_like(model.center_audio))
