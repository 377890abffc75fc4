"""The ``avssl`` dispatcher: help, unknown commands, and one-line user errors with exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avssl.cli import main


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "pretrain" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_python_dash_m_reports_user_errors_in_one_line():
    """``python -m avssl.cli`` (what the Makefile runs) must catch the commands' UserError."""
    proc = subprocess.run(
        [sys.executable, "-m", "avssl.cli", "eval", "--protocol", "nope", "--encoder", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown protocol 'nope'" in lines[0]


def test_make_pretrain_passes_check_only_when_asked():
    """``make pretrain CHECK=1`` runs ``avssl pretrain --check``; no CHECK (or CHECK=0) a run."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    root = Path(__file__).resolve().parents[1]

    def command(*extra: str) -> str:
        out = subprocess.run(
            ["make", "-n", "-s", "-C", str(root), "pretrain", "RECIPE=xkd", *extra],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return next(line for line in out.replace("\\\n", " ").splitlines() if "avssl.cli" in line)

    for on in ("CHECK=1", "CHECK=yes", "CHECK=true"):
        assert '--recipe "xkd"' in command(on) and " --check -- " in command(on, "ARGS=--x=1")
    for off in ((), ("CHECK=0",), ("CHECK=",)):
        assert "--check" not in command(*off)
