"""bench/demo_reeval.py: evaluates a demo's stored seed bundles again (no retraining)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "demo_reeval.py"
_spec = importlib.util.spec_from_file_location("demo_reeval", SCRIPT)
assert _spec is not None and _spec.loader is not None
demo_reeval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_reeval)


def test_missing_bundle_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "encoders" / "demo-x-seeds2-random").mkdir(parents=True)
    assert demo_reeval.main(["x", "--seeds", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "demo_reeval: error: no bundle encoders/demo-x-seeds2-seed0"
    )


def test_seeds_table_of_stored_bundles(tmp_path, monkeypatch, capsys):
    """Each stored bundle goes through ``avssl eval`` (faked here: its results.json) once."""
    monkeypatch.chdir(tmp_path)
    for name in ("random", "seed0", "seed1"):
        (tmp_path / "encoders" / f"demo-x-seeds2-{name}").mkdir(parents=True)
    calls = []
    monkeypatch.setattr("avssl.demo._avssl", lambda *a: calls.append(a) or _fake_eval(a))
    assert demo_reeval.main(["x", "--seeds", "2", "--data", "shards/s"]) == 0
    assert [a[a.index("--encoder") + 1] for a in calls] == [
        "encoders/demo-x-seeds2-random", "encoders/demo-x-seeds2-seed0",
        "encoders/demo-x-seeds2-seed1"]  # fmt: skip
    out = capsys.readouterr().out
    assert "## x\n| features | random init top-1 (%) | x-pretrained top-1 (%), seeds 0-1" in out
    assert "| audio | 40.0 | 50.0, 60.0 | +15.0 +- 7.1 | +10.0 | +10.0, +20.0 |" in out


def _fake_eval(args) -> None:
    """What ``avssl eval`` leaves in --out: results.json with the summary (top-1 by bundle)."""
    enc, out = args[args.index("--encoder") + 1], Path(args[args.index("--out") + 1])
    top1 = {"random": 40.0, "seed0": 50.0, "seed1": 60.0}[enc.rsplit("-", 1)[1]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"summary": {"audio": {"top1": top1}}}))
