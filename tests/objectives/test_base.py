"""AVObjective: parameter groups, schedule, LR scaling, non-finite guard, checkpoints."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from avssl.data.batch import AVBatch
from avssl.models.layers import Block
from avssl.objectives.base import AVObjective, WarmupCosine, param_groups, rng_state, set_rng_state
from tests.objectives.batches import make_batch


class Toy(AVObjective):
    """A linear 'encoder' on the first audio values; NaN loss at the listed batch indices."""

    def __init__(self, nan_batches: list[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_batches = set(nan_batches or [])
        self.audio_encoder = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 8))
        self.calls = 0

    def compute_losses(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        x = batch.audio.flatten(1)[:, :8]
        out = self.audio_encoder(x) + self.pos_embed
        rec = (out - x).pow(2).mean()
        if self.calls in self.nan_batches:
            rec = rec * float("nan")
        self.calls += 1
        return {"loss": rec, "rec": rec}

    def export_encoders(self) -> dict:
        return {"audio": self.audio_encoder, "video": None, "which": "student", "note": "toy"}


class FakeData(pl.LightningDataModule):
    """Fixed random AVBatches; exposes batch_size and preprocessing() like AVDataModule."""

    def __init__(self, batch_size: int = 4, n: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.batches = [make_batch(B=batch_size, seed=i) for i in range(n)]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None, shuffle=False)

    def preprocessing(self) -> dict:
        return {"num_frames": 4, "crop_size": 32, "fbank": {"num_mel_bins": 32}}


def _trainer(tmp_path, **kw) -> pl.Trainer:
    args = dict(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_steps=6,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    args.update(kw)
    return pl.Trainer(**args)


def test_param_groups_no_decay_on_norms_biases_embeddings():
    toy = Toy()
    decay, no_decay = param_groups(toy, 0.05)
    names = {id(p): n for n, p in toy.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"audio_encoder.0.weight"}
    assert {names[id(p)] for p in no_decay["params"]} == {
        "audio_encoder.0.bias",
        "audio_encoder.1.weight",
        "audio_encoder.1.bias",
        "pos_embed",
    }
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_frozen_parameters_are_left_out():
    toy = Toy()
    toy.audio_encoder[0].weight.requires_grad_(False)
    decay, no_decay = param_groups(toy, 0.05)
    assert decay["params"] == [] and len(no_decay["params"]) == 4


def test_warmup_cosine_values():
    s = WarmupCosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert s(0) == pytest.approx(0.1)
    assert s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    values = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_scaled_by_effective_batch_and_schedule_steps(tmp_path):
    toy = Toy(base_lr=1e-3, warmup_steps=2, min_lr_ratio=0.0)
    trainer = _trainer(tmp_path, max_steps=4, accumulate_grad_batches=2)
    trainer.fit(toy, datamodule=FakeData(batch_size=4))
    assert toy.used_lr == pytest.approx(1e-3 * 4 * 2 / 256)
    sched = trainer.lr_scheduler_configs[0]
    assert sched.interval == "step"
    assert sched.scheduler.last_epoch == 4
    lr_end = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr_end == pytest.approx(toy.used_lr * WarmupCosine(2, 4, 0.0)(4))


def test_absolute_lr_overrides_scaling(tmp_path):
    toy = Toy(lr=0.01)
    _trainer(tmp_path, max_steps=1).fit(toy, datamodule=FakeData())
    assert toy.used_lr == 0.01


def test_nonfinite_loss_is_skipped_and_counted(tmp_path):
    toy = Toy(nan_batches=[1, 2], base_lr=1e-2)
    seen = {}

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen[batch_idx] = (
                module.last_step_skipped,
                [p.detach().clone() for p in module.parameters()],
            )

    trainer = _trainer(tmp_path, max_steps=4, callbacks=[Spy()])
    trainer.fit(toy, datamodule=FakeData())
    assert toy.nonfinite_total == 2 and toy.nonfinite_in_row == 0
    assert seen[1][0] and seen[2][0] and not seen[3][0] and not seen[0][0]
    for a, b in zip(seen[0][1], seen[2][1]):  # skipped steps left the weights unchanged
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(seen[2][1], seen[3][1]))
    assert trainer.callback_metrics["train/nonfinite_skipped"] == 2.0


def test_too_many_nonfinite_in_a_row_stops_with_clear_error(tmp_path):
    toy = Toy(nan_batches=list(range(1, 50)), max_nonfinite_in_row=3)
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row.*rec=nan"):
        _trainer(tmp_path, max_steps=20).fit(toy, datamodule=FakeData())


def test_checkpoint_loads_with_weights_only_and_has_provenance(tmp_path):
    toy = Toy(base_lr=1e-3)
    toy.recipe_name = "toy"
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(toy, datamodule=FakeData())
    path = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["avssl"]["objective"] == f"{Toy.__module__}.Toy"
    assert ckpt["avssl"]["recipe"] == "toy"
    assert ckpt["avssl"]["data"] == FakeData().preprocessing()
    import avssl

    assert ckpt["avssl"]["version"] == avssl.__version__
    hp = ckpt["hyper_parameters"]
    assert hp["base_lr"] == 1e-3 and hp["max_nonfinite_in_row"] == 20
    json.dumps(hp)  # JSON-serialisable
    sched = ckpt["lr_schedulers"][0]["lr_lambdas"][0]
    assert sched["warmup_steps"] == 0 and sched["total_steps"] == 2
    assert ckpt["optimizer_states"][0]["state"][0]["step"] == 2


def test_non_json_hyperparameter_is_refused():
    class Bad(Toy):
        def __init__(self, thing: object = None, **kwargs) -> None:
            super().__init__(**kwargs)

    with pytest.raises(ValueError, match="'thing' is a object"):
        Bad(thing=object())


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert got == expected


class BlockToy(Toy):
    """Toy with two transformer blocks on the audio values (for the compile option)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.blocks = nn.Sequential(Block(8, 2), Block(8, 2))

    def compute_losses(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        x = batch.audio.flatten(1)[:, :16].reshape(-1, 2, 8)  # [B, 2 tokens, 8]
        rec = (self.blocks(x) - x).pow(2).mean()
        return {"loss": rec, "rec": rec}


def test_compile_option_is_validated_and_applied_at_fit_start(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="compile must be one of"):
        Toy(compile="yes")
    calls = []

    def fake_compile(self, *args, **kwargs):  # Block.compile -> eager backend, recorded
        calls.append(kwargs)
        nn.Module.compile(self, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(Block, "compile", fake_compile)
    toy = BlockToy(compile="blocks", lr=1e-2)
    before = set(toy.state_dict())
    _trainer(tmp_path, max_steps=2).fit(toy, datamodule=FakeData())
    assert len(calls) == 2 and all(c["dynamic"] is False for c in calls)
    assert set(toy.state_dict()) == before  # compiled in place: checkpoint names unchanged
    auto = BlockToy(compile="auto", lr=1e-2)  # "auto" compiles on CUDA only
    _trainer(tmp_path, max_steps=1).fit(auto, datamodule=FakeData())
    assert len(calls) == 2
    assert BlockToy().compile_policy == "none"  # off by default


def test_compile_graphs_replays_blocks_as_cuda_graphs_and_marks_every_step(tmp_path, monkeypatch):
    """``compile="graphs"``: the blocks are compiled with ``mode="reduce-overhead"`` (CUDA
    graphs on a GPU; on this CPU inductor runs them as plain compiled kernels) and every training
    step is marked as a new one before its forward; "blocks" marks nothing."""
    calls, marks = [], []

    def fake_compile(self, *args, **kwargs):  # Block.compile -> eager backend, recorded
        calls.append(kwargs)
        kw = {k: v for k, v in kwargs.items() if k != "mode"}
        nn.Module.compile(self, *args, **{**kw, "backend": "eager"})

    monkeypatch.setattr(Block, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    toy = BlockToy(compile="graphs", lr=1e-2)
    _trainer(tmp_path, max_steps=3).fit(toy, datamodule=FakeData())
    assert len(calls) == 2 and all(c["mode"] == "reduce-overhead" for c in calls)
    assert len(marks) == 3  # one per training step
    marks.clear()
    _trainer(tmp_path, max_steps=3).fit(BlockToy(compile="blocks", lr=1e-2), datamodule=FakeData())
    assert marks == [] and "mode" not in calls[-1]


def test_clip_grad_per_param_clips_each_tensor_before_the_step(tmp_path):
    """``clip_grad_per_param``: every gradient tensor above the limit is scaled to norm = the
    limit (direction kept), tensors below it are left alone; in training the gradients the
    optimizer stepped with (seen after the step) are clipped, and are not without the option."""
    from avssl.objectives.base import clip_per_param

    a = nn.Parameter(torch.zeros(3))
    b = nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.1, 0.0])
    clip_per_param([a, b], 0.5)
    torch.testing.assert_close(a.grad, torch.tensor([0.3, 0.0, 0.4]), atol=1e-5, rtol=0)
    torch.testing.assert_close(b.grad, torch.tensor([0.1, 0.0]))  # below: untouched
    with pytest.raises(ValueError, match="clip_grad_per_param"):
        Toy(clip_grad_per_param=-1.0)

    class Spy(pl.Callback):
        def __init__(self) -> None:
            self.norms: list[float] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            self.norms.extend(float(g.norm()) for g in grads)

    for clip, check in ((1e-3, lambda m: m <= 1e-3 * (1 + 1e-4)), (0.0, lambda m: m > 1e-2)):
        spy = Spy()
        toy = Toy(base_lr=1e-2, clip_grad_per_param=clip)
        _trainer(tmp_path, max_steps=2, callbacks=[spy]).fit(toy, datamodule=FakeData())
        assert spy.norms and check(max(spy.norms)), (clip, max(spy.norms))


class LRs(pl.Callback):
    """The learning rate each training step runs at; saves a checkpoint after step ``save_at``."""

    def __init__(self, save_at: int = -1, path=None) -> None:
        self.lrs: list[float] = []
        self.save_at, self.path = save_at, path

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.save_at:
            trainer.save_checkpoint(self.path)


def test_resume_with_more_steps_follows_the_new_schedule(tmp_path, caplog):
    """A run of 4 steps resumed with max_steps 8: the cosine is stretched over 8 steps (before,
    the restored schedule kept 4 and the 4 new steps ran at the final rate 0), one line says
    so; resumed with the same settings the rates are those of the uninterrupted run, exactly."""
    import logging

    kw = dict(lr=1e-2, warmup_steps=1, min_lr_ratio=0.0)
    ckpt = tmp_path / "four.ckpt"
    trainer = _trainer(tmp_path, max_steps=4)
    trainer.fit(Toy(**kw), datamodule=FakeData())
    trainer.save_checkpoint(ckpt)
    spy = LRs()
    with caplog.at_level(logging.INFO):
        longer = _trainer(tmp_path, max_steps=8, callbacks=[spy])
        longer.fit(Toy(**kw), datamodule=FakeData(), ckpt_path=str(ckpt))
    want = [1e-2 * WarmupCosine(1, 8, 0.0)(s) for s in range(4, 8)]
    assert spy.lrs == pytest.approx(want) and min(spy.lrs) > 0
    assert longer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].total_steps == 8
    notes = [r.message for r in caplog.records if "new schedule" in r.message]
    assert len(notes) == 1 and "total steps 4 -> 8" in notes[0]
    assert f"lr now 0 -> {want[0]:.4g}" in notes[0]

    caplog.clear()
    whole = LRs(save_at=2, path=tmp_path / "two.ckpt")
    _trainer(tmp_path, max_steps=6, callbacks=[whole]).fit(Toy(**kw), datamodule=FakeData())
    resumed = LRs()
    with caplog.at_level(logging.INFO):
        _trainer(tmp_path, max_steps=6, callbacks=[resumed]).fit(
            Toy(**kw), datamodule=FakeData(), ckpt_path=str(tmp_path / "two.ckpt")
        )
    assert resumed.lrs == whole.lrs[2:]  # bit-identical
    assert not [r for r in caplog.records if "new schedule" in r.message]


