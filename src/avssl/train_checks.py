"""Checks ``avssl fit`` / ``avssl pretrain`` make before the first step, each a one-line
``UserError``: the checkpoint a run resumes is an undamaged avssl checkpoint of the same recipe
and objective, the options given with it do not change the checkpoint's model, the run writes
into no other run's checkpoint folder, the data holds the modalities the objective trains on,
and a ``val_split`` only for an objective with a validation loss; and the link that gives the
objective the local views it asks for."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities import rank_zero_info

from avssl.cli import UserError
from avssl.objectives.base import AVObjective


def check_resume(
    path: str | None, recipe: str | Sequence[str] | None, args: Sequence[str] = ()
) -> str | None:
    """A checkpoint to resume must be a readable, undamaged avssl checkpoint of the same recipe,
    and the command line must not change its model. Called before LightningCLI starts: it reads
    the checkpoint's hyper-parameters first (and would fail with a traceback on a file that is
    not a checkpoint), resumes another recipe's run with that run's objective (``class_path``
    and all) under this recipe's name, and drops ``--model.*`` options for the checkpoint's.

    Args:
        path: the checkpoint (None / empty: not resuming).
        recipe: this run's recipe, or the recipes its ``--config`` files name (``avssl fit``:
            the checkpoint's must be one of them; the last names the run); None: not checked.
        args: the LightningCLI arguments; ``--model.init_args.<name> <value>`` (or ``=value``)
            that differ from the checkpoint's hyper-parameter ``<name>`` are refused. Model
            settings in ``--config`` files are not compared.
    """
    if not path:
        return None
    from avssl.checkpoint_read import read_checkpoint

    ckpt = read_checkpoint(Path(path), mmap=True)
    meta = ckpt["avssl"]
    names = [recipe] if isinstance(recipe, str) else list(recipe or [])
    if names and meta.get("recipe") and meta["recipe"] not in names:
        objective = meta["objective"].rsplit(".", 1)[-1]
        raise UserError(
            f"cannot resume {path}: it is a checkpoint of recipe {meta['recipe']} ({objective}), "
            f"this run is recipe {names[-1]}; resume it with RECIPE={meta['recipe']}"
        )
    hp = ckpt.get("hyper_parameters") or {}
    for name, value in model_options(list(args)).items():
        if name in hp and _plain(value) != _plain(hp[name]):
            raise UserError(
                f"--model.init_args.{name} {value!r}: a resumed run keeps its checkpoint's model "
                f"settings ({name}={hp[name]!r} in {path}); start a new run to change it"
            )
    return meta.get("recipe")


def check_objective(path: str, class_path: str | None) -> None:
    """The resumed checkpoint's objective is the configured ``model.class_path``: LightningCLI
    would otherwise replace the configured objective by the checkpoint's, silently."""
    from avssl.checkpoint_read import read_checkpoint

    theirs = read_checkpoint(Path(path), mmap=True, verify=False)["avssl"]["objective"]
    if class_path and _class_name(class_path) != _class_name(theirs):
        raise UserError(
            f"cannot resume {path}: it is a checkpoint of objective {theirs}, the config's "
            f"model.class_path is {class_path}; resume it with the config of its own recipe"
        )


def _class_name(path: str) -> str:
    """``module.Class`` where the class is defined (a re-export names the same class)."""
    import importlib

    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return path
    return f"{cls.__module__}.{cls.__qualname__}"


def check_checkpoint_folder(folder: str | None, ckpt_path: str | None) -> None:
    """A run writes into a checkpoint folder that already holds checkpoints only when it resumes
    one of them: checkpoints are overwritten in place (``enable_version_counter: false``), so
    another run there would replace that run's files, ``last.ckpt`` among them."""
    old = sorted(Path(folder).glob("*.ckpt")) if folder else []
    if not folder or not old:
        return
    if not ckpt_path:
        raise UserError(
            f"{folder} already holds {len(old)} checkpoint(s) of an earlier run; resume it "
            f"(avssl pretrain --resume {Path(folder) / 'last.ckpt'}), remove that folder, "
            "or set another AVSSL_RUN_ID"
        )
    if Path(ckpt_path).resolve().parent != Path(folder).resolve():
        raise UserError(
            f"{folder} already holds {len(old)} checkpoint(s) of another run, which resuming "
            f"{ckpt_path} there would overwrite; set another AVSSL_RUN_ID (or remove that folder)"
        )


