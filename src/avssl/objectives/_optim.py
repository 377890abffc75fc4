"""The optimisation every objective shares (DESIGN section 9): AdamW with parameter groups, the
per-step warm-up + cosine schedule, learning-rate scaling by the effective batch (Goyal et al.
2017, https://arxiv.org/abs/1706.02677, as in MAE: ``lr = base_lr * effective_batch / 256``),
per-parameter gradient clipping, and what an optimizer step does after skipped micro-batches.

:class:`OptimMixin` is a part of :class:`avssl.objectives.base.AVObjective` (it reads the
attributes the base constructor sets); it is not meant to be used on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from avssl.objectives._schedule import ConstantLR, WarmupCosine, renew_schedules

# learned tokens and embeddings that take no weight decay (matched as parts of parameter names)
NO_DECAY_KEYS = ("norm", "pos_embed", "cls_token", "mask_token", "modality_embed")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Splits trainable parameters into a decayed and a non-decayed group.

    No weight decay on 1-d parameters (biases, norm scales), position embeddings, modality
    embeddings and learned tokens (``NO_DECAY_KEYS``), as in MAE / timm
    ``param_groups_weight_decay``; linear and patch-embedding weights are decayed. Frozen
    parameters are left out.
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(".bias") or any(k in name for k in NO_DECAY_KEYS):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def clip_per_param(params: Any, max_norm: float) -> None:
    """Scales every gradient whose L2 norm exceeds ``max_norm`` down to it, each tensor on its
    own (no host sync: norms and scales stay on the device)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [(max_norm / (n + 1e-6)).clamp(max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


@torch.no_grad()
def rescale_partial_window(params: Any, micro_batches: int, finite: int) -> None:
    """Multiplies the gradients by ``micro_batches / finite`` when only ``finite`` of the
    ``micro_batches`` of an accumulation window had a finite loss: Lightning divides every
    micro-batch's loss by the window's length, so the skipped ones (zero losses) would leave
    ``finite / micro_batches`` of the mean gradient. The step then follows the mean over the
    finite micro-batches, as a window without skips does."""
    if 0 < finite < micro_batches:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, micro_batches / finite)


class OptimMixin(pl.LightningModule):
    """AdamW, its schedule and the optimizer-step hook of :class:`AVObjective`."""

    base_lr: float
    lr: float | None
    min_lr_ratio: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int | None
    warmup_fraction: float
    clip_grad_per_param: float
    used_lr: float | None
    last_step_skipped: bool
    _micro_batches: int
    _finite_micro_batches: int
    _planned_schedule: dict[str, Any] | None

    def effective_batch_size(self) -> int | None:
        """``batch_size * accumulate_grad_batches * world_size``, or None if unknown."""
        dm = getattr(self.trainer, "datamodule", None)
        batch = getattr(dm, "batch_size", None)
        if batch is None:  # AVDataModule keeps its constructor arguments in hparams
            batch = dict(getattr(dm, "hparams", None) or {}).get("batch_size")
        if batch is None:
            return None
        return int(batch) * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def configure_optimizers(self) -> Any:
        lr = self.resolve_lr(self.effective_batch_size())
        total = int(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            raise ValueError("set trainer.max_steps (or max_epochs with a sized loader)")
        opt, sched = self.build_optimizer(lr, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def resolve_lr(self, eff: int | None) -> float:
        """The peak learning rate for effective batch ``eff`` (None: unknown): ``lr`` when set,
        else ``base_lr * eff / 256``; stored as ``used_lr`` and logged."""
        if self.lr is not None:
            lr = self.lr
        elif eff is None:
            lr = self.base_lr
            rank_zero_info("[avssl] batch size unknown: using base_lr without batch scaling")
        else:
            lr = self.base_lr * eff / 256
        self.used_lr = lr
        rank_zero_info(f"[avssl] lr {lr:.3g} (base_lr {self.base_lr:g}, effective batch {eff})")
        return lr

    def build_optimizer(
        self, lr: float, total_steps: int, params_of: nn.Module | None = None
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW over ``params_of`` (default: this module's :meth:`optimizer_groups`) and its
        per-step warm-up + cosine schedule over ``total_steps``; a group marked
        ``"constant_lr": True`` keeps its learning rate instead."""
        fused = self.device.type == "cuda"
        if params_of is None:
            groups = self.optimizer_groups(lr)
        else:
            groups = param_groups(params_of, self.weight_decay)
        opt = torch.optim.AdamW(groups, lr=lr, betas=self.betas, fused=fused)
        warmup = self.warmup_steps
        if warmup is None:
            warmup = int(round(self.warmup_fraction * total_steps))
        schedule = WarmupCosine(warmup, total_steps, self.min_lr_ratio)
        self._planned_schedule = dict(vars(schedule))  # on_train_start: kept on resume
        lambdas: list[Callable[[int], float]] = [
            ConstantLR() if g.get("constant_lr") else schedule for g in opt.param_groups
        ]
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)

    def clip_params(self) -> Iterable[nn.Parameter]:
        """The parameters whose gradients ``clip_grad_per_param`` clips (default: all of this
        module's). A subclass may narrow them (XKD: the students' encoders and heads, as XKD's
        ``clip_gradients``; its decoders stay unclipped)."""
        return self.parameters()

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups at peak rate ``lr`` (default: :func:`param_groups`
        of this module, all at ``lr``); a subclass may give a group its own ``"lr"`` and mark
        it ``"constant_lr": True`` (CrissCross's predictors)."""
        return param_groups(self, self.weight_decay)

    def on_train_start(self) -> None:
        """After a resume restored the checkpoint's schedule: this run's warm-up, length and
        final ratio replace the checkpoint's where they differ (one line says so;
        :func:`~avssl.objectives._schedule.renew_schedules`)."""
        if self._planned_schedule is not None:
            for note in renew_schedules(self.trainer.lr_scheduler_configs, self._planned_schedule):
                rank_zero_info(note)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After the accumulation window's micro-batches (the decision is the same on every
        rank: the finiteness flag is all-reduced). When every one was skipped (non-finite), the
        gradients (zeros under DDP) become None, so the optimizer changes no weight, moment or
        step count. When some were, the others' gradients are scaled up to their mean
        (:func:`rescale_partial_window`). Then ``clip_grad_per_param`` applies to the
        gradients of :meth:`clip_params`; Lightning's ``gradient_clip_val`` comes after this
        hook."""
        seen, finite = self._micro_batches, self._finite_micro_batches
        self._micro_batches = self._finite_micro_batches = 0
        self.last_step_skipped = finite == 0
        if self.last_step_skipped:
            optimizer.zero_grad(set_to_none=True)
            return
        rescale_partial_window(self.parameters(), seen, finite)
        if self.clip_grad_per_param > 0:
            clip_per_param(self.clip_params(), self.clip_grad_per_param)
