"""ThroughputMonitor and ImageLogger under a Lightning Trainer (CPU, tiny, no real timing).

The monitor's clock is a fake one that only the test's loader, step and callbacks advance
(``avssl.callbacks`` and ``avssl.data.loaders`` read it), so the logged values are exact.
"""

from __future__ import annotations

import types
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.loggers.logger import Logger

from avssl import callbacks
from avssl.callbacks import ImageLogger, ThroughputMonitor
from avssl.data import loaders
from avssl.data.batch import AVBatch
from avssl.data.loaders import TrainLoader
from tests.objectives.batches import make_batch

B = 4  # samples per batch
FETCH, STEP, AFTER = 2.0, 3.0, 5.0  # fake seconds: loader, training step, callback after


class Clock:
    """A perf_counter that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    fake_time = types.SimpleNamespace(perf_counter=c.perf_counter)
    monkeypatch.setattr(callbacks, "time", fake_time)
    monkeypatch.setattr(loaders, "time", fake_time, raising=False)
    return c


class Stream(torch.utils.data.IterableDataset):
    """Endless ``[B, 1]`` batches; building one takes ``FETCH`` fake seconds."""

    def __init__(self, clock: Clock | None = None, size: int = B) -> None:
        self.clock, self.size = clock, size

    def set_epoch(self, epoch: int) -> None:  # TrainLoader's stream protocol
        pass

    def __iter__(self):
        while True:
            if self.clock is not None:
                self.clock.advance(FETCH)
            yield torch.ones(self.size, 1)


class Model(pl.LightningModule):
    """A step of ``STEP`` fake seconds (``step_cost(batch_idx)`` when given); validation
    batches take 100 fake seconds each."""

    def __init__(self, clock: Clock | None = None, step_cost=None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.clock, self.step_cost = clock, step_cost
        self.drawn: list[tuple[int, int]] = []
        self.validated = 0

    def training_step(self, batch, batch_idx):
        if self.clock is not None:
            self.clock.advance(STEP if self.step_cost is None else self.step_cost(batch_idx))
        return (self.w * batch).sum()

    def validation_step(self, batch, batch_idx):
        self.validated += 1
        if self.clock is not None:
            self.clock.advance(100.0)

    def visualize(self, batch):
        self.drawn.append((self.trainer.global_step, len(batch)))
        return {"x": torch.zeros(3, 4, 4)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class After(pl.Callback):
    """A callback that runs after the monitor (an image logger, a checkpoint): ``AFTER`` fake
    seconds at every batch end."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_end(self, *args) -> None:
        self.clock.advance(AFTER)


