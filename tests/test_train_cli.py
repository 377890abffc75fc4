"""avssl pretrain / fit: run folders, resume with optimizer state, user errors, 2-process DDP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_recipes import RECIPES, debug_args

from avssl import cli
from avssl.objectives.base import AVObjective
from avssl.train import pretrain_main


@pytest.fixture(autouse=True)
def _fresh_run_id(monkeypatch):
    monkeypatch.delenv("AVSSL_RUN_ID", raising=False)


def _pretrain(shards: Path, runs: Path, *extra: str, resume: str = "", run_id: str = "") -> None:
    if run_id:
        os.environ["AVSSL_RUN_ID"] = run_id
    args = ["--recipe", "mavil", "--data", str(shards), "--runs", str(runs), "--resume", resume]
    args += ["--", "--config", str(RECIPES / "debug.yaml"), "--trainer.enable_progress_bar=false"]
    assert pretrain_main(args + list(extra)) == 0
    os.environ.pop("AVSSL_RUN_ID", None)


def _adam_state(ckpt: dict) -> dict:
    return ckpt["optimizer_states"][0]["state"]


@pytest.fixture
def trained_keys(monkeypatch) -> list:
    """(epoch, batch index, keys) of every batch a training step receives."""
    seen: list = []
    step = AVObjective.training_step

    def record(self, batch, batch_idx):
        seen.append((self.trainer.current_epoch, batch_idx, tuple(batch.key)))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(AVObjective, "training_step", record)
    return seen


def test_pretrain_run_folder_and_resume_restores_optimizer(
    shards, tmp_path, capsys, caplog, trained_keys
):
    runs = tmp_path / "runs"
    _pretrain(shards, runs, run_id="first")
    uninterrupted = list(trained_keys)
    trained_keys.clear()
    run = runs / "mavil" / "first"
    out = capsys.readouterr().out
    assert f"make export CKPT={run / 'checkpoints' / 'last.ckpt'}" in out
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    config = (run / "config.yaml").read_text()
    assert "avssl.objectives.mavil.MAViL" in config and str(shards) in config
    _check_tensorboard(run)
    mid = run / "checkpoints" / f"step{2:07d}.ckpt"
    full = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    half = torch.load(mid, weights_only=True)
    assert half["global_step"] == 2 and full["global_step"] == 4
    assert "rng" in half["avssl_state"]

    # the training loader is resumable: its state (the step) is in every checkpoint
    assert half["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"global_step": 2}]

    # resume from step 2 (as after a kill): continues in the same run folder up to step 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _pretrain(shards, runs, resume=str(mid))
    assert sorted(p.name for p in (runs / "mavil").iterdir()) == ["first"]
    assert "[data] resumed at step 2" in caplog.text
    assert not [w for w in caught if "not resumable" in str(w.message)]  # Lightning's warning
    # 3 batches per epoch: epoch 0's last batch, then epoch 1's first; the resumed batch is a
    # fresh draw, not epoch 0's first batch again, and epoch 1 is the uninterrupted run's
    assert [(e, i) for e, i, _ in uninterrupted] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert [(e, i) for e, i, _ in trained_keys] == [(0, 2), (1, 0)]
    assert trained_keys[0][2] != uninterrupted[0][2] and trained_keys[1] == uninterrupted[3]
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 4
    assert resumed["lr_schedulers"][0]["last_epoch"] == full["lr_schedulers"][0]["last_epoch"]
    ref, got = _adam_state(full), _adam_state(resumed)
    assert ref.keys() == got.keys()
    for k in ref:  # 2 restored + 2 new Adam steps (2 if the state had not been restored)
        assert float(got[k]["step"]) == float(ref[k]["step"]) == 4.0
    # the moments continue from step 2's: after resume they differ from a fresh start's
    fresh = _adam_state(half)
    assert any(not torch.equal(got[k]["exp_avg_sq"], fresh[k]["exp_avg_sq"]) for k in got)


def _check_tensorboard(run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"loss/loss", "loss/recon_audio", "loss/recon_video", "loss/inter", "optim/lr"}
    expected |= {"perf/samples_per_sec", "perf/data_wait_fraction", "train/nonfinite_skipped"}
    expected |= {"data/skipped_samples", "loss/intra_audio", "loss/intra_video"}
    assert expected <= scalars, expected - scalars
    assert {"images/audio", "images/video"} <= set(events.Tags()["images"])
    rate = events.Scalars("perf/samples_per_sec")[-1].value
    assert rate > 0
    wait = events.Scalars("perf/data_wait_fraction")[-1].value
    assert 0.0 <= wait <= 1.0


def test_fresh_run_refuses_a_folder_with_checkpoints(shards, tmp_path, capsys):
    """A second run under the same run id would write last-v1.ckpt beside the first run's
    last.ckpt (which export would then read): it stops with a one-line error instead."""
    runs = tmp_path / "runs"
    folder = runs / "mavil" / "same" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"an earlier run")
    os.environ["AVSSL_RUN_ID"] = "same"
    args = ["pretrain", "--recipe", "mavil", "--data", str(shards), "--runs", str(runs), "--"]
    args += ["--config", str(RECIPES / "debug.yaml"), "--trainer.enable_progress_bar=false"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{folder} already holds 1 checkpoint(s) of an earlier run" in err
    assert f"--resume {folder / 'last.ckpt'}" in err
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # nothing written


def test_resuming_into_another_runs_checkpoint_folder_is_refused(shards, tmp_path, capsys):
    """Checkpoints are overwritten in place (``enable_version_counter: false``): a run writes
    into a folder holding checkpoints only when it resumes one of them."""
    runs = tmp_path / "runs"
    folder = runs / "mavil" / "busy" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"another run's")
    other = tmp_path / "other.ckpt"
    meta = {"objective": "avssl.objectives.mavil.MAViL", "recipe": "mavil"}
    torch.save({"state_dict": {}, "avssl": meta}, other)
    version = "--trainer.logger.init_args.version=busy"
    assert cli.main(debug_args("mavil", shards, runs, version, "--ckpt_path", str(other))) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith(
        f"{folder} already holds 1 checkpoint(s) of another run, which resuming {other} there "
        "would overwrite; set another AVSSL_RUN_ID (or remove that folder)"
    )
    # without a logger Lightning writes to <default_root_dir>/checkpoints: checked as well
    root = tmp_path / "root"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run")
    no_logger = ("--trainer.logger=false", f"--trainer.default_root_dir={root}")
    assert cli.main(debug_args("mavil", shards, runs, *no_logger)) == 2
    err = capsys.readouterr().err
    assert f"{root / 'checkpoints'} already holds 1 checkpoint(s) of an earlier run" in err
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_resume_auto_picks_the_newest_last_ckpt(shards, tmp_path, capsys):
    runs = tmp_path / "runs"
    _pretrain(shards, runs, "--trainer.max_steps=2", run_id="a")
    capsys.readouterr()
    _pretrain(shards, runs, "--trainer.max_steps=4", resume="auto")
    out = capsys.readouterr().out
    assert f"--resume auto: {runs / 'mavil' / 'a' / 'checkpoints' / 'last.ckpt'}" in out
    last = torch.load(runs / "mavil" / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4


@pytest.mark.slow
def test_periodic_checkpoints_keep_the_newest_and_rotate_after_resume(shards, tmp_path):
    """save_top_k ranks periodic checkpoints by step (recipes/_base.yaml): only the newest stay,
    and the ranking survives a resume (older files of the resumed run are removed)."""
    runs = tmp_path / "runs"
    every = ("--checkpoint.every_n_train_steps=1", "--checkpoint.save_top_k=2")
    _pretrain(shards, runs, "--trainer.max_steps=4", *every, run_id="r")
    folder = runs / "mavil" / "r" / "checkpoints"

    def names() -> list[str]:
        return sorted(p.name for p in folder.iterdir())

    assert names() == ["last.ckpt", "step0000003.ckpt", "step0000004.ckpt"]
    _pretrain(shards, runs, "--trainer.max_steps=6", *every, resume=str(folder / "last.ckpt"))
    assert names() == ["last.ckpt", "step0000005.ckpt", "step0000006.ckpt"]
    assert torch.load(folder / "step0000005.ckpt", weights_only=True)["global_step"] == 5


def test_user_errors_exit_2_with_one_line(shards, tmp_path, capsys):
    assert cli.main(["pretrain", "--recipe", "nope", "--data", str(shards)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avssl pretrain: error: unknown recipe 'nope'") and "\n" not in err
    assert cli.main(["pretrain", "--data", str(tmp_path / "missing")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    args = debug_args("mavil", shards, tmp_path, "--model.init_args.no_such_option=1")
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avssl fit: error: bad configuration") and "\n" not in err
    assert "no_such_option" in err
    assert cli.main(["fit", "--config", str(tmp_path / "missing.yaml")]) == 2
    args = debug_args("mavil", shards, tmp_path, "--data.init_args.train_split=nosplit")
    assert cli.main(args) == 2
    assert "nosplit" in capsys.readouterr().err
    args = debug_args("mavil", shards, tmp_path, "--data.init_args.modalities=[video]")
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "MAViL trains on audio and video but data.init_args.modalities loads only" in err
    args = debug_args("mavil", shards, tmp_path, "--data.init_args.modalities=[depth]")
    assert cli.main(args) == 2
    assert "modalities must be a non-empty subset" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_cpu_ddp_run_of_the_debug_recipe(shards, tmp_path):
    runs = tmp_path / "runs"
    args = debug_args(
        "mavil", shards, runs, "--trainer.devices=2", "--trainer.strategy=ddp",
        "--data.init_args.val_split=test1", "--trainer.val_check_interval=2",
    )  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", AVSSL_RUN_ID="ddp")
    proc = subprocess.run(
        [sys.executable, "-m", "avssl.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    ckpt = torch.load(runs / "mavil" / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    # learning rate scaled by the effective batch: 4 per rank x 2 ranks
    assert "effective batch 8" in proc.stderr + proc.stdout
    # validation on both ranks (test1's 3 clips: 2 on one rank, 1 on the other; no gather)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / "mavil" / "ddp"))
    events.Reload()
    val = events.Scalars("val/loss")
    assert [v.step for v in val] == [1, 3] and all(math.isfinite(v.value) for v in val)
