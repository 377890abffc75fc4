"""Checks ``avssl fit`` / ``avssl pretrain`` make before the first step, each a one-line
``UserError``: the checkpoint a run resumes is an avssl checkpoint of the same recipe, and the
data holds the modalities the objective trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avssl.cli import UserError
from avssl.objectives.base import AVObjective


def check_resume(path: str | None, recipe: str | None) -> None:
    """A checkpoint to resume must be a readable avssl checkpoint of the same recipe. Called
    before LightningCLI starts: it reads the checkpoint's hyper-parameters first and would
    otherwise fail with a traceback on a file that is not one, or resume another recipe's run
    with that run's objective (``class_path`` and all) under this recipe's name.

    Args:
        path: the checkpoint (None / empty: not resuming).
        recipe: this run's recipe (None: not checked, e.g. ``avssl fit`` with its own configs).
    """
    if not path:
        return
    from avssl.export_ckpt import read_checkpoint

    meta = read_checkpoint(Path(path), mmap=True)["avssl"]
    if recipe and meta.get("recipe") and meta["recipe"] != recipe:
        objective = meta["objective"].rsplit(".", 1)[-1]
        raise UserError(
            f"cannot resume {path}: it is a checkpoint of recipe {meta['recipe']} ({objective}), "
            f"this run is recipe {recipe}; resume it with RECIPE={meta['recipe']}"
        )


def check_data_modalities(model: AVObjective, datamodule: Any) -> None:
    """The data module loads, and the prepared data holds, every modality the objective trains
    on. What the data holds comes from the prepared folder: ``stats.json`` counts the clips
    with audio among those it sampled (0: the dataset has no audio track at all), the manifest
    records whether video was kept (``prep.want_video``, false for ESC-50)."""
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
    if source is None or source.root is None:
        return
    stats = source.stats() or {}
    absent = []
    if "audio" in wants and stats.get("num_clips") == 0:
        absent.append("no clip has an audio track")
    if "video" in wants and (source.manifest.get("prep") or {}).get("want_video") is False:
        absent.append("it was prepared without video")
    if absent:
        raise UserError(
            f"{name} trains on {' and '.join(wants)}, but in {source.root} "
            f"{' and '.join(absent)}; choose data with both"
        )
