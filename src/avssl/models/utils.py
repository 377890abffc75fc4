"""Plain helpers shared by objectives: EMA update, cosine schedules, weight initialisation."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float | torch.Tensor) -> None:
    """Exponential moving average of weights: ``t <- m * t + (1 - m) * s`` (BYOL / DINO / XKD).

    Parameters are averaged; floating-point buffers are copied from the student (integer
    buffers too). Both modules must have the same structure.

    Args:
        teacher: updated in place (its parameters need no gradient).
        student: source of the new weights.
        momentum: m in [0, 1]; 1 keeps the teacher, 0 copies the student.
    """
    t_params: list[torch.Tensor] = list(teacher.parameters())
    s_params: list[torch.Tensor] = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("ema_update: teacher and student have different parameter lists")
    weight = 1.0 - momentum
    if t_params:
        if torch.is_tensor(weight):
            for t, s in zip(t_params, s_params):
                t.lerp_(s.detach().to(t.dtype), weight.to(t.device, t.dtype))
        else:
            torch._foreach_lerp_(t_params, [s.detach() for s in s_params], float(weight))
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


def cosine_schedule(
    step: int,
    total_steps: int,
    base_value: float,
    final_value: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> float:
    """Linear warm-up then half-cosine from ``base_value`` to ``final_value`` (DINO / XKD).

    Args:
        step: current step (clamped to ``[0, total_steps]``).
        total_steps: steps of the whole schedule, warm-up included.
        base_value: value at the end of warm-up.
        final_value: value at ``total_steps``.
        warmup_steps: linear ramp from ``warmup_start`` to ``base_value``.
        warmup_start: value at step 0 when warming up.

    Returns:
        The scheduled value (a Python float; compute it outside any compiled step).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    step = min(max(step, 0), total_steps)
    if step < warmup_steps:
        return warmup_start + (base_value - warmup_start) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = (step - warmup_steps) / span
    return final_value + 0.5 * (base_value - final_value) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> float:
    """LR multiplier for ``LambdaLR``: linear warm-up from 0 to 1, cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return cosine_schedule(step, total_steps, 1.0, min_ratio, warmup_steps=warmup_steps)


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float = 0.02, bound: float = 2.0) -> torch.Tensor:
    """Normal(0, std) truncated to ``[-bound * std, bound * std]``, in place.

    Inverse-CDF sampling (one pass, no rejection loop), much faster on the CPU than
    ``torch.nn.init.trunc_normal_`` for large layers.
    """
    lo = math.erf(-bound / math.sqrt(2.0))  # CDF bounds mapped to [-1, 1]
    tensor.uniform_(lo, -lo)
    tensor.erfinv_().mul_(std * math.sqrt(2.0))
    return tensor.clamp_(-bound * std, bound * std)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Truncated-normal init of Linear weights (timm / BEiT / VideoMAE), zero biases,
    unit LayerNorm; patch-embedding convolutions get Xavier-uniform on the flattened kernel
    (MAE). Use as ``model.apply(init_weights)``.
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
        w = module.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
