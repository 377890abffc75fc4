"""Runs a test's function on 2 CPU processes, as torchrun would start its ranks.

The ranks are spawned, not forked: a fork of the test process, which holds torch's and the earlier
tests' threads, can inherit a lock held by another thread and hang in a futex (a forked 2-rank
test once hung the suite for 2 hours). And a run that has not finished by its deadline is killed
and fails the test instead of hanging the suite. ``fn`` must be a module-level function (a spawned
child imports it by name) and takes the rank first, then ``args``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn: Callable, args: tuple, nprocs: int = 2, deadline_s: float = 600) -> None:
    """Spawns ``fn(rank, *args)`` for each rank and waits for all of them; a rank's exception is
    raised here (``ProcessRaisedException``), and a run past ``deadline_s`` fails the test."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, start_method="spawn", join=False)
    deadline = time.monotonic() + deadline_s
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"{nprocs} ranks of {fn.__name__} did not finish in {deadline_s:g} s")
