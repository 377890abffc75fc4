"""Turns an avssl training checkpoint into bundle config + encoder (and projection head) weights.

The checkpoint is read by :func:`avssl.checkpoint_read.read_checkpoint` (``weights_only=True``
only: a file that would need pickle to load is refused, never executed). The objective named in
``checkpoint["avssl"]`` must be a class under ``avssl.objectives``; it is rebuilt from the
checkpoint's ``hyper_parameters``, its weights are loaded and its ``export_encoders()`` says
which encoders (student/teacher) to export.
Rebuilding the objective imports Lightning; loading a finished bundle does not.
The config's ``provenance`` entry is made by :mod:`avssl.export_provenance`; the bundle folder
is written by :func:`avssl.export_write.write_bundle`, which this module re-exports.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avssl.checkpoint_read import first_line
from avssl.cli import UserError
from avssl.export import FORMAT, FORMAT_VERSION_PLAIN, MODALITIES
from avssl.export_preproc import preprocessing_from_data
from avssl.export_provenance import _provenance
from avssl.export_provenance import _sha256 as _sha256
from avssl.export_write import _umask as _umask
from avssl.export_write import write_bundle as write_bundle
from avssl.heads import head_key

_OBJECTIVE_NAME = re.compile(r"avssl\.objectives(\.[A-Za-z_][A-Za-z0-9_]*)+")


def objective_class(name: str, src: Path) -> type:
    """Resolves ``avssl.objectives.<module>.<Class>``; anything else is refused."""
    if not _OBJECTIVE_NAME.fullmatch(name) or name.count(".") < 3:
        raise UserError(f"{src}: objective {name!r} is not a class under avssl.objectives; refused")
    module_name, _, cls_name = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"{src}: objective module {module_name} not found ({err})") from None
    from avssl.objectives.base import AVObjective

    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, AVObjective)):
        raise UserError(f"{src}: {name} is not an avssl objective class")
    if cls is AVObjective:
        raise UserError(f"{src}: {name} is the abstract base of the objectives, not one; refused")
    if cls.export_encoders is AVObjective.export_encoders:
        raise UserError(f"{src}: {name} does not implement export_encoders(); nothing to export")
    return cls


def _init_kwargs(cls: Any, hparams: dict, src: Path) -> dict:
    """Keeps the hyper-parameters the objective's ``__init__`` accepts (drops CLI bookkeeping)."""
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_")}
    if not takes_any:
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            print(f"[export] {src}: ignoring hyper-parameters unknown to {cls.__name__}: {unknown}")
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return kwargs


_FROM_CHECKPOINT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "avssl_rebuilding_from_checkpoint", default=False
)


def rebuilding_from_checkpoint() -> bool:
    """True while :func:`rebuild_objective` constructs an objective whose weights all come from
    the checkpoint being read: its constructor must then not read the other runs' files its
    hyper-parameters name (MAViL stage 2's ``teacher_ckpt``: the checkpoint holds ``teacher.*``
    itself, and the file may since have been replaced, damaged or removed)."""
    return _FROM_CHECKPOINT.get()


def rebuild_objective(ckpt: dict, src: Path, random_init: bool = False) -> tuple[Any, set[str]]:
    """Builds the checkpoint's objective from its hyper-parameters and loads its weights.

    With ``random_init`` the weights are not loaded: the same architecture at a fresh, seeded
    initialisation (the baseline of the learning checks).

    Returns:
        The objective (eval mode) and the names of its weights the checkpoint lacked.

    Raises:
        UserError: the class is refused, or the hyper-parameters do not build it, or the
            weights do not fit the objective they build (a tensor of another shape).
    """
    name = ckpt["avssl"]["objective"]
    cls = objective_class(name, src)
    kwargs = _init_kwargs(cls, dict(ckpt.get("hyper_parameters") or {}), src)
    if random_init:
        torch.manual_seed(0)
    token = _FROM_CHECKPOINT.set(True)
    try:
        objective = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"{src}: cannot rebuild {name} from its hyper_parameters ({err})") from None
    finally:
        _FROM_CHECKPOINT.reset(token)
    if random_init:
        return objective.eval(), set()
    state = ckpt["state_dict"]
    _check_shapes(objective, state, ckpt, src)
    try:
        missing, unexpected = objective.load_state_dict(state, strict=False)
    except RuntimeError as err:  # what _check_shapes did not foresee; one line all the same
        found = re.search(r"size mismatch for [^\n]*", str(err))
        why = found.group(0).rstrip(".") if found else first_line(err)
        raise UserError(f"{src}: the weights do not fit the rebuilt {name} ({why})") from None
    if unexpected:
        print(f"[export] {src}: {len(unexpected)} checkpoint entries unused, e.g. {unexpected[0]}")
    return objective.eval(), set(missing)


def _check_shapes(objective: nn.Module, state: dict, ckpt: dict, src: Path) -> None:
    """One-line ``UserError`` naming the first tensor of the objective (in its own order) whose
    shape differs in the checkpoint: hyper-parameters that do not describe these weights."""
    for key, mine in objective.state_dict().items():
        theirs = state.get(key)
        if isinstance(theirs, torch.Tensor) and theirs.shape != mine.shape:
            hint = (
                "the checkpoint has no hyper_parameters, so the defaults were used"
                if not ckpt.get("hyper_parameters")
                else "were its hyper_parameters edited?"
            )
            raise UserError(
                f"{src}: the weights do not fit the {type(objective).__name__} its "
                f"hyper_parameters build: {key} is {list(theirs.shape)} in the checkpoint, "
                f"{list(mine.shape)} in the rebuilt objective ({hint})"
            )


