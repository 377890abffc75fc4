"""The non-finite-loss guard: one behaviour on one device and under 2-process gloo DDP (the batch
is skipped on every rank and changes no weight or optimizer state), gradient accumulation, batch
norm statistics, what TensorBoard is given at a skipped step, and the one-line stop."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from avssl.cli import UserError
from avssl.objectives.base import WarmupCosine
from tests.objectives.test_base import FakeData, Toy, _trainer
from tests.test_recipes import RECIPES


class Spy(pl.Callback):
    """After every batch: the weights, AdamW's state, the skip flag and the global step."""

    def __init__(self) -> None:
        self.seen: dict[int, dict] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        self.seen[batch_idx] = {
            "params": [p.detach().clone() for p in module.parameters()],
            "adam": [
                {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
                for p in module.parameters()
                if p in opt.state
            ],
            "skipped": module.last_step_skipped,
            "step": trainer.global_step,
            "loss": float(outputs["loss"]) if outputs else None,
        }


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _same_adam(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(torch.as_tensor(x[k]), y[k]) for k in x)
        for x, y in zip(a, b)
    )


def _check_windows(seen: dict[int, dict], nonfinite_total: int) -> None:
    """Accumulation 2 over 6 micro-batches; micro-batch 1 skipped (window 0 still steps), 2 and 3
    skipped (window 1 changes nothing), window 2 clean."""
    ends = [seen[i] for i in (1, 3, 5)]  # the batches that end an optimizer step
    assert [e["step"] for e in ends] == [1, 2, 3]  # a skipped step still counts
    assert [e["skipped"] for e in ends] == [False, True, False]
    assert _same(ends[0]["params"], ends[1]["params"])  # window 1: no weight moved
    assert _same_adam(ends[0]["adam"], ends[1]["adam"])  # nor a moment or a step count
    assert not _same(ends[1]["params"], ends[2]["params"])  # the run goes on
    assert [float(s["step"]) for s in ends[2]["adam"]] == [2.0] * len(ends[2]["adam"])
    assert nonfinite_total == 3


def test_skipped_micro_batches_contribute_nothing_on_one_device(tmp_path):
    """One device, accumulation 2: a window with one skipped micro-batch still steps (with the
    other's gradient), a window of skipped ones changes nothing and says so
    (``last_step_skipped``)."""
    spy = Spy()
    toy = Toy(nan_batches=[1, 2, 3], lr=1e-2, warmup_steps=0)
    trainer = _trainer(tmp_path, max_steps=3, accumulate_grad_batches=2, callbacks=[spy])
    trainer.fit(toy, datamodule=FakeData(n=6))
    _check_windows(spy.seen, toy.nonfinite_total)
    assert toy.nonfinite_in_row == 0


class GradSpy(pl.Callback):
    """The gradients the optimizer is given at every step (after the module's hooks)."""

    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []

    def on_train_start(self, trainer, module):
        def record(opt, args, kwargs):
            self.grads.append([p.grad.clone() for p in module.parameters() if p.grad is not None])

        # after the step: Lightning runs the last micro-batch inside optimizer.step(closure)
        trainer.optimizers[0].register_step_post_hook(record)


def _first_step_grads(tmp_path, nan_batches: list[int], accumulate: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    spy = GradSpy()
    toy = Toy(nan_batches=nan_batches, lr=1e-2, warmup_steps=0)
    trainer = _trainer(tmp_path, max_steps=1, accumulate_grad_batches=accumulate, callbacks=[spy])
    trainer.fit(toy, datamodule=FakeData(n=4))
    return spy.grads[0]


def test_a_partly_skipped_window_steps_with_the_mean_of_its_finite_micro_batches(tmp_path):
    """Accumulation 2 with micro-batch 1 non-finite: the step's gradient is micro-batch 0's own
    (the mean over the finite ones), not half of it, which the window's 1/2 loss scaling would
    leave; the same as a step of accumulation 1 on micro-batch 0."""
    partial = _first_step_grads(tmp_path / "a", nan_batches=[1], accumulate=2)
    alone = _first_step_grads(tmp_path / "b", nan_batches=[], accumulate=1)
    assert len(partial) == len(alone) > 0
    for got, want in zip(partial, alone):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    clean = _first_step_grads(tmp_path / "c", nan_batches=[], accumulate=2)
    assert not all(torch.allclose(g, w) for g, w in zip(clean, alone))  # the check can fail


def _ddp_worker(rank: int, port: int, root: str, out: dict) -> None:
    # as torchrun would set them: Lightning launches no process of its own
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0")
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # rank 0's loss is NaN at micro-batches 1 and 2, rank 1's at 3: every rank skips all three
    toy = Toy(nan_batches=[1, 2] if rank == 0 else [3], lr=1e-2, warmup_steps=0)
    spy = Spy()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=3, accumulate_grad_batches=2,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=root, callbacks=[spy],
    )  # fmt: skip
    trainer.fit(toy, datamodule=FakeData(n=12))
    out[rank] = {"seen": spy.seen, "total": toy.nonfinite_total}


