"""Run setup in avssl.train: run-id precedence, ``--resume auto``/missing checkpoint, ranks > 0
waiting for rank 0's synthetic set, and ``trainer.precision: null`` resolution."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from test_recipes import NAMES, RECIPES, _parent_option, debug_args

from avssl import cli, train
from avssl.cli import UserError

RUN_ENV = ("AVSSL_RUN_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in RUN_ENV:
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------- run id
def test_run_id_precedence(monkeypatch):
    """README: ``$AVSSL_RUN_ID``, else ``slurm-$SLURM_JOB_ID``, else ``torchrun-<rdzv_id>``,
    else a timestamp; torchrun's placeholder id ``none`` does not count."""
    assert re.fullmatch(r"\d{8}-\d{6}", train.run_id())
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv_id
    assert re.fullmatch(r"\d{8}-\d{6}", train.run_id())
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "rdzv7")
    assert train.run_id() == "torchrun-rdzv7"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert train.run_id() == "slurm-4242"
    monkeypatch.setenv("AVSSL_RUN_ID", "mine")
    assert train.run_id() == "mine"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert train.run_id() == "mine"  # AVSSL_RUN_ID also beats torchrun's id alone


# ----------------------------------------------------------------------------- --resume
def test_resume_auto_without_an_earlier_run_starts_fresh(shards, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    other = runs / "vatt" / "old" / "checkpoints"  # another recipe's run is never picked
    other.mkdir(parents=True)
    (other / "last.ckpt").write_bytes(b"not a mavil checkpoint")
    monkeypatch.setenv("AVSSL_RUN_ID", "fresh")
    args = ["--recipe", "mavil", "--data", str(shards), "--runs", str(runs), "--resume", "auto"]
    args += ["--", "--config", str(RECIPES / "debug.yaml"), "--trainer.enable_progress_bar=false"]
    assert train.pretrain_main(args + ["--trainer.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "[pretrain] --resume auto: no last.ckpt yet, starting fresh" in out
    folder = runs / "mavil" / "fresh" / "checkpoints"
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    assert sorted(p.name for p in runs.iterdir()) == ["mavil", "vatt"]


def test_resume_of_a_missing_file_is_a_one_line_error(shards, tmp_path, capsys):
    runs, missing = tmp_path / "runs", tmp_path / "gone" / "last.ckpt"
    args = ["pretrain", "--recipe", "mavil", "--data", str(shards), "--runs", str(runs)]
    assert cli.main(args + ["--resume", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"avssl pretrain: error: --resume {missing}: checkpoint file not found"
    assert not runs.exists()  # stopped before any run folder was made


# ----------------------------------------------------------------------------- no DATA
class FakeClock:
    """Stands in for the ``time`` module of avssl.train: ``sleep`` advances the clock (no real
    waiting) and calls ``on_sleep`` with the number of sleeps so far."""

    def __init__(self, on_sleep=None):
        self.now, self.sleeps, self.on_sleep = 1000.0, 0, on_sleep

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        assert self.sleeps < 100_000, "still waiting after 100000 sleeps: the wait never ends"
        if self.on_sleep:
            self.on_sleep(self.sleeps)

    def strftime(self, fmt: str) -> str:
        return "19700101-000000"


@pytest.fixture
def no_build(monkeypatch):
    """Records every call of data_prep.prepare_dataset instead of building the synthetic set."""
    import data_prep

    calls: list = []
    monkeypatch.setattr(data_prep, "prepare_dataset", lambda *a, **k: calls.append((a, k)))
    return calls


@pytest.mark.parametrize("rank_var", ["RANK", "LOCAL_RANK"])
def test_other_ranks_time_out_waiting_for_rank_0(rank_var, tmp_path, capsys, monkeypatch, no_build):
    monkeypatch.setenv(rank_var, "1")
    clock = FakeClock()
    monkeypatch.setattr(train, "time", clock)
    synthetic, runs = tmp_path / "synthetic", tmp_path / "runs"
    args = ["pretrain", "--recipe", "mavil", "--synthetic", str(synthetic), "--runs", str(runs)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    expected = f"avssl pretrain: error: timed out waiting for rank 0 to build {synthetic}"
    assert err == expected + "/manifest.json"
    assert no_build == [] and not synthetic.exists()  # only rank 0 builds
    assert clock.sleeps > 1  # it polled before giving up


def test_other_ranks_use_the_set_once_rank_0_wrote_it(tmp_path, monkeypatch, no_build):
    monkeypatch.setenv("RANK", "3")
    synthetic = tmp_path / "synthetic"

    def rank0_finishes(sleeps: int) -> None:
        if sleeps == 3:
            synthetic.mkdir()
            (synthetic / "manifest.json").write_text("{}")

    clock = FakeClock(rank0_finishes)
    monkeypatch.setattr(train, "time", clock)
    assert train._resolve_data("", str(synthetic)) == str(synthetic)
    assert clock.sleeps == 3 and no_build == []


def test_rank_0_builds_the_synthetic_set(tmp_path, capsys, monkeypatch, no_build):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "1")  # RANK (global) decides, not the node-local rank
    monkeypatch.setattr(train, "time", FakeClock())
    synthetic = tmp_path / "synthetic"
    assert train._resolve_data("", str(synthetic)) == str(synthetic)
    assert len(no_build) == 1
    (args, kwargs) = no_build[0]
    assert args == ("synthetic",) and kwargs["out"] == str(synthetic)
    assert f"building the synthetic dataset into {synthetic}" in capsys.readouterr().out


def test_given_data_without_manifest_is_a_user_error(tmp_path, monkeypatch, no_build):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UserError, match="no manifest.json there"):
        train._resolve_data(str(tmp_path), str(tmp_path / "synthetic"))
    assert no_build == []


@pytest.mark.parametrize(
    ("recipe", "option", "says"),
    [
        (
            "mavil",
            "mask_ratio_audio=1.0",
            "mask_ratio_audio: mask ratio must be in [0, 1), got 1.0",
        ),
        ("xkd", "mask_ratio_video=0.999", "mask_ratio_video: mask ratio 0.999 leaves no visible"),
        ("mavil_stage2", "stage=3", "MAViL stage must be 1 or 2, got 3"),
    ],
)
def test_a_bad_objective_option_costs_no_build(recipe, option, says, tmp_path, capsys, no_build):
    """The objective is built once before the synthetic set is: its constructor's error comes
    first, as one line, and nothing is built or written."""
    synthetic, runs = tmp_path / "synthetic", tmp_path / "runs"
    args = ["pretrain", "--recipe", recipe, "--synthetic", str(synthetic), "--runs", str(runs)]
    args += ["--", "--config", str(RECIPES / "debug.yaml"), f"--model.init_args.{option}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avssl pretrain: error: bad configuration: ValueError: ")
    assert says in err and "\n" not in err
    assert no_build == [] and not synthetic.exists() and not runs.exists()


@pytest.mark.parametrize("recipe", NAMES)
def test_check_builds_the_objective_and_nothing_else(recipe, tmp_path, capsys, no_build):
    """``avssl pretrain --check``: the options parse and the objective builds (every recipe at
    the debug sizes), exit 0; no data is read or built and no run folder is made."""
    synthetic, runs = tmp_path / "synthetic", tmp_path / "runs"
    args = ["pretrain", "--recipe", recipe, "--check", "--synthetic", str(synthetic)]
    args += ["--runs", str(runs), "--", "--config", str(RECIPES / "debug.yaml")]
    option = _parent_option(recipe)
    if option:  # the run it continues: read when training starts, not by the constructor
        args += [f"--model.init_args.{option}", str(tmp_path / "later" / "last.ckpt")]
    assert cli.main(args) == 0
    assert (
        f"[pretrain] {recipe}: the options parse and the objective builds"
        in capsys.readouterr().out
    )
    assert no_build == [] and not synthetic.exists() and not runs.exists()
    assert cli.main(args + ["--model.init_args.no_such_option", "1"]) == 2
    assert "no_such_option" in capsys.readouterr().err


# ----------------------------------------------------------------------------- precision
class Parsed(Exception):
    """Raised instead of instantiating the trainer: the parsed config rides along."""


@pytest.fixture
def parsed_precision(monkeypatch, tmp_path):
    """``precision(*extra)``: trainer.precision after the CLI's ``before_instantiate_classes``
    for the debug recipe with ``extra`` arguments (nothing is instantiated or trained)."""

    def stop(self):
        raise Parsed(self.config[self.subcommand].trainer.precision)

    monkeypatch.setattr(train.AVSSLCLI, "instantiate_classes", stop)

    def precision(*extra: str) -> str:
        args = debug_args("mavil", tmp_path / "data", tmp_path / "runs", *extra)
        with pytest.raises(Parsed) as caught:
            train.lightning_main(args)
        return caught.value.args[0]

    return precision


def _cuda(monkeypatch, available: bool, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_null_precision_is_32_true_on_cpu(parsed_precision, monkeypatch):
    _cuda(monkeypatch, available=False, bf16=False)
    assert parsed_precision("--trainer.accelerator=auto") == "32-true"


def test_null_precision_is_bf16_mixed_on_a_cuda_gpu_with_bf16(parsed_precision, monkeypatch):
    _cuda(monkeypatch, available=True, bf16=True)
    assert parsed_precision("--trainer.accelerator=auto") == "bf16-mixed"
    assert parsed_precision("--trainer.accelerator=gpu") == "bf16-mixed"
    # debug.yaml asks for the CPU: no bf16 there even with a GPU in the machine
    assert parsed_precision() == "32-true"
    # an explicit precision is kept
    assert parsed_precision("--trainer.precision=16-mixed") == "16-mixed"


def test_null_precision_is_32_true_on_a_cuda_gpu_without_bf16(parsed_precision, monkeypatch):
    _cuda(monkeypatch, available=True, bf16=False)
    assert parsed_precision("--trainer.accelerator=auto") == "32-true"


def test_bad_option_stops_before_the_synthetic_set_is_built(tmp_path, capsys, no_build):
    synthetic, runs = tmp_path / "synthetic", tmp_path / "runs"
    args = ["pretrain", "--recipe", "mavil", "--synthetic", str(synthetic), "--runs", str(runs)]
    assert cli.main(args + ["--", "--trainer.max_stepz=3"]) == 2
    assert "unrecognized arguments: --trainer.max_stepz=3" in capsys.readouterr().err
    assert no_build == [] and not synthetic.exists()  # the options are checked first


def test_synthetic_set_is_built_once_the_options_parse(tmp_path, capsys, monkeypatch, no_build):
    monkeypatch.setenv("RANK", "0")
    synthetic, runs = tmp_path / "synthetic", tmp_path / "runs"
    args = ["pretrain", "--recipe", "mavil", "--synthetic", str(synthetic), "--runs", str(runs)]
    debug = Path(__file__).resolve().parents[1] / "recipes" / "debug.yaml"
    assert cli.main(args + ["--", "--config", str(debug)]) == 2  # the stub built no manifest
    assert len(no_build) == 1 and no_build[0][1]["out"] == str(synthetic)
    assert f"building the synthetic dataset into {synthetic}" in capsys.readouterr().out
