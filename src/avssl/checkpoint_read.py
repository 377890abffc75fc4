"""Reading an avssl training checkpoint safely: ``torch.load(weights_only=True)`` after a CRC
check of every archive member, with one-line errors for what is not a readable avssl checkpoint
(a missing file, a run folder, a truncated or damaged archive, a file that needs pickle).

Used by ``avssl export`` (:mod:`avssl.export_ckpt`), ``--resume`` (:mod:`avssl.checkpoint_io`,
:mod:`avssl.train_checks`) and MAViL stage 2's teacher. Imports torch only, not Lightning.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import torch

from avssl.cli import UserError


def first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def read_checkpoint(path: Path, mmap: bool = False, verify: bool = True) -> dict:
    """Loads an avssl Lightning checkpoint with ``weights_only=True``.

    Args:
        path: the checkpoint file.
        mmap: map the tensors from the file instead of reading them (to look at the metadata).
        verify: check every archive member against its CRC-32 first (reads the whole file
            once; ``torch.load`` checks none, so damaged bytes would load as wrong weights).

    Raises:
        UserError: missing file, folder, unreadable or damaged file, a file that needs pickle
            ("refusing to unpickle ..."), or a checkpoint that avssl did not write.
    """
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise UserError(folder_error(path))
    if not zipfile.is_zipfile(path):
        if _starts_like_zip(path):  # a zip's first bytes, no readable end: cut off mid-save
            raise UserError(
                f"{path}: damaged or truncated checkpoint (a zip archive without its end, as a "
                "save killed mid-write or an incomplete copy leaves); use an intact copy or "
                "another checkpoint of the run"
            )
        raise UserError(f"{path}: not a checkpoint (not the zip archive torch.save writes)")
    if verify:
        check_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise UserError(f"{path}: not a torch checkpoint ({first_line(err)})") from None
        found = re.search(r"GLOBAL\s+([\w.]+)", str(err))
        what = f"the Python object {found.group(1)}" if found else "Python objects"
        raise UserError(
            f"refusing to unpickle {path}: it needs {what}; only tensors and plain containers "
            "are loaded (weights_only=True)"
        ) from None
    except Exception as err:  # noqa: BLE001 - garbage input fails in many ways inside torch.load
        raise UserError(f"{path}: not a readable torch checkpoint ({first_line(err)})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    meta = ckpt.get("avssl")
    if not isinstance(meta, dict) or not isinstance(meta.get("objective"), str):
        raise UserError(
            f"{path}: not an avssl checkpoint (no 'avssl' entry naming the objective; "
            "was it written by avssl fit/pretrain?)"
        )
    return ckpt


# where ``avssl pretrain`` writes a run's checkpoints (what it prints as "next: make export")
CHECKPOINT_HINT = "runs/<recipe>/<run id>/checkpoints/last.ckpt"
_ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first local file header


def _starts_like_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    except OSError:
        return False


def run_checkpoint_in(folder: Path) -> Path | None:
    """``<folder>/checkpoints/last.ckpt`` of a run folder (or ``<folder>/last.ckpt`` of its
    ``checkpoints/``) where that file exists, else None."""
    for candidate in (folder / "checkpoints" / "last.ckpt", folder / "last.ckpt"):
        if candidate.is_file():
            return candidate
    return None


def folder_error(folder: Path) -> str:
    """The one-line error for a folder given where a checkpoint file is expected: it names the
    run's ``last.ckpt`` when the folder is a run folder (or its ``checkpoints/``). A folder is
    not taken for its ``last.ckpt``, as ``--resume`` takes a file too: which checkpoint of the
    run is exported stays the user's choice."""
    found = run_checkpoint_in(folder)
    if found is not None:
        return f"{folder}: is a run folder, not a checkpoint file; pass {found}"
    return f"{folder}: is a folder; expected a checkpoint file (e.g. {CHECKPOINT_HINT})"


_VERIFIED: set[tuple[str, int, int, int]] = set()  # (path, inode, size, mtime_ns): CRCs passed


def check_archive(path: Path) -> None:
    """One-line ``UserError`` naming the first member of the checkpoint's zip archive whose
    bytes do not match their CRC-32 (a damaged copy, a disk fault, a partly rewritten file).
    A file that passed keeps its verdict while its size and modification time stay (a resume
    checks its checkpoint in several places: one pass over a 2 GB file, not three)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
        raise UserError(f"{path}: damaged checkpoint ({first_line(err)})") from None
    if bad is not None:
        raise UserError(
            f"{path}: damaged checkpoint: archive member {bad} does not match its CRC-32 (the file "
            "changed after it was written); use an intact copy or another checkpoint of the run"
        )
    _VERIFIED.add(key)
