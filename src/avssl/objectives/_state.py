"""What :class:`avssl.objectives.base.AVObjective` keeps in a checkpoint besides the weights: the
provenance block, the random generators' states, in types ``torch.load(weights_only=True)``
accepts, and the check that the constructor arguments are such types too."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import torch


def provenance(module: Any, datamodule: Any) -> dict[str, Any]:
    """``checkpoint["avssl"]``: the objective's class path, the recipe's name, the package
    version, and the data module's ``preprocessing()`` and ``training_data()`` when it has them
    (``avssl export`` copies them into the bundle)."""
    from avssl import __version__

    info: dict[str, Any] = {
        "objective": f"{type(module).__module__}.{type(module).__qualname__}",
        "recipe": module.recipe_name,
        "data": None,
        "version": __version__,
    }
    if datamodule is not None and hasattr(datamodule, "preprocessing"):
        info["data"] = datamodule.preprocessing()
    if datamodule is not None and hasattr(datamodule, "training_data"):
        info["train_data"] = datamodule.training_data()
    return info


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states in ``weights_only``-loadable types."""
    np_state: tuple = np.random.get_state(legacy=True)  # type: ignore[assignment]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` saved (CUDA states only when the device count matches)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    key = n["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def check_json(hparams: dict[str, Any]) -> None:
    """Raises ``ValueError`` naming the first constructor argument that is not plain JSON."""
    for k, v in hparams.items():
        try:
            json.dumps(v)
        except TypeError:
            raise ValueError(
                f"objective argument {k!r} is a {type(v).__name__}; arguments must be plain "
                "numbers/strings/lists/dicts so checkpoints load with weights_only=True"
            ) from None
