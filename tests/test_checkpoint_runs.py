"""Checkpoint files of tiny debug runs: never written in place or in ``$TMPDIR``, whole after a
kill, overwritten in place on resume (no ``-v1`` copies, also in a moved run folder), the newest
periodic ones kept, and ``--resume auto`` taking the latest readable checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from test_recipes import RECIPES

from avssl.train import pretrain_main

EVERY_STEP = ("--checkpoint.every_n_train_steps=1", "--checkpoint.save_top_k=2")
_OPENED: list | None = None  # write-mode opens recorded by _audit while a test sets it


@pytest.fixture(autouse=True)
def _fresh_run_id(monkeypatch):
    monkeypatch.delenv("AVSSL_RUN_ID", raising=False)


def _args(shards: Path, runs: Path, *extra: str, resume: str = "") -> list[str]:
    args = ["--recipe", "mavil", "--data", str(shards), "--runs", str(runs), "--resume", resume]
    args += ["--", "--config", str(RECIPES / "debug.yaml"), "--trainer.enable_progress_bar=false"]
    return args + list(extra)


def _pretrain(shards: Path, runs: Path, *extra: str, resume: str = "", run_id: str = "") -> None:
    env = {"AVSSL_RUN_ID": run_id} if run_id else {}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        assert pretrain_main(_args(shards, runs, *extra, resume=resume)) == 0


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _step(path: Path) -> int:
    assert zipfile.ZipFile(path).testzip() is None  # whole: every member matches its CRC
    return torch.load(path, weights_only=True, mmap=True)["global_step"]


def _audit(event: str, args: tuple) -> None:
    if _OPENED is None or event != "open" or not isinstance(args[0], (str, os.PathLike)):
        return
    mode, flags = args[1], args[2]
    if (mode and any(c in mode for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR):
        _OPENED.append(Path(os.fsdecode(args[0])).absolute())


def test_saves_never_write_a_checkpoint_in_place_or_in_tmpdir(shards, tmp_path, monkeypatch):
    """Lightning's writer puts the checkpoint in $TMPDIR and moves it; across file systems the
    move truncates last.ckpt and copies into it, so a kill then leaves it empty. avssl's writer
    only ever opens a temporary file beside it and renames that."""
    global _OPENED
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    if not getattr(sys, "_avssl_audit", False):
        sys.addaudithook(_audit)  # hooks stay for the process: inert unless _OPENED is a list
        sys._avssl_audit = True  # type: ignore[attr-defined]
    runs = tmp_path / "runs"
    _OPENED = []
    try:
        _pretrain(shards, runs, "--trainer.max_steps=2", *EVERY_STEP, run_id="io")
        opened = list(_OPENED)
    finally:
        _OPENED = None
    folder = (runs / "mavil" / "io" / "checkpoints").absolute()
    written = [p for p in opened if folder in p.parents or tmpdir in p.parents]
    assert len(written) >= 4  # step 1, step 2, last twice
    assert not [p for p in written if tmpdir in p.parents]
    assert not [p for p in written if p.suffix == ".ckpt"]  # never the checkpoint itself
    assert {p.parent for p in written} == {folder} and all(p.name[0] == "." for p in written)
    assert _names(folder) == ["last.ckpt", "step0000001.ckpt", "step0000002.ckpt"]


KILL_SAVE = """
import io, os, signal, sys, torch
real = torch.save
def save(obj, f, *args, **kwargs):
    name = os.path.basename(str(getattr(f, "name", "")))
    if name.startswith(".last.ckpt.") and obj.get("global_step") == int(os.environ["KILL_AT"]):
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: buf.tell() // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # half of last.ckpt's new version written
    return real(obj, f, *args, **kwargs)
torch.save = save
from avssl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_kill_while_saving_leaves_last_ckpt_whole_and_resume_auto_continues(
    shards, tmp_path, capsys
):
    runs = tmp_path / "runs"
    env = dict(os.environ, AVSSL_RUN_ID="k", KILL_AT="4", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", KILL_SAVE, "pretrain", *_args(shards, runs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]  # killed in the middle of the save
    folder = runs / "mavil" / "k" / "checkpoints"
    orphans = [n for n in _names(folder) if n.startswith(".last.ckpt.")]
    assert len(orphans) == 1 and _names(folder) == [*orphans, "last.ckpt", "step0000002.ckpt",
                                                    "step0000004.ckpt"]  # fmt: skip
    assert _step(folder / "last.ckpt") == 2  # the previous version, whole
    _pretrain(shards, runs, resume="auto")  # from step 4: the periodic file is the later one
    assert f"--resume auto: {folder / 'step0000004.ckpt'}" in capsys.readouterr().out
    assert _step(folder / "last.ckpt") == 4
    assert _names(folder) == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]


@pytest.mark.slow
def test_a_moved_run_resumes_into_its_own_files_and_falls_back_past_an_empty_last(
    shards, tmp_path, capsys
):
    """After ``mv runsA runsB`` Lightning wrote last-v1.ckpt (last.ckpt stayed stale) and never
    pruned the periodic checkpoints saved before the move."""
    first, moved = tmp_path / "runsA", tmp_path / "runsB"
    _pretrain(shards, first, "--trainer.max_steps=2", *EVERY_STEP, run_id="r")
    shutil.move(first, moved)
    folder = moved / "mavil" / "r" / "checkpoints"
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _pretrain(shards, moved, "--trainer.max_steps=4", *EVERY_STEP, resume="auto")
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    out = capsys.readouterr().out
    assert f"make export CKPT={folder / 'last.ckpt'}" in out
    assert _names(folder) == ["last.ckpt", "step0000003.ckpt", "step0000004.ckpt"]
    assert _step(folder / "last.ckpt") == 4

    (folder / "last.ckpt").write_bytes(b"")  # as a kill during Lightning's copy left it
    _pretrain(shards, moved, "--trainer.max_steps=5", *EVERY_STEP, resume="auto")
    out = capsys.readouterr().out
    assert (
        "[pretrain] --resume auto: step0000004.ckpt, the latest readable one; passed over "
        "last.ckpt: not a checkpoint (not the zip archive torch.save writes)\n"
    ) in out
    assert f"[pretrain] --resume auto: {folder / 'step0000004.ckpt'}" in out
    assert _names(folder) == ["last.ckpt", "step0000004.ckpt", "step0000005.ckpt"]
    assert _step(folder / "last.ckpt") == 5


@pytest.mark.slow
def test_resuming_an_earlier_periodic_checkpoint_overwrites_and_prunes_in_place(shards, tmp_path):
    """Lightning wrote step0000002-v1.ckpt beside step0000002.ckpt, and kept the checkpoint the
    run resumed from for good: the folder grew past save_top_k."""
    runs = tmp_path / "runs"
    _pretrain(shards, runs, "--trainer.max_steps=2", *EVERY_STEP, run_id="p")
    folder = runs / "mavil" / "p" / "checkpoints"
    start = folder / "step0000001.ckpt"
    _pretrain(shards, runs, "--trainer.max_steps=4", *EVERY_STEP, resume=str(start))
    assert _names(folder) == ["last.ckpt", "step0000003.ckpt", "step0000004.ckpt"]
    assert _step(folder / "last.ckpt") == 4
