"""The step-wise learning-rate multipliers of :class:`~avssl.objectives.base.AVObjective`, and
their renewal after a resume.

``LambdaLR.state_dict()`` stores the numbers of a multiplier object and ``load_state_dict``
writes them back over the multiplier ``configure_optimizers`` just built, so a resumed run
would keep the interrupted run's warm-up and length even when its settings changed (a larger
``trainer.max_steps`` would train on at the cosine's floor). As MAE's ``lr_sched`` (the rate is
a function of the step and of the run's current settings), :func:`renew_schedules` puts the
current numbers back after the checkpoint is restored, when they differ.
"""

from __future__ import annotations

import math
from typing import Any


class WarmupCosine:
    """Step-wise multiplier: linear warmup from ~0 to 1, then cosine decay to ``min_ratio``.

    A plain object (not a closure) so that ``LambdaLR.state_dict()`` stores its numbers and a
    resumed run continues on the same curve (Loshchilov & Hutter 2017,
    https://arxiv.org/abs/1608.03983).
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ConstantLR:
    """Step-wise multiplier 1 (a group that keeps its learning rate: no warm-up, no decay)."""

    def __call__(self, step: int) -> float:
        return 1.0


def renew_schedules(scheduler_configs: list[Any], planned: dict[str, Any]) -> list[str]:
    """Gives every :class:`WarmupCosine` of the schedulers the ``planned`` numbers (``vars`` of
    the one the current settings made; the restored warm-up where the run is past it) where a
    restored checkpoint left others, and sets each group's rate for the step reached; returns
    one message per renewed scheduler (none when the numbers agree: then nothing changes)."""
    notes = []
    for config in scheduler_configs:
        sched = config.scheduler
        lambdas = getattr(sched, "lr_lambdas", [])
        stale = {
            id(f): f
            for f in lambdas
            if isinstance(f, WarmupCosine) and vars(f) != _kept_warmup(planned, f, sched.last_epoch)
        }
        if not stale:
            continue
        first = next(i for i, f in enumerate(lambdas) if id(f) in stale)  # a group it drives
        old = dict(vars(lambdas[first]))
        groups = sched.optimizer.param_groups
        before = groups[first]["lr"]
        for f in stale.values():
            f.__dict__.update(_kept_warmup(planned, f, sched.last_epoch))
        for group, fn, base in zip(groups, lambdas, sched.base_lrs):
            group["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [group["lr"] for group in groups]
        notes.append(
            f"[avssl] resumed at step {sched.last_epoch} with a new schedule: total steps "
            f"{old['total_steps']} -> {planned['total_steps']}, warm-up {old['warmup_steps']} -> "
            f"{vars(lambdas[first])['warmup_steps']}, final ratio {old['min_ratio']:g} -> "
            f"{planned['min_ratio']:g}; lr now {before:.4g} -> {groups[first]['lr']:.4g}"
        )
    return notes


def _kept_warmup(planned: dict[str, Any], restored: WarmupCosine, step: int) -> dict[str, Any]:
    """``planned``, but with the restored warm-up when the run resumes past it: a warm-up that
    is a fraction of the (new) length would otherwise send a run that had finished warming up
    back into it (MAE's ``lr_sched`` keeps its warm-up epochs whatever the length)."""
    if step >= restored.warmup_steps:
        return {**planned, "warmup_steps": restored.warmup_steps}
    return planned