@pytest.mark.slow
def test_two_process_ddp_skips_a_nonfinite_batch_on_every_rank(tmp_path):
    """Lightning refuses a skipped (None) training step under DDP; the guard returns a zero loss
    there instead and drops the gradients of a step whose micro-batches were all skipped: both
    ranks skip the same batches, keep their weights and AdamW state through a skipped step, count
    the skips, and end with the same weights."""
    import torch.multiprocessing as mp

    from tests.ranks import free_port, run_ranks

    out = mp.Manager().dict()
    run_ranks(_ddp_worker, (free_port(), str(tmp_path), out))
    for rank in (0, 1):
        _check_windows(out[rank]["seen"], out[rank]["total"])
        assert out[rank]["seen"][3]["loss"] == 0.0  # the zero loss of a skipped batch
    assert _same(out[0]["seen"][5]["params"], out[1]["seen"][5]["params"])


class BNToy(Toy):
    """Toy with a batch norm on the audio values (VATT's FAC head, CrissCross's heads)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bn = nn.BatchNorm1d(8)

    def compute_losses(self, batch):
        out = super().compute_losses(batch)
        x = self.bn(batch.audio.flatten(1)[:, :8] * (out["rec"] * 0 + 1))  # NaN with the loss
        out["loss"] = out["loss"] + x.pow(2).mean() * 1e-3
        return out


def test_a_skipped_batch_leaves_batch_norm_statistics_alone(tmp_path):
    """A NaN batch's forward would write NaN into the running mean and variance, which the
    exported heads and validation use: the guard puts them back."""
    toy = BNToy(nan_batches=[1], lr=1e-3, warmup_steps=0)
    seen = {}

    class Stats(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen[batch_idx] = [b.clone() for b in module.bn.buffers()]

    _trainer(tmp_path, max_steps=3, callbacks=[Stats()]).fit(toy, datamodule=FakeData())
    assert _same(seen[0], seen[1])  # the skipped batch: statistics as before it
    assert not _same(seen[1], seen[2])  # a finite batch moves them
    assert all(torch.isfinite(b.float()).all() for b in toy.bn.buffers())


class Recorder(pl.loggers.Logger):
    """A logger that keeps what Lightning gives it."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))


def test_a_skipped_step_logs_nan_not_the_last_loss(tmp_path):
    """Lightning logs every metric it holds at every step, a metric not logged this step with
    its last value: a skipped step logs its loss as NaN (TensorBoard shows a gap, not the
    previous step's value) and the learning rate of that step."""
    logger = Recorder()
    spy = Spy()
    toy = Toy(nan_batches=[2, 3], lr=1e-2, warmup_steps=0)
    trainer = _trainer(tmp_path, max_steps=5, logger=logger, log_every_n_steps=1, callbacks=[spy])
    trainer.fit(toy, datamodule=FakeData())
    rows = [m for _, m in logger.rows if "loss/loss" in m]
    assert len(rows) == 5
    losses = [r["loss/loss"] for r in rows]
    assert [math.isnan(v) for v in losses] == [False, False, True, True, False]
    for i in (0, 1, 4):
        assert losses[i] == pytest.approx(spy.seen[i]["loss"])
    want_lr = [0.01 * WarmupCosine(0, 5, 0.0)(i) for i in range(5)]
    assert [r["optim/lr"] for r in rows] == pytest.approx(want_lr)
    assert [r["train/nonfinite_skipped"] for r in rows] == [0, 0, 1, 2, 2]


def test_the_stop_is_a_user_error(tmp_path):
    toy = Toy(nan_batches=list(range(1, 50)), max_nonfinite_in_row=3)
    with pytest.raises(UserError, match="^3 non-finite losses in a row at step 3 .*rec=nan"):
        _trainer(tmp_path, max_steps=20).fit(toy, datamodule=FakeData())
    assert toy.nonfinite_total == 3


NAN_SCRIPT = """
import os, sys
import avssl.objectives.mavil as mv
BAD = {int(s) for s in os.environ["NAN_STEPS"].split(",")}
orig = mv.MAViL.compute_losses
def nan_at(self, batch, *args, **kwargs):  # NaN losses at the listed training steps
    out = orig(self, batch, *args, **kwargs)
    if self.training and self.global_step in BAD:
        out["loss"] = out["loss"] * float("nan")
    return out
mv.MAViL.compute_losses = nan_at
from avssl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _pretrain_with_nans(shards, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    script = tmp_path / "nan_pretrain.py"
    script.write_text(NAN_SCRIPT)
    args = ["pretrain", "--recipe", "mavil", "--data", str(shards), "--runs", str(tmp_path)]
    args += ["--", "--config", str(RECIPES / "debug.yaml"), "--trainer.enable_progress_bar=false"]
    args += ["--model.init_args.max_nonfinite_in_row", "2", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", AVSSL_RUN_ID="nan", NAN_STEPS="1,2")
    return subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=600
    )


def _check_one_line(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    assert errors[0].startswith("avssl pretrain: error: 2 non-finite losses in a row at step 2")
    assert errors[0].endswith("raise model.init_args.max_nonfinite_in_row")


def test_pretrain_stops_with_one_line_after_nonfinite_losses(shards, tmp_path):
    """``avssl pretrain`` with NaN losses at steps 1 and 2 and ``max_nonfinite_in_row 2``: one
    line and exit code 2, no traceback."""
    _check_one_line(_pretrain_with_nans(shards, tmp_path))


@pytest.mark.slow
def test_pretrain_stops_with_one_line_under_ddp(shards, tmp_path):
    """The same on 2 CPU processes: rank 0 prints the line, rank 1 exits quietly."""
    _check_one_line(_pretrain_with_nans(shards, tmp_path, "--trainer.devices=2",
                                        "--trainer.strategy=ddp"))  # fmt: skip
