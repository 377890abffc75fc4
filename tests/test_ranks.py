"""The 2-rank runner the DDP tests share: a rank's error reaches the test, and a run past its
deadline is killed and fails the test rather than hanging the suite."""

from __future__ import annotations

import time

import pytest
import torch.multiprocessing as mp

from tests.ranks import run_ranks


def _fails_on_rank_1(rank: int, out: dict) -> None:
    out[rank] = "ran"
    if rank == 1:
        raise ValueError("rank 1 fails")


def _sleeps(rank: int) -> None:
    time.sleep(120)


def test_a_ranks_error_reaches_the_test():
    out = mp.Manager().dict()
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 fails"):
        run_ranks(_fails_on_rank_1, (out,))
    assert out[1] == "ran"


def test_a_run_past_its_deadline_is_killed_and_fails():
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="2 ranks of _sleeps did not finish in 1 s"):
        run_ranks(_sleeps, (), deadline_s=1)
    assert time.monotonic() - start < 60  # not the ranks' 120 s sleep
