"""TrainLoader times the fetches of its iterators (``fetch_seconds``, read by
ThroughputMonitor) and its iterators stay the DataLoader's own."""

from __future__ import annotations

import time
import types
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loops.fetchers import _PrefetchDataFetcher
from pytorch_lightning.utilities.combined_loader import CombinedLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter, _SingleProcessDataLoaderIter

from avssl import callbacks
from avssl.data import loaders
from avssl.data.datamodule import AVDataModule
from avssl.data.loaders import TrainLoader
from tests.test_callbacks import Clock

N = 3  # batches per pass


class Stream(torch.utils.data.IterableDataset):
    """``N`` batches ``[2, 1]`` per pass; each takes ``seconds`` to make (``clock``: a fake
    clock advanced instead of sleeping)."""

    def __init__(self, seconds: float = 0.0, clock=None) -> None:
        self.seconds, self.clock = seconds, clock

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return N

    def __iter__(self):
        for i in range(N):
            if self.clock is not None:
                self.clock.advance(self.seconds)
            elif self.seconds:
                time.sleep(self.seconds)
            yield torch.full((2, 1), float(i))


def test_each_next_is_timed_into_a_running_total(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(loaders, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    loader = TrainLoader(Stream(2.0, clock), step_fn=lambda: 5)
    assert loader.fetch_seconds == 0.0 and loader.fetch_calls == 0
    it = iter(loader)
    assert isinstance(it, _SingleProcessDataLoaderIter)
    assert len(loader) == N
    assert [float(b[0, 0]) for b in it] == [0.0, 1.0, 2.0]
    assert loader.fetch_seconds == pytest.approx(2.0 * N)
    assert loader.fetch_calls == N + 1  # the StopIteration too
    list(loader)  # a second pass goes on from the total
    assert loader.fetch_seconds == pytest.approx(4.0 * N) and loader.fetch_calls == 2 * (N + 1)
    assert loader.state_dict() == {"global_step": 5}
    loader.load_state_dict({"global_step": 5})  # resumable as before
    assert [float(b[0, 0]) for b in loader] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("persistent", [False, True])
def test_worker_iterators_are_timed_and_stay_the_dataloaders(persistent):
    loader = TrainLoader(Stream(0.01), step_fn=lambda: 0, num_workers=1,
                         persistent_workers=persistent)  # fmt: skip
    it = iter(loader)
    assert isinstance(it, _MultiProcessingDataLoaderIter)
    assert len([*it]) == N and loader.fetch_seconds > 0 and loader.fetch_calls == N + 1
    again = iter(loader)
    assert (again is it) == persistent  # persistent workers: the same iterator, reset
    assert len([*again]) == N and loader.fetch_calls == 2 * (N + 1)
    if persistent:
        it._shutdown_workers()


def test_lightnings_prefetching_fetcher_goes_through_the_timed_iterator():
    loader = TrainLoader(Stream(), step_fn=lambda: 0)
    fetcher = _PrefetchDataFetcher()
    fetcher.setup(CombinedLoader(loader, "max_size_cycle"))
    batches = [batch for batch, _, _ in fetcher]
    assert [float(b[0, 0]) for b in batches] == [0.0, 1.0, 2.0] and fetcher.done
    assert loader.fetch_calls >= N


def test_the_monitor_reads_the_datamodules_training_loader(synth, small_args):
    dm = AVDataModule(str(synth), **small_args(batches_per_epoch=3, val_split=None))
    seen: list[tuple[bool, int]] = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            timed = callbacks._timed_train_loader(trainer)
            seen.append((timed is dm._train_loader, timed.fetch_calls))

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)
            self.logged: list[float] = []

        def training_step(self, batch, batch_idx):
            return self.lin(batch.video.mean(dim=(2, 3, 4))).pow(2).mean()

        def log(self, name, value, *args, **kwargs):
            if name == "perf/data_wait_fraction":
                self.logged.append(float(value))
            super().log(name, value, *args, **kwargs)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    model = Model()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, log_every_n_steps=2, logger=False,
        callbacks=[callbacks.ThroughputMonitor(), Probe()], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    assert [timed for timed, _ in seen] == [True] * 6
    assert [calls for _, calls in seen] == sorted({calls for _, calls in seen})  # counting
    assert len(model.logged) == 3 and all(0.0 < v < 1.0 for v in model.logged)
