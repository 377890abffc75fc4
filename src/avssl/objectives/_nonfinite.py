"""The non-finite-loss guard's parts (DESIGN section 9): its one-line stop, the zero loss a skipped
batch returns, and the batch-norm statistics a skipped batch must not move.

A batch whose loss is non-finite on any rank is skipped on every rank
(:meth:`avssl.objectives.base.AVObjective.training_step`): it contributes nothing and changes no
weights, optimizer state or objective state. It returns :func:`zero_loss`, not None: Lightning
refuses None under DDP (every rank's reducer waits for a gradient of every parameter), and on
one device with a gradient scaler (``16-mixed``) a None ending an accumulation window skips the
window's step although its other micro-batches were finite. All gradients of the zero loss are
exactly 0, and when every micro-batch of an optimizer step was skipped the gradients are set to
None before the step, which AdamW then leaves alone (weights, moments and step counts).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from avssl.cli import UserError


class NonFiniteLossError(UserError, RuntimeError):
    """Too many non-finite losses in a row: ``avssl`` prints it as one line and exits with 2."""


class QuietStop(SystemExit):
    """The same stop on a rank > 0: exit code 2 without a message (rank 0 prints the line; every
    rank takes the decision at the same step, the finiteness flag being all-reduced)."""


def nonfinite_stop(message: str, rank: int) -> BaseException:
    """The exception that stops a run after too many non-finite losses on global ``rank``."""
    return NonFiniteLossError(message) if rank == 0 else QuietStop(2)


def zero_loss(module: nn.Module) -> torch.Tensor:
    """A scalar 0 that depends on every trainable parameter of ``module``: its backward gives
    each of them a zero gradient (what DDP's reducer needs to finish its all-reduce)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.stack([p.sum() for p in params]).sum() * 0.0


def norm_layers(module: nn.Module) -> list[_NormBase]:
    """The batch-norm layers of ``module`` (found once: a walk of a ViT-B MAViL's ~500 modules
    takes ~0.5 ms of the host per step)."""
    return [m for m in module.modules() if isinstance(m, _NormBase)]


def running_stats(layers: list[_NormBase]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(buffer, copy)`` of every running statistic (batch norm mean, variance, count) of
    ``layers`` (:func:`norm_layers`) that a forward pass in training mode updates, for
    :func:`restore_stats` after a skipped batch."""
    pairs = []
    for m in layers:
        if m.training and m.track_running_stats:
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                if buf is not None:
                    pairs.append((buf, buf.detach().clone()))
    return pairs


@torch.no_grad()
def restore_stats(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Puts back the statistics :func:`running_stats` copied."""
    for buf, saved in pairs:
        buf.copy_(saved)


def finite_report(losses: dict[str, torch.Tensor]) -> str:
    """``"name=value, ..."`` of the scalar loss terms (for the stop message)."""
    parts = []
    for k, v in losses.items():
        if torch.is_tensor(v) and v.numel() == 1:
            parts.append(f"{k}={float(v.detach()):.4g}")
    return ", ".join(parts)