def test_renewed_schedule_keeps_a_warmup_the_run_is_past():
    """A warm-up given as a fraction grows with a longer run; a run resumed after its warm-up
    keeps it (the rate goes on down the longer cosine instead of back into a warm-up)."""
    from avssl.objectives._schedule import renew_schedules

    def resumed(step: int, old: WarmupCosine) -> tuple[list[str], WarmupCosine, float]:
        opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [old])
        sched.last_epoch = step
        planned = vars(WarmupCosine(4000, 40000, 0.0))  # 10 % warm-up of the new length
        notes = renew_schedules([type("C", (), {"scheduler": sched})()], planned)
        return notes, old, opt.param_groups[0]["lr"]

    notes, past, lr = resumed(1500, WarmupCosine(1000, 10000, 0.0))
    assert (past.warmup_steps, past.total_steps) == (1000, 40000)
    assert lr == pytest.approx(WarmupCosine(1000, 40000, 0.0)(1500)) and lr > 0.99
    assert "warm-up 1000 -> 1000" in notes[0] and "total steps 10000 -> 40000" in notes[0]
    _, during, lr = resumed(500, WarmupCosine(1000, 10000, 0.0))  # still warming up: the new one
    assert (during.warmup_steps, during.total_steps) == (4000, 40000)
    assert lr == pytest.approx(501 / 4000)
    notes, same, _ = resumed(1500, WarmupCosine(1000, 40000, 0.0))  # only the warm-up differs
    assert notes == [] and same.warmup_steps == 1000
