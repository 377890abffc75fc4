"""bench/supervised_video.py: the supervised video ceiling on tiny shards; bad inputs exit 1."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "supervised_video.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_supervised_video_trains_and_reports_both_accuracies(shards) -> None:
    proc = _run(
        "--data",
        str(shards),
        "--steps",
        "3",
        "--batch",
        "4",
        "--img",
        "32",
        "--frames",
        "4",
        "--workers",
        "0",
        "--threads",
        "1",
        "--depth",
        "2",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    # 3 classes x 4 clips; split 1 holds out some of the 4 groups
    head = re.search(
        r"(\d+) training clips \((\d+) batches of 4 decoded\), (\d+) held-out clips, 3 classes", out
    )
    assert head, out
    n_train, n_batches, n_test = map(int, head.groups())
    assert n_train + n_test == 12 and n_test > 0 and n_batches == 3
    m = re.search(
        r"trained batches ([\d.]+) %, on the held-out split ([\d.]+) % \(chance 33.3 %\)", out
    )
    assert m, out
    assert "ViT-Tiny (2 blocks) 32 px" in out
    for value in map(float, m.groups()):
        assert 0.0 <= value <= 100.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/no/such/shards"], "no prepared shards"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--depth", "0"], "--depth must be >= 1"),
    ],
)
def test_supervised_video_rejects_bad_inputs(shards, args, message) -> None:
    if "--data" not in args:
        args = ["--data", str(shards), *args]
    proc = _run(*args)
    assert proc.returncode == 1 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
