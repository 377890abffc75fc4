"""Training entry points: ``avssl fit|validate`` (LightningCLI) and ``avssl pretrain`` (recipes).

``avssl fit --config recipes/_base.yaml --config recipes/mavil.yaml [--config recipes/debug.yaml]
[--data.data DIR] [--trainer.devices 8] [--ckpt_path CKPT]`` runs Lightning's CLI with the
objective (``model: class_path: avssl.objectives.<...>``) and the data module
(``data: class_path: avssl.data.datamodule.AVDataModule``) chosen by the config files.

``avssl pretrain --recipe NAME [--data DIR] [--resume CKPT|auto] [-- extra CLI args]`` (``make
pretrain``) resolves the recipe, builds the synthetic dataset on first use when no data is given,
and runs ``fit`` in its own run folder ``runs/<recipe>/<run id>/`` holding ``config.yaml`` (the
fully resolved config), ``checkpoints/`` (the 3 newest periodic ``step*.ckpt`` + ``last.ckpt``)
and the TensorBoard event files. ``--resume auto`` continues the newest run of the recipe: its
latest readable checkpoint (``last.ckpt``, or a ``step*.ckpt`` of a later step or where
``last.ckpt`` is unreadable).

The recipe lookup, the run environment, the choice of the checkpoint to resume and the closing
summary are in :mod:`avssl.train_runs`; their names are importable here.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from avssl.callbacks import ImageLogger, ThroughputMonitor
from avssl.checkpoint_io import RunCheckpoint, install_atomic_io
from avssl.cli import UserError
from avssl.objectives.base import AVObjective
from avssl.train_checks import (
    check_checkpoint_folder,
    check_data_modalities,
    check_model,
    check_objective,
    check_resume,
    check_validation,
    link_local_view,
)
from avssl.train_runs import NOT_RECIPES as NOT_RECIPES
from avssl.train_runs import REPO_ROOT as REPO_ROOT
from avssl.train_runs import (
    _print_summary,
    _resolve_resume,
    _run_env,
    find_recipe,
    recipe_from_args,
    recipes_from_args,
)
from avssl.train_runs import available_recipes as available_recipes
from avssl.train_runs import recipe_dirs as recipe_dirs


# ----------------------------------------------------------------------------- runs
def run_id() -> str:
    """Run folder name shared by all processes of one run.

    ``AVSSL_RUN_ID`` if set, else the SLURM job id, else torchrun's ``--rdzv_id``, else a
    timestamp. Lightning broadcasts rank 0's log and checkpoint folders, so ranks never write
    to different folders even if they disagree; :func:`_run_env` exports the value so that the
    processes Lightning's DDP launcher starts reuse it.
    """
    rid = os.environ.get("AVSSL_RUN_ID")
    if not rid and os.environ.get("SLURM_JOB_ID"):
        rid = f"slurm-{os.environ['SLURM_JOB_ID']}"
    if not rid and os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
        rid = f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    return rid or time.strftime("%Y%m%d-%H%M%S")


# ----------------------------------------------------------------------------- LightningCLI
class ConfigChecked(Exception):
    """Raised by :class:`AVSSLCLI` with ``check_only``: the options parse and the objective
    builds; nothing was read, built or written."""


class AVSSLCLI(LightningCLI):
    """LightningCLI with avssl defaults: subclass mode for objective and data, the throughput /
    image / checkpoint callbacks as config groups, automatic precision, run-folder naming,
    checkpoints written atomically (:mod:`avssl.checkpoint_io`)."""

    def __init__(
        self,
        args: list[str],
        recipe: str | None = None,
        synthetic: str | None = None,
        check_only: bool = False,
    ) -> None:
        self.recipe = recipe or recipe_from_args(args) or "fit"
        self.synthetic = synthetic  # built (first use) once the configuration has parsed
        self.check_only = check_only  # parse, build the objective once, raise ConfigChecked
        super().__init__(
            model_class=AVObjective,
            datamodule_class=pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}},
            args=args,
        )

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ThroughputMonitor, "throughput")
        parser.add_lightning_class_args(ImageLogger, "images")

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parses, then refuses a ``ckpt_path`` of another objective than ``model.class_path``
        before LightningCLI replaces the configured objective by the checkpoint's."""
        super().parse_arguments(parser, args)
        cfg = self.config.get(str(self.config.get("subcommand")), self.config)
        path = cfg.get("ckpt_path")
        if path and Path(path).is_file():
            check_objective(str(path), cfg.get("model", {}).get("class_path"))

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        install_atomic_io(trainer.strategy)  # never a half-written last.ckpt
        return trainer

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        synthetic = self.synthetic or ""
        build = bool(synthetic) and str(cfg.data.init_args.get("data")) == synthetic
        if self.check_only or (build and not (Path(synthetic) / "manifest.json").is_file()):
            check_model(cfg.model)  # a bad objective option costs no build either
        if self.check_only:
            raise ConfigChecked
        if build:
            _resolve_data("", synthetic)  # after the options' check: a typo costs no build
        trainer = cfg.trainer
        if trainer.precision is None:  # "auto": bf16 mixed precision on CUDA GPUs that have it
            gpu = torch.cuda.is_available() and trainer.accelerator not in ("cpu",)
            bf16 = gpu and torch.cuda.is_bf16_supported()
            trainer.precision = "bf16-mixed" if bf16 else "32-true"
        logger = trainer.logger
        if getattr(logger, "class_path", "").endswith("TensorBoardLogger"):
            init = logger.init_args
            if init.get("name") in (None, "", "auto"):
                init.name = self.recipe
            if init.get("version") in (None, "", "auto"):
                init.version = run_id()
            os.environ["AVSSL_RUN_ID"] = str(init.version)  # restored by _run_env

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (FileNotFoundError, ValueError) as err:  # bad paths / settings in the config
            raise UserError(f"bad configuration: {config_error(err)}") from None

    def after_instantiate_classes(self) -> None:
        if isinstance(self.model, AVObjective):
            self.model.recipe_name = self.recipe

    def before_fit(self) -> None:
        """Checks the run folder, the resumed checkpoint, the objective's inputs, splits and
        shards before training starts (one-line errors)."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        self._check_fresh_checkpoint_dir()
        if isinstance(self.model, AVObjective):
            try:
                self.model.check_before_fit(resuming=bool(cfg.get("ckpt_path")))
            except ValueError as err:
                raise UserError(" ".join(str(err).split())) from None
            check_data_modalities(self.model, self.datamodule)
            link_local_view(self.model, self.datamodule)
            check_validation(self.model, self.datamodule, self.trainer.world_size)
        try:
            self.datamodule.setup("fit")  # AVDataModule caches what it reads; Lightning reuses it
        except (FileNotFoundError, ValueError) as err:
            msg = " ".join(str(err).split())
            raise UserError(f"bad data configuration: {msg}") from None

    def _check_fresh_checkpoint_dir(self) -> None:
        """A run must not write into another run's checkpoint folder: checkpoints are
        overwritten in place, so the other run's ``last.ckpt`` would be replaced."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        ckpt = self.trainer.checkpoint_callback
        if not isinstance(ckpt, ModelCheckpoint):
            return
        folder = ckpt.dirpath  # else where ModelCheckpoint.setup will put it
        if not folder and self.trainer.logger is not None and self.trainer.logger.log_dir:
            folder = os.path.join(self.trainer.logger.log_dir, "checkpoints")
        elif not folder and self.trainer.logger is None:
            folder = os.path.join(self.trainer.default_root_dir, "checkpoints")
        check_checkpoint_folder(str(folder) if folder else None, cfg.get("ckpt_path"))

    def after_fit(self) -> None:
        """Writes ``last.ckpt`` for the final step when the periodic checkpoint missed it."""
        ckpt = self.trainer.checkpoint_callback
        if not isinstance(ckpt, ModelCheckpoint) or not ckpt.dirpath or not ckpt.save_last:
            return
        last = Path(ckpt.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt"
        saved_step = getattr(ckpt, "_last_global_step_saved", -1)
        if saved_step != self.trainer.global_step or not last.exists():
            # a full checkpoint (optimizer, loops, callbacks), as the periodic ones
            self.trainer.save_checkpoint(last, weights_only=False)


def _run_cli(
    args: list[str], recipe: str | None = None, synthetic: str | None = None, check: bool = False
) -> AVSSLCLI:
    from jsonargparse import ArgumentError

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
            return AVSSLCLI(args, recipe=recipe, synthetic=synthetic, check_only=check)
    except ArgumentError as err:
        raise UserError(f"bad configuration: {config_error(err)}") from None


def config_error(err: Exception) -> str:
    """One line for a configuration error: the cause that jsonargparse's check of the
    ``class_path`` union wraps (the objective's or data module's own message), without the
    dump of every given value."""
    msg = " ".join(str(err).split())
    if "Does not validate against any of the Union subtypes" in msg and "Errors: - " in msg:
        listed = msg.split("Errors: - ", 1)[1].split(" Given value type:")[0]
        causes = [c for c in listed.split(" - ") if not c.startswith("Expected a <class 'None")]
        if causes:
            return "; ".join(causes)
    typed = isinstance(err, (FileNotFoundError, ValueError))
    return f"{type(err).__name__}: {msg}" if typed else msg


def lightning_main(argv: list[str]) -> int:
    """``avssl fit|validate ...``: LightningCLI over the recipe configs."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv) and not Path(argv[i + 1]).is_file():
            raise UserError(f"config file not found: {argv[i + 1]}")
    recipe = None  # a resumed run keeps its recipe's name, whatever overrides file comes last
    for i, arg in enumerate(argv):
        if arg.startswith("--ckpt_path"):
            given = argv[i + 1 : i + 2] if arg == "--ckpt_path" else [arg.split("=", 1)[1]]
            path = given[0] if given else ""
            resume = path if path not in ("", "null", "None") else None
            recipe = check_resume(resume, recipes_from_args(argv), argv)
    with _run_env():
        _run_cli(list(argv), recipe=recipe)
    return 0


# ----------------------------------------------------------------------------- pretrain
def _pretrain_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avssl pretrain", description=__doc__.split("\n\n")[2])
    p.add_argument("--recipe", default="mavil", help="recipes/<NAME>.yaml (default mavil)")
    p.add_argument("--data", default="", help="prepared shard folder; empty = synthetic set")
    p.add_argument("--resume", default="", help="checkpoint to resume, or 'auto' (newest last)")
    p.add_argument("--runs", default="runs", help="root of the run folders (default runs/)")
    p.add_argument(
        "--synthetic", default="shards/synthetic", help="where the synthetic set is built"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only parse the options and build the objective once, then exit (no data, no run)",
    )
    return p


def _resolve_data(data: str, synthetic: str) -> str:
    if data:
        is_url = any(s in data for s in ("{", "::", "://", "pipe:"))
        if not is_url and not (Path(data) / "manifest.json").is_file():
            raise UserError(f"--data {data}: no manifest.json there (prepare it with make prep)")
        return data
    out = Path(synthetic)
    if not (out / "manifest.json").is_file():
        if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
            _wait_for(out / "manifest.json")
        else:
            import data_prep

            print(f"[pretrain] building the synthetic dataset into {out} (first use)", flush=True)
            data_prep.prepare_dataset("synthetic", out=str(out), workers=os.cpu_count() or 1)
    return str(out)


def _wait_for(path: Path, timeout_s: float = 3600.0) -> None:
    t0 = time.time()
    while not path.is_file():
        if time.time() - t0 > timeout_s:
            raise UserError(f"timed out waiting for rank 0 to build {path}")
        time.sleep(2.0)


def pretrain_main(argv: list[str]) -> int:
    """``avssl pretrain --recipe NAME --data DIR --resume CKPT -- <extra LightningCLI args>``."""
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    opts = _pretrain_parser().parse_args(argv)
    recipe_path = find_recipe(opts.recipe)
    recipe = recipe_path.stem
    base = recipe_path.parent / "_base.yaml"
    if not base.is_file():
        raise UserError(f"{base} not found next to the recipe")
    runs = Path(opts.runs)
    resume = _resolve_resume(opts.resume, runs, recipe)
    check_resume(str(resume) if resume else None, recipe, extra)
    rid = run_id()
    if resume is not None and resume.parent.name == "checkpoints":
        rid = resume.parent.parent.name  # continue in the resumed run's folder
    data = _resolve_data(opts.data, opts.synthetic) if opts.data else str(Path(opts.synthetic))
    args = ["fit", "--config", str(base), "--config", str(recipe_path)]
    args += ["--data.init_args.data", data]
    args += ["--trainer.logger.init_args.save_dir", str(runs)]
    args += ["--trainer.logger.init_args.name", recipe, "--trainer.logger.init_args.version", rid]
    args += extra
    if resume is not None:
        args += ["--ckpt_path", str(resume)]
    with _run_env(rid):
        try:
            cli = _run_cli(
                args, recipe=recipe, synthetic=None if opts.data else data, check=opts.check
            )
        except ConfigChecked:
            print(f"[pretrain] {recipe}: the options parse and the objective builds", flush=True)
            return 0
    if cli.trainer.is_global_zero:
        _print_summary(cli, recipe)
    return 0