class Rec(Logger):
    """Keeps what Lightning writes of the perf/ values: ``(step, {name: value})``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    name, version = "rec", 0

    def log_metrics(self, metrics, step=None):
        perf = {k: float(v) for k, v in metrics.items() if k.startswith("perf/")}
        if perf:
            self.rows.append((step, perf))

    def log_hyperparams(self, *args, **kwargs):
        pass


def _fit(model, loader, callbacks_, logger, **trainer_args) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        max_steps=10,
        log_every_n_steps=3,
        logger=logger,
        callbacks=callbacks_,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    args.update(trainer_args)
    trainer = pl.Trainer(**args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    return trainer


def _train_loader(clock: Clock) -> TrainLoader:
    return TrainLoader(Stream(clock), step_fn=lambda: 0)


def test_data_wait_is_the_loaders_fetch_time_not_the_callbacks_after_the_monitor(clock):
    rec = Rec()
    _fit(Model(clock), _train_loader(clock), [ThroughputMonitor(), After(clock)], rec)
    per_batch = FETCH + STEP + AFTER
    assert rec.rows
    for _, perf in rec.rows:
        assert perf["perf/data_wait_fraction"] == pytest.approx(FETCH / per_batch)
        assert perf["perf/samples_per_sec"] == pytest.approx(B / per_batch)
    assert [step for step, _ in rec.rows] == [2, 5, 8]


def test_another_loader_falls_back_to_the_gap_between_the_hooks(clock):
    rec = Rec()
    loader = torch.utils.data.DataLoader(Stream(clock), batch_size=None)
    _fit(Model(clock), loader, [ThroughputMonitor(), After(clock)], rec)
    assert [step for step, _ in rec.rows] == [2, 5, 8]
    for _, perf in rec.rows:  # the callback after the monitor counts as waiting there
        assert perf["perf/data_wait_fraction"] == pytest.approx((FETCH + AFTER) / 10.0)


@pytest.mark.parametrize("timed", [True, False], ids=["TrainLoader", "DataLoader"])
def test_validation_inside_training_is_left_out(clock, timed):
    rec = Rec()
    train = _train_loader(clock) if timed else torch.utils.data.DataLoader(Stream(clock), None)
    val = torch.utils.data.DataLoader([torch.ones(B, 1)] * 2, batch_size=None)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=10, log_every_n_steps=3, logger=rec,
        callbacks=[ThroughputMonitor()], val_check_interval=2, check_val_every_n_epoch=None,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model := Model(clock), train, val)
    assert model.validated == 2 * 5  # after batches 2, 4, 6, 8, 10
    assert rec.rows
    for _, perf in rec.rows:  # 200 fake seconds of validation every 2 batches: not counted
        assert perf["perf/samples_per_sec"] == pytest.approx(B / (FETCH + STEP))
        assert perf["perf/data_wait_fraction"] == pytest.approx(FETCH / (FETCH + STEP))
    assert [step for step, _ in rec.rows] == [2, 5, 8]


def test_under_accumulation_every_written_step_has_its_own_window(clock):
    rec, model = Rec(), Model(clock)
    calls: list[tuple[int, int]] = []  # (global_step, batch_idx) of the monitor's log calls
    log = model.log

    def spy(name, value, *args, **kwargs):
        if name == "perf/samples_per_sec":
            calls.append((model.trainer.global_step, model.trainer.fit_loop.batch_idx))
        return log(name, value, *args, **kwargs)

    model.log = spy  # type: ignore[method-assign]
    loader = _train_loader(clock)
    _fit(model, loader, [ThroughputMonitor()], rec, max_steps=6, log_every_n_steps=2,
         accumulate_grad_batches=2)  # fmt: skip
    # written at optimizer steps 2, 4 and 6 (Lightning's steps 1, 3, 5), on the last
    # micro-batch of each (batch 3, 7, 11), none dropped, none late
    assert [step for step, _ in rec.rows] == [1, 3, 5]
    assert calls == [(2, 3), (4, 7), (6, 11)]
    for _, perf in rec.rows:  # every micro-batch's samples and time counted
        assert perf["perf/samples_per_sec"] == pytest.approx(B / (FETCH + STEP))
        assert perf["perf/data_wait_fraction"] == pytest.approx(FETCH / (FETCH + STEP))


@pytest.mark.parametrize("window", [None, 1, 2])
def test_window_averages_the_last_optimizer_steps(clock, window):
    rec = Rec()
    cost = lambda i: 1.0 + i  # batch i's step takes 1 + i fake seconds
    model = Model(clock, step_cost=cost)
    _fit(model, _train_loader(clock), [ThroughputMonitor(window)], rec, max_steps=9)
    assert [step for step, _ in rec.rows] == [2, 5, 8]
    step, perf = rec.rows[1]  # written after batch 5
    n = 3 if window is None else window  # steps averaged: since the last write, or `window`
    seconds = sum(FETCH + cost(i) for i in range(6 - n, 6))
    assert perf["perf/samples_per_sec"] == pytest.approx(n * B / seconds)
    assert perf["perf/data_wait_fraction"] == pytest.approx(n * FETCH / seconds)


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        ThroughputMonitor(window=0)


# ---------------------------------------------------------------- ImageLogger
def _tb(tmp_path, monkeypatch) -> tuple[TensorBoardLogger, list[tuple[str, int]]]:
    tb = TensorBoardLogger(str(tmp_path))
    written: list[tuple[str, int]] = []
    add = lambda tag, img, step: written.append((tag, step))
    monkeypatch.setattr(tb.experiment, "add_image", add)
    return tb, written


@pytest.mark.parametrize("accumulate", [1, 3])
def test_images_are_drawn_once_per_optimizer_step(tmp_path, monkeypatch, accumulate):
    tb, written = _tb(tmp_path, monkeypatch)
    model = Model()
    loader = torch.utils.data.DataLoader(Stream(size=8), batch_size=None)
    _fit(model, loader, [ImageLogger(every_n_steps=2, max_items=1)], tb, max_steps=6,
         log_every_n_steps=1, accumulate_grad_batches=accumulate)  # fmt: skip
    assert model.drawn == [(2, 1), (4, 1), (6, 1)]  # after steps 2, 4, 6; one sample
    assert written == [("images/x", 2), ("images/x", 4), ("images/x", 6)]


def _av_batch() -> AVBatch:
    batch = make_batch(B=4)
    batch.local = make_batch(B=4, frames=2, px=16, seed=1)
    batch.clip_start = torch.arange(4.0)
    batch.extra = {
        "skipped": 2,
        "skipped_keys": ["bad/0", "bad/1", "bad/2", "bad/3"],  # not per sample: kept
        "skipped_total": 7,
        "weight": torch.arange(4.0),
    }
    return batch


def _trainer_at(step: int, tb: TensorBoardLogger) -> types.SimpleNamespace:
    fit_loop = types.SimpleNamespace(_should_accumulate=lambda: False)
    return types.SimpleNamespace(
        global_step=step, is_global_zero=True, loggers=[tb], fit_loop=fit_loop
    )


def test_max_items_cuts_the_batch_passed_to_visualize(tmp_path, monkeypatch):
    tb, written = _tb(tmp_path, monkeypatch)
    seen: list[AVBatch] = []
    module = types.SimpleNamespace(
        automatic_optimization=True,
        visualize=lambda b: seen.append(b) or {"x": torch.zeros(3, 2, 2)},
    )
    batch = _av_batch()
    ImageLogger(every_n_steps=5, max_items=2).on_train_batch_end(
        _trainer_at(5, tb), module, None, batch, 0
    )
    assert len(seen) == 1 and written == [("images/x", 5)]
    cut = seen[0]
    assert cut.key == batch.key[:2] and len(cut) == 2
    assert cut.video.shape[0] == cut.audio.shape[0] == cut.label.shape[0] == 2
    assert cut.video_mask.shape == cut.audio_mask.shape == cut.clip_start.shape == (2,)
    assert len(cut.local) == 2 and cut.local.video.shape[0] == 2
    assert torch.equal(cut.extra["weight"], torch.arange(2.0))
    assert cut.extra["skipped_keys"] == batch.extra["skipped_keys"]
    assert cut.extra["skipped"] == 2 and cut.extra["skipped_total"] == 7
    assert len(batch) == 4 and batch.video.shape[0] == 4  # the training batch is left alone
    for max_items in (None, 9):  # the whole batch
        ImageLogger(every_n_steps=5, max_items=max_items).on_train_batch_end(
            _trainer_at(5, tb), module, None, batch, 0
        )
        assert seen[-1] is batch


def test_a_compiled_objective_draws_from_the_whole_batch(tmp_path, monkeypatch):
    """Its compiled blocks are for the training shapes: a cut batch would recompile them."""
    tb, _ = _tb(tmp_path, monkeypatch)
    seen: list[AVBatch] = []
    for policy, whole in (("blocks", True), ("graphs", True), ("none", False)):
        module = types.SimpleNamespace(
            automatic_optimization=True, compile_policy=policy,
            visualize=lambda b: seen.append(b) or {"x": torch.zeros(3, 2, 2)},
        )  # fmt: skip
        batch = _av_batch()
        ImageLogger(every_n_steps=5, max_items=1).on_train_batch_end(
            _trainer_at(5, tb), module, None, batch, 0
        )
        assert (seen[-1] is batch) == whole and len(seen[-1]) == (4 if whole else 1)


def test_max_items_must_be_positive_or_none():
    with pytest.raises(ValueError, match="max_items"):
        ImageLogger(max_items=0)
    assert ImageLogger(max_items=None).max_items is None


@pytest.mark.parametrize("stage", [1, 2])
def test_mavil_draws_from_a_one_sample_batch(tmp_path, monkeypatch, stage):
    from avssl.objectives.mavil import MAViL

    tiny = dict(size="tiny", depth=1, decoder_depth=1, fusion_depth=1, proj_dim=32)
    tiny.update(mask_ratio_audio=0.75, mask_ratio_video=0.75)
    torch.manual_seed(0)
    model = MAViL(**tiny)
    if stage == 2:
        path = tmp_path / "s1.ckpt"
        state = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
        torch.save(state, path)
        model = MAViL(**tiny, stage=2, teacher_ckpt=str(path))
    tb, written = _tb(tmp_path, monkeypatch)
    ImageLogger(every_n_steps=1, max_items=1).on_train_batch_end(
        _trainer_at(3, tb), model, None, _av_batch(), 0
    )
    assert written == [("images/audio", 3), ("images/video", 3)]
