"""The ``avssl`` dispatcher: help, unknown commands, and one-line user errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

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
