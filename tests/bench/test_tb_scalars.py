"""bench/tb_scalars.py: first and last value of logged scalars per run folder; missing folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "tb_scalars.py"


def _script():
    spec = importlib.util.spec_from_file_location("tb_scalars", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_and_last_values_of_each_tag(tmp_path, capsys) -> None:
    run = tmp_path / "runs" / "mavil" / "check"
    writer = SummaryWriter(str(run))
    for step, loss in ((9, 2.5), (19, 2.0), (29, 1.25)):
        writer.add_scalar("loss/loss", loss, step)
    writer.add_scalar("perf/samples_per_sec", 100.0, 19)
    writer.close()
    tb = _script()
    assert tb.scalars(run, ["loss/loss"])["loss/loss"] == [(9, 2.5), (19, 2.0), (29, 1.25)]
    assert tb.main([str(run), "--tags", "loss/loss,perf/samples_per_sec,nope"]) == 0
    out = capsys.readouterr().out
    assert "loss/loss: 2.5 (step 9) -> 1.25 (step 29)" in out
    assert "perf/samples_per_sec: 100 (step 19) -> 100 (step 19)" in out
    assert "nope: none" in out


def test_a_missing_run_folder_is_named_and_fails(tmp_path, capsys) -> None:
    assert _script().main([str(tmp_path / "absent")]) == 1
    assert "absent: no such run folder" in capsys.readouterr().out