def _check_loaded(
    objective: nn.Module, modules: dict, missing: set[str], src: Path, what: str = "encoder"
) -> None:
    """Fails if any weight of an exported module (``what``: "encoder" or "head") did not come
    from the checkpoint. Every parameter and persistent buffer of each module is looked up by
    identity among the objective's own weights: a module built on the fly (a head made of
    ``nn.Sequential(projector, predictor)``) is checked like a registered one, and a tensor that
    is no weight of the objective at all (so never loaded) fails too."""
    names: dict[int, list[str]] = {}
    tensors = [
        *objective.named_parameters(remove_duplicate=False),
        *objective.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in tensors:
        names.setdefault(id(tensor), []).append(name)
    stored = set(objective.state_dict())  # persistent weights: what a checkpoint holds
    lost: list[str] = []
    for modality, mod in modules.items():
        for key, tensor in mod.state_dict(keep_vars=True).items():
            own = [n for n in names.get(id(tensor), []) if n in stored]
            if not own:
                lost.append(f"{key} of the {modality} {what} (not a weight of the objective)")
            elif all(n in missing for n in own):
                lost.append(own[0])
    lost = list(dict.fromkeys(lost))  # a backbone shared by both modalities: named once
    if lost:
        raise UserError(f"{src}: checkpoint lacks weights of the exported {what}: {lost[:3]}")


def _encoder_config(enc: Any, modality: str, src: Path) -> dict:
    if not hasattr(enc, "config"):
        raise UserError(f"{src}: the {modality} encoder {type(enc).__name__} has no config()")
    cfg = dict(enc.config())
    try:
        json.dumps(cfg)
    except TypeError as err:
        raise UserError(f"{src}: {modality} encoder config is not JSON ({err})") from None
    return cfg


def bundle_from_checkpoint(
    ckpt: dict, src: Path, random_init: bool = False
) -> tuple[dict, dict[str, dict]]:
    """Checkpoint -> (bundle config, modality -> encoder state_dict, plus
    ``"<modality>_head"`` -> head weights when the objective has a shared space).

    Uses only the objective's ``export_encoders()``: ``{"audio", "video", "which", "note"}``,
    and ``export_heads()`` (None, or ``{"audio", "video", "space"}`` and optionally ``"v2a"``,
    the same for the video -> audio direction's space; :mod:`avssl.heads`).
    A backbone shared by both modalities is written for both (``shared_backbone: true``).
    """
    objective, missing = rebuild_objective(ckpt, src, random_init)
    with torch.no_grad():
        exported = objective.export_encoders()
    modules = {m: exported.get(m) for m in MODALITIES if exported.get(m) is not None}
    if not modules:
        raise UserError(f"{src}: the objective exports no encoder")
    if not random_init:  # (a random initialisation loads no weight)
        _check_loaded(objective, modules, missing, src)
    shared = len(modules) == 2 and modules["audio"] is modules["video"]
    config: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION_PLAIN}
    for modality in MODALITIES:
        enc = modules.get(modality)
        config[modality] = None if enc is None else _encoder_config(enc, modality, src)
    config["preprocessing"] = preprocessing_from_data(ckpt["avssl"].get("data") or {}, modules, src)
    config["provenance"] = _provenance(ckpt, exported, shared, src)
    if random_init:
        config["provenance"]["random_init"] = True
        config["provenance"]["encoder"] = {
            "which": "random initialisation",
            "note": "same architecture as the checkpoint, untrained weights (seed 0)",
        }
    state_dicts = {
        m: {k: v.detach().cpu() for k, v in e.state_dict().items()} for m, e in modules.items()
    }
    heads = objective.export_heads() if len(modules) == 2 else None
    if heads is not None:
        lacked = None if random_init else missing
        config["heads"], head_weights = _heads(heads, objective, lacked, src)
        state_dicts.update(head_weights)
        if heads.get("v2a") is not None:
            config["heads"]["v2a"], v2a_weights = _heads(heads["v2a"], objective, lacked, src,
                                                         "v2a")  # fmt: skip
            state_dicts.update(v2a_weights)
    return config, state_dicts


def _heads(
    heads: dict,
    objective: nn.Module,
    missing: set[str] | None,
    src: Path,
    direction: str = "a2v",
) -> tuple[dict, dict]:
    """The bundle's ``"heads"`` entry (or its ``"v2a"`` one) and the ``head_key(modality,
    direction)`` weights (:mod:`avssl.heads`); ``missing`` None: no weights were loaded (random
    initialisation), nothing to check."""
    from avssl.heads import describe_head, head_dims

    if missing is not None:
        what = "head" if direction == "a2v" else f"{direction} head"
        _check_loaded(objective, {m: heads[m] for m in MODALITIES}, missing, src, what)
    entry: dict[str, Any] = {}
    weights = {}
    for modality in MODALITIES:
        try:
            entry[modality], weights[head_key(modality, direction)] = describe_head(heads[modality])
        except ValueError as err:
            what = modality if direction == "a2v" else f"{direction} {modality}"
            raise UserError(f"{src}: cannot store the {what} projection head: {err}") from None
    entry["space"] = str(heads.get("space", "shared"))
    entry["dim"] = head_dims(entry["audio"])[1]
    entry["input"] = "the encoder's clip embedding (mean-pooled tokens)"
    return entry, weights