def _plain(value: Any) -> Any:
    """Tuples as lists (a checkpoint keeps ``betas=(0.9, 0.95)``, YAML gives a list)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def model_options(args: list[str]) -> dict[str, Any]:
    """``{name: value}`` of the ``--model.init_args.<name>`` / ``--model.<name>`` options in
    ``args`` (values parsed as YAML, as LightningCLI does)."""
    import yaml

    found: dict[str, Any] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--model.") or arg.startswith("--model.class_path"):
            continue
        name, eq, value = arg[len("--model.") :].partition("=")
        if not eq:
            if i + 1 >= len(args):
                continue
            value = args[i + 1]
        name = name.removeprefix("init_args.")
        if "." in name:  # a nested setting (dict entry): not compared
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" as text; LightningCLI as a number
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        found[name] = parsed
    return found


MEMBERS = {"audio": ("flac", "wav"), "video": ("mp4", ".jpg")}  # shard format v1
LOOK_AT = 8  # shards whose members are read (headers only), spread over the data


def modalities_present(shards: list[str], look_at: int = LOOK_AT) -> dict[str, bool]:
    """Whether any sample of up to ``look_at`` shards (spread evenly over ``shards``) has an
    audio member (``flac``/``wav``) and a video member (``mp4``, or JPEG frames)."""
    from avssl.data.shards import index_tar

    n = len(shards)
    picked = sorted({round(i * (n - 1) / max(look_at - 1, 1)) for i in range(min(n, look_at))})
    found = {"audio": False, "video": False}
    for path in (shards[i] for i in picked):
        for _, members in index_tar(path):
            for modality, endings in MEMBERS.items():
                found[modality] |= any(ext.endswith(endings) for ext in members)
        if all(found.values()):
            break
    return found


def check_data_modalities(model: AVObjective, datamodule: Any) -> None:
    """The data module loads, and the data holds, every modality the objective trains on. What
    the data holds: the members of up to :data:`LOOK_AT` shards (an audio-only AudioSet mirror,
    ESC-50 or a folder of sound files have no video member; clips without sound tracks no
    audio member), so a dataset whose first look finds none is refused, one with the modality
    only in other shards is not caught."""
    loaded = getattr(datamodule, "modalities", None)
    if loaded is None:
        return
    name, wants = type(model).__name__, model.modalities
    missing = [m for m in wants if m not in loaded]
    if missing:
        raise UserError(
            f"{name} trains on {' and '.join(wants)} but data.init_args.modalities loads only "
            f"{list(loaded)}"
        )
    source = getattr(datamodule, "source", None)
    if source is None or not source.shards:
        return
    found = modalities_present(source.shards)
    absent = [m for m in wants if not found[m]]
    if absent:
        where = source.root or source.shards[0]
        raise UserError(
            f"{name} trains on {' and '.join(wants)}, but no sample in {where} has "
            f"{' or '.join(absent)} (shards looked at: "
            f"{min(len(source.shards), LOOK_AT)} of {len(source.shards)}); choose data with both"
        )


def check_validation(model: AVObjective, datamodule: Any, world: int = 1) -> None:
    """A ``val_split`` needs an objective with a validation loss (``no_validation_reason``)
    and at least one clip per rank (``world`` ranks; a rank without a validation batch would
    leave the others waiting in the epoch's synchronisation of the ``val/`` means)."""
    hp = getattr(datamodule, "hp", None)
    split = getattr(hp, "val_split", None) if hp is not None else None
    if split is None:
        return
    reason = model.no_validation_reason()
    if reason:
        raise UserError(
            f"{type(model).__name__} has no validation loss ({reason}); drop "
            f"data.init_args.val_split ({split!r})"
        )
    try:
        clips = datamodule.table(split).num_samples
    except (AttributeError, FileNotFoundError, ValueError):
        return  # no table to read, or a bad split: the data module's setup says so
    if clips < world:
        raise UserError(
            f"val_split {split!r} has {clips} clip(s) for {world} ranks; every rank needs at "
            "least one (choose a larger split, or drop data.init_args.val_split)"
        )


def link_local_view(model: AVObjective, datamodule: Any) -> None:
    """Asks the data module for the local view the objective wants (``local_view_spec``), and
    says which; a data module without ``request_local_view`` gives none (the objective then
    makes its own, see XKD). One-line ``UserError`` for a view the clips cannot give."""
    request = getattr(datamodule, "request_local_view", None)
    hp = getattr(datamodule, "hp", None)
    if request is None or hp is None:
        return
    spec = model.local_view_spec(hp.num_frames, hp.crop_size, hp.audio_frames)
    try:
        request(spec)
    except ValueError as err:
        raise UserError(f"{type(model).__name__}: {' '.join(str(err).split())}") from None
    if spec is not None:
        rank_zero_info(f"[data] local views of the training clips: {spec.describe()}")


def check_model(spec: Any) -> None:
    """Builds the configured objective once (``spec``: the parsed ``model`` with ``class_path``
    and ``init_args``) and drops it, so that its constructor's errors (a mask ratio out of range,
    an unknown size, a stage-2 run without a teacher) come before anything slow: the build of
    the synthetic set on first use, or not at all (``avssl pretrain --check``)."""
    import importlib

    module, _, name = str(spec.class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"bad configuration: model.class_path {spec.class_path}: {err}") from None
    init = spec.get("init_args")
    kwargs = init.as_dict() if hasattr(init, "as_dict") else dict(init or {})
    try:
        cls(**kwargs)
    except (ValueError, TypeError) as err:  # as AVSSLCLI.instantiate_classes words them
        msg = " ".join(str(err).split())
        raise UserError(f"bad configuration: {type(err).__name__}: {msg}") from None
