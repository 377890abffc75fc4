"""Recipes and run folders of the training entry points (:mod:`avssl.train`).

Where recipes are looked up (``./recipes``, then the checkout's ``recipes/``) and which
``--config`` files name one; the ``AVSSL_RUN_ID`` environment of one run; the checkpoint that
``avssl pretrain --resume`` continues from; and the summary printed after a pretraining run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from avssl.checkpoint_io import newest_checkpoint_folder, resumable_checkpoint
from avssl.cli import UserError

if TYPE_CHECKING:
    from avssl.train import AVSSLCLI

REPO_ROOT = Path(__file__).resolve().parents[2]
NOT_RECIPES = ("_base", "debug", "demo")  # overlays, not recipes


# ----------------------------------------------------------------------------- recipes
def recipe_dirs() -> list[Path]:
    """Where recipes are looked up: ``./recipes`` first, then the checkout's ``recipes/``."""
    dirs = [Path.cwd() / "recipes", REPO_ROOT / "recipes"]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d.resolve() not in dirs[:i]]


def available_recipes() -> list[str]:
    names = {p.stem for d in recipe_dirs() for p in d.glob("*.yaml")}
    return sorted(n for n in names if n not in NOT_RECIPES)


def find_recipe(name: str) -> Path:
    """``recipes/<name>.yaml`` (or a path to a YAML file); UserError when it does not exist."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)
    for d in recipe_dirs():
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    raise UserError(f"unknown recipe {name!r}; available: {', '.join(available_recipes())}")


def recipes_from_args(argv: list[str]) -> list[str]:
    """Stems of the ``--config`` files that are not overlays (``_base``, ``debug``, ``demo``)."""
    names = []
    for i, arg in enumerate(argv):
        path = None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        if path and Path(path).stem not in NOT_RECIPES:
            names.append(Path(path).stem)
    return names


def recipe_from_args(argv: list[str]) -> str | None:
    """The recipe name: stem of the last ``--config`` file that is not ``_base``/``debug``."""
    names = recipes_from_args(argv)
    return names[-1] if names else None


# ----------------------------------------------------------------------------- runs
@contextlib.contextmanager
def _run_env(rid: str | None = None) -> Iterator[None]:
    """Sets ``AVSSL_RUN_ID`` for the duration of one run, then restores the previous value."""
    old = os.environ.get("AVSSL_RUN_ID")
    if rid:
        os.environ["AVSSL_RUN_ID"] = rid
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("AVSSL_RUN_ID", None)
        else:
            os.environ["AVSSL_RUN_ID"] = old


def _resolve_resume(resume: str, runs: Path, recipe: str) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        folder = newest_checkpoint_folder(runs, recipe)
        if folder is None:
            print("[pretrain] --resume auto: no last.ckpt yet, starting fresh")
            return None
        found, skipped = resumable_checkpoint(folder)
        if skipped:
            note = f"{found.name}, the latest readable one; passed over {skipped}"
            print(f"[pretrain] --resume auto: {note}")
        print(f"[pretrain] --resume auto: {found}")
        return found
    if not Path(resume).is_file():
        raise UserError(f"--resume {resume}: checkpoint file not found")
    return Path(resume)


def _print_summary(cli: AVSSLCLI, recipe: str) -> None:
    log_dir = cli.trainer.log_dir or cli.trainer.default_root_dir
    ckpt = cli.trainer.checkpoint_callback
    ckpt_dir = getattr(ckpt, "dirpath", None) or "(no checkpoint callback)"
    last = Path(ckpt_dir) / "last.ckpt"
    print(f"[pretrain] {recipe}: {cli.trainer.global_step} steps done")
    print(f"[pretrain] run folder:  {log_dir}  (config.yaml, TensorBoard events)")
    print(f"[pretrain] checkpoints: {ckpt_dir}")
    print(f"[pretrain] TensorBoard: tensorboard --logdir {Path(log_dir).parent}")
    print(f"[pretrain] next:        make export CKPT={last} OUT=encoders/{recipe}")
