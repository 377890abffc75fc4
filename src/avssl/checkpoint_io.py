"""Checkpoint files of a run: written whole or not at all, ranked across a moved run folder,
and the one ``--resume auto`` continues.

Lightning's default writer (``TorchCheckpointIO``) has fsspec write to a temporary file in
``$TMPDIR`` and move it into place; where ``$TMPDIR`` is another file system than the run folder
(a local ``/tmp`` and runs on NFS or Lustre, the usual cluster setup) the move is a copy that
first truncates ``last.ckpt`` in place, so a kill during the copy leaves it empty.
:class:`AtomicCheckpointIO` writes beside the target and renames, which is atomic on one file
system; :class:`RunCheckpoint` keeps the top-k ranking of a run whose folder was moved or
copied; :func:`resumable_checkpoint` picks the latest readable checkpoint of a run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info

from avssl.checkpoint_read import check_archive, read_checkpoint
from avssl.cli import UserError

LAST = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


# ----------------------------------------------------------------------------- writing
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a hidden temporary file in the checkpoint's own folder, flushed and
    fsync'ed, then ``os.replace``'d onto the checkpoint: at every moment the checkpoint is the
    previous complete file or the new complete one, never a partly written one.

    A failed save removes its temporary file; one left by a killed process
    (``.<name>.<random>.tmp``) is removed by the next successful save of the same name. Remote
    paths (``s3://...``) are written by Lightning's own writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Writes ``checkpoint`` to ``path`` (see the class docstring).

        Raises:
            TypeError: ``storage_options`` given (as Lightning's writer).
        """
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{target.name}."
        tmp = target.with_name(f"{prefix}{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "xb") as f:  # mode 0o666 less the umask, as Lightning's files
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        for stale in target.parent.glob(glob.escape(prefix) + "*.tmp"):
            stale.unlink(missing_ok=True)  # a save of this name killed before its rename


def _fsync_dir(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (where the file system supports it)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def install_atomic_io(strategy: Any) -> bool:
    """Gives ``strategy`` an :class:`AtomicCheckpointIO` in place of Lightning's default writer.

    Every strategy that writes a checkpoint file from rank 0 goes through it (single device,
    DDP, FSDP with ``state_dict_type="full"``). Not replaced: a writer given by the user
    (``trainer.plugins``, a strategy's ``checkpoint_io``: async, XLA, ...); not used at all by
    checkpoints written as folders (FSDP ``state_dict_type="sharded"``, DeepSpeed).

    Returns:
        Whether the writer was replaced.
    """
    if type(strategy.checkpoint_io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True


# ----------------------------------------------------------------------------- ranking
def _norm(path: Any) -> str:
    return os.path.normpath(os.path.abspath(str(path)))


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same options, same state in the checkpoint) that keeps a
    run's ``save_top_k`` newest periodic checkpoints when it resumes:

    - in a run folder that was moved or copied, where Lightning would drop the ranking ("The
      dirpath has changed ...") and never prune the files saved before the move;
    - from one of its own periodic checkpoints, which Lightning would never prune.
    """

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint{...}``: checkpoints stay readable by plain Lightning, and resume."""
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and _norm(old) != _norm(self.dirpath):
            rank_zero_info(f"[avssl] checkpoints moved from {old} to {self.dirpath}")
            state_dict = self._moved(state_dict, _norm(old))
        super().load_state_dict(state_dict)

    def _moved(self, state: dict[str, Any], old: str) -> dict[str, Any]:
        """``state`` with the paths in ``old`` moved into ``self.dirpath``; the ranking keeps the
        checkpoints found there (none when another run's checkpoint starts this folder)."""

        def here(path: Any) -> Any:
            if not path or os.path.dirname(_norm(path)) != old:
                return path
            return os.path.join(str(self.dirpath), os.path.basename(str(path)))

        state = dict(state, dirpath=self.dirpath)
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = here(state.get(key))
        moved = {here(p): score for p, score in (state.get("best_k_models") or {}).items()}
        best = state["best_k_models"] = {p: s for p, s in moved.items() if os.path.isfile(p)}
        if state.get("kth_best_model_path") not in best:  # dropped: Lightning's initial values
            state.pop("kth_best_model_path", None)
            state.pop("kth_value", None)
            if len(best) >= self.save_top_k > 0:  # full: the worst kept is the k-th, as Lightning
                kth = (max if self.mode == "min" else min)(best, key=lambda p: best[p])
                state["kth_best_model_path"], state["kth_value"] = kth, best[kth]
        return state

    def _should_remove_checkpoint(self, trainer: Any, previous: str, current: str) -> bool:
        if super()._should_remove_checkpoint(trainer, previous, current):
            return True
        resumed = trainer.ckpt_path  # Lightning keeps it; a periodic one of this folder goes
        if previous == current or not resumed or not self.dirpath or "://" in str(previous):
            return False
        prev = _norm(previous)
        periodic = not os.path.basename(prev).startswith(self.CHECKPOINT_NAME_LAST)
        return periodic and prev == _norm(resumed) and os.path.dirname(prev) == _norm(self.dirpath)


# ----------------------------------------------------------------------------- resuming
def newest_checkpoint_folder(runs: Path, recipe: str) -> Path | None:
    """The ``checkpoints/`` folder of the recipe's run whose ``last.ckpt`` or ``step*.ckpt``
    was written last (a run killed while writing its first ``last.ckpt`` counts too)."""
    found: dict[Path, float] = {}
    for pattern in (f"*/checkpoints/{LAST}", "*/checkpoints/step*.ckpt"):
        for path in (runs / recipe).glob(pattern):
            found[path.parent] = max(found.get(path.parent, 0.0), path.stat().st_mtime)
    return max(found, key=lambda folder: found[folder]) if found else None


def _global_step(path: Path) -> tuple[int, str | None]:
    """The step ``path`` was saved at, from its metadata alone (mapped, no CRC pass), or -1 and
    why it is no avssl checkpoint."""
    try:
        return int(read_checkpoint(path, mmap=True, verify=False).get("global_step", -1)), None
    except UserError as err:
        return -1, str(err).removeprefix(f"{path}: ")


def resumable_checkpoint(folder: Path) -> tuple[Path, str]:
    """The checkpoint of a run's ``checkpoints/`` folder to resume: of ``last.ckpt`` and the
    ``step*.ckpt``, the one saved at the latest step whose bytes pass their CRC check
    (``last.ckpt`` on a tie). ``last.ckpt`` is written after the periodic file of its step, so
    a kill during that write leaves the periodic file newer; an empty or damaged file (a kill,
    a full disk, a bad copy) is passed over. Steps, not modification times, order them: a
    copied run folder's files all carry the time of the copy.

    Returns:
        The checkpoint, and why files were passed over: those ranked above it, and those that
        are no checkpoint at all ("" when none was).

    Raises:
        UserError: none of them is readable.
    """
    skipped: list[str] = []
    candidates = []
    for path in (folder / LAST, *sorted(folder.glob("step*.ckpt"))):
        step, why = _global_step(path)
        if why is None:
            candidates.append((step, path.name == LAST, path))
        else:
            skipped.append(f"{path.name}: {why}")
    for _, _, path in sorted(candidates, key=lambda c: c[:2], reverse=True):
        try:
            check_archive(path)
        except UserError as err:
            skipped.append(f"{path.name}: {str(err).removeprefix(f'{path}: ')}")
            continue
        return path, "; ".join(skipped)
    raise UserError(
        f"--resume auto: no readable checkpoint in {folder} ({'; '.join(skipped)}); resume "
        "another one with --resume PATH, or move that run folder away to start afresh"
    )
