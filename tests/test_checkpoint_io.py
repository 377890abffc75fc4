"""avssl.checkpoint_io: checkpoints written whole or not at all (beside the target, never in
``$TMPDIR``), on the strategies avssl runs, and the checkpoint ``--resume auto`` falls back to."""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import torch
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

from avssl import checkpoint_io
from avssl.checkpoint_io import AtomicCheckpointIO, install_atomic_io, resumable_checkpoint
from avssl.cli import UserError
from avssl.cli import main as cli_main
from tests.export.export_fakes import flip_member_bytes


def _state(step: int) -> dict:
    return {"global_step": step, "w": torch.arange(50_000, dtype=torch.float32) * step}


def _fails_midway(monkeypatch) -> None:
    """``torch.save`` in avssl.checkpoint_io writes part of the checkpoint, then fails (a full
    disk, a kill signal turned into an exception)."""

    def partial(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", partial)


def test_save_writes_beside_the_checkpoint_and_renames_it(tmp_path, monkeypatch):
    """The temporary file is in the checkpoint's own folder (one file system: the rename is
    atomic), not in $TMPDIR, where Lightning's writer puts it and then copies it over."""
    elsewhere = tmp_path / "tmpdir"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    renames = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: renames.append((a, b)) or replace(a, b))
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_state(1), target)
    assert [Path(b) for _, b in renames] == [target]
    assert Path(renames[0][0]).parent == target.parent and Path(renames[0][0]).name[0] == "."
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert list(elsewhere.iterdir()) == []
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() would create it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_state(2), target)
    before = target.read_bytes()
    _fails_midway(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint(_state(4), target)
    assert target.read_bytes() == before  # whole, and still step 2's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file


def test_the_next_save_removes_the_file_of_a_killed_save(tmp_path):
    """SIGKILL leaves its temporary file behind; the next save of that name removes it (and
    leaves the temporary files of other names alone)."""
    orphan = tmp_path / ".last.ckpt.dead.tmp"
    orphan.write_bytes(b"half")
    other = tmp_path / ".step0000004.ckpt.dead.tmp"
    other.write_bytes(b"half")
    AtomicCheckpointIO().save_checkpoint(_state(3), tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "last.ckpt"]


@pytest.mark.parametrize(
    "strategy",
    [
        lambda: SingleDeviceStrategy("cpu"),
        lambda: DDPStrategy(),
        lambda: FSDPStrategy(state_dict_type="full"),  # rank 0 writes one file, as DDP
    ],
    ids=["single", "ddp", "fsdp-full"],
)
def test_the_strategies_save_through_the_atomic_writer(strategy, tmp_path, monkeypatch):
    strategy = strategy()
    assert install_atomic_io(strategy) and isinstance(strategy.checkpoint_io, AtomicCheckpointIO)
    target = tmp_path / "last.ckpt"
    strategy.save_checkpoint(_state(2), target)
    _fails_midway(monkeypatch)
    with pytest.raises(OSError):
        strategy.save_checkpoint(_state(4), target)
    assert torch.load(target, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_writer_given_by_the_user_is_kept():
    class Mine(AtomicCheckpointIO):
        pass

    strategy = DDPStrategy(checkpoint_io=Mine())
    assert not install_atomic_io(strategy) and type(strategy.checkpoint_io) is Mine


# ----------------------------------------------------------------------------- --resume auto
def _avssl_ckpt(path: Path, step: int, age_s: float) -> Path:
    meta = {"objective": "avssl.objectives.mavil.MAViL", "recipe": "mavil"}
    state = {"state_dict": {"w": torch.arange(20_000.0)}, "avssl": meta, "global_step": step}
    torch.save(state, path)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_resume_falls_back_to_the_newest_readable_periodic_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"")  # truncated in place by a killed copy
    _avssl_ckpt(folder / "step0000002.ckpt", 2, age_s=30)
    good = _avssl_ckpt(folder / "step0000004.ckpt", 4, age_s=20)
    flip_member_bytes(_avssl_ckpt(folder / "step0000006.ckpt", 6, age_s=10))
    found, skipped = resumable_checkpoint(folder)
    assert found == good
    assert skipped.startswith("last.ckpt: not a checkpoint")
    assert "step0000006.ckpt: damaged checkpoint: archive member" in skipped
    assert "step0000002" not in skipped
    _avssl_ckpt(folder / "last.ckpt", 6, age_s=0)
    assert resumable_checkpoint(folder)[0] == folder / "last.ckpt"  # a tie: last.ckpt


def test_resume_takes_the_latest_step_not_last_ckpt_first(tmp_path):
    """A kill while last.ckpt is rewritten leaves it whole but a step behind the periodic file
    written just before; modification times do not decide (a copied folder's are all alike)."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    _avssl_ckpt(folder / "step0002000.ckpt", 2000, age_s=0)
    _avssl_ckpt(folder / "last.ckpt", 2000, age_s=0)
    newest = _avssl_ckpt(folder / "step0003000.ckpt", 3000, age_s=60)  # older mtime, later step
    assert resumable_checkpoint(folder) == (newest, "")
    newest.unlink()
    assert resumable_checkpoint(folder) == (folder / "last.ckpt", "")


def test_resume_auto_without_any_readable_checkpoint_is_a_one_line_error(tmp_path, capsys):
    runs = tmp_path / "runs"
    folder = runs / "mavil" / "r" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"")
    (folder / "step0000002.ckpt").write_bytes(b"garbage")
    args = ["pretrain", "--recipe", "mavil", "--runs", str(runs), "--resume", "auto"]
    assert cli_main([*args, "--data", str(tmp_path / "unused")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(
        f"avssl pretrain: error: --resume auto: no readable checkpoint in {folder} (last.ckpt: "
        "not a checkpoint (not the zip archive torch.save writes); step0000002.ckpt: not a"
    )
    with pytest.raises(UserError, match="no readable checkpoint"):
        resumable_checkpoint(folder)


def test_the_flipped_checkpoint_loads_without_the_crc_check(tmp_path):
    """What the check guards against: torch.load reads damaged bytes as different weights."""
    path = _avssl_ckpt(tmp_path / "x.ckpt", 1, age_s=0)
    member = flip_member_bytes(path)
    assert zipfile.ZipFile(path).testzip() == member
    w = torch.load(path, weights_only=True)["state_dict"]["w"]
    assert not torch.equal(w, torch.arange(20_000.0))


def test_a_checkpoint_is_crc_checked_once_until_it_changes(tmp_path, monkeypatch):
    """--resume auto, then check_resume, read the same file: one pass over its bytes; a file
    rewritten since (another inode or size or time) is checked again."""
    from avssl.train_checks import check_resume

    passes = []
    real = zipfile.ZipFile.testzip
    monkeypatch.setattr(zipfile.ZipFile, "testzip", lambda self: passes.append(1) or real(self))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = _avssl_ckpt(folder / "last.ckpt", 4, age_s=0)
    assert resumable_checkpoint(folder) == (path, "")
    check_resume(str(path), "mavil")
    assert len(passes) == 1
    _avssl_ckpt(folder / "last.ckpt", 5, age_s=-5)  # saved again
    member = flip_member_bytes(path)
    with pytest.raises(UserError, match=f"archive member {member}"):
        check_resume(str(path), "mavil")
    assert len(passes) == 2
