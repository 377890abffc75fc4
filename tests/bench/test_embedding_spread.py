"""bench/embedding_spread.py: cosine spread of a contrastive model's embeddings on one batch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_recipes import build_tiny_shards

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "embedding_spread.py"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny_shards(tmp_path_factory.getbasetemp())


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _spread(stdout: str, label: str) -> tuple[float, ...]:
    m = re.search(rf"{label} +(-?[\d.]+) / (-?[\d.]+) / (-?[\d.]+)", stdout)
    assert m, stdout[-2000:]
    return tuple(float(v) for v in m.groups())


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("embedding_spread", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cosine_spread_by_hand() -> None:
    spread = _script().cosine_spread
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    c = 1 / 2**0.5  # cos 45 degrees
    assert spread(x) == pytest.approx(((0 + c + c) / 3, 0.0, c))
    assert spread(torch.ones(4, 3)) == pytest.approx((1.0, 1.0, 1.0))  # a collapsed batch


@pytest.mark.slow
def test_random_init_and_a_collapsed_checkpoint(shards, tmp_path) -> None:
    cfg = ["--data", str(shards), "--config", "recipes/debug.yaml"]
    proc = _run(*cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vatt, random initialisation (seed 0): one training batch of" in proc.stdout
    for label in ("pooled audio", "pooled video", "projected audio", "projected video"):
        mean, lo, hi = _spread(proc.stdout, label)
        assert -1.0 <= lo <= mean <= hi <= 1.0 + 1e-6
    assert re.search(r"audio-video NCE on this batch [\d.]+ \(ln \d+ = [\d.]+\)", proc.stdout)
    # a checkpoint whose audio head maps every clip to one point reads as collapsed (cosine 1)
    from avssl.demo import demo_config
    from avssl.objectives.contrastive import AVContrastive

    hp = demo_config("vatt", ["recipes/debug.yaml"])["model"]["init_args"]
    torch.manual_seed(0)
    model = AVContrastive(**hp)
    with torch.no_grad():
        model.audio_proj.weight.zero_()
        model.audio_proj.bias.fill_(1.0)
    ckpt = tmp_path / "collapsed.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "avssl": {"objective": "avssl.objectives.contrastive.AVContrastive"},
        },
        ckpt,
    )
    proc = _run(*cfg, "--ckpt", str(ckpt))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _spread(proc.stdout, "projected audio") == pytest.approx((1.0, 1.0, 1.0), abs=1e-5)
    assert _spread(proc.stdout, "projected video")[0] < 0.999
    bad = _run("--data", str(tmp_path / "nothing"))
    assert bad.returncode == 1 and "no prepared shards" in bad.stderr
