"""Losses in float32 inside mixed-precision training.

Under ``bf16-mixed`` (the default on a GPU) Lightning runs the step inside ``torch.autocast``,
which casts the inputs of every matrix product to bfloat16 whatever their dtype: a
``.float()`` in a loss does not keep its similarities in float32. :func:`float32_loss` turns
autocast off for the loss's body; the loss casts its inputs with ``.float()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")  # others (meta) have no autocast


def float32_loss(fn: F) -> F:
    """Runs ``fn`` with autocast off on the device of its first tensor argument (where it is
    on)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        tensors = (x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor))
        first = next(tensors, None)
        device = first.device.type if first is not None else "cpu"
        if device not in AUTOCAST_DEVICES or not torch.is_autocast_enabled(device):
            return fn(*args, **kwargs)
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
