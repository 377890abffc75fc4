"""bench/eval.py --quick runs; both comparisons reach the same accuracy (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from avssl.evaluators.linear_probe import DEFAULT_LAMBDAS

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "eval.py"


def test_bench_eval_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_eval", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    assert module.main(["--quick", "--device", "cpu", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["n_train"] == 5000 and res["config"]["dim"] == 64
    for name in ("knn", "probe"):
        r = res[name]
        assert r["avssl_s"] > 0 and r["sklearn_s"] > 0
        assert r["speedup"] == r["sklearn_s"] / r["avssl_s"]
        assert 30 < r["sklearn_top1"] < 100  # noisy enough for accuracy to mean something
        assert abs(r["avssl_top1"] - r["sklearn_top1"]) <= 1.0
        assert r["agreement"] >= 97.0
    assert res["knn"]["agreement"] >= 99.0  # same neighbours up to float rounding
    assert 0 < res["probe"]["sweep_top1"] <= 100
    text = capsys.readouterr().out
    assert "speed-up" in text and "sklearn" in text


def test_bench_eval_multilabel_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_eval_ml", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    argv = ["--multilabel", "--quick", "--device", "cpu", "--json", str(out)]
    assert module.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["config"]["classes"] == 20 and res["config"]["n_train"] == 2000
    r = res["multilabel"]
    assert r["avssl_s"] > 0 and r["sklearn_s"] > 0
    assert r["speedup"] == r["sklearn_s"] / r["avssl_s"]
    # the same objective at the same lambda: the same mAP, well above chance (the positive
    # rates, ~10 %) and below 100 (the problem is noisy enough to mean something)
    assert 30 < r["sklearn_mAP"] < 100
    assert abs(r["avssl_mAP"] - r["sklearn_mAP"]) <= 0.5
    assert 30 < r["sweep_mAP"] <= 100
    assert r["sweep_lambda"] in DEFAULT_LAMBDAS
    text = capsys.readouterr().out
    assert "one-vs-rest" in text and "speed-up" in text
