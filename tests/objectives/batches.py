"""Random AVBatches and a fixed-batch training loop for the objective tests (imported as
``tests.objectives.batches``)."""

from __future__ import annotations

import math

import torch

from avssl.data.batch import AVBatch


def make_batch(
    B: int = 4, frames: int = 4, px: int = 32, audio_frames: int = 64, mel: int = 32, seed: int = 0
) -> AVBatch:
    """A random normalised batch: video ``[B, 3, T, H, W]``, audio ``[B, 1, Ta, F]``."""
    g = torch.Generator().manual_seed(seed)
    return AVBatch(
        video=torch.randn(B, 3, frames, px, px, generator=g),
        audio=torch.randn(B, 1, audio_frames, mel, generator=g),
        key=[f"fake/{i}" for i in range(B)],
        label=torch.arange(B) % 2,
        video_mask=torch.ones(B, dtype=torch.bool),
        audio_mask=torch.ones(B, dtype=torch.bool),
    )


def train_steps(model, batch: AVBatch, params, lr: float = 2e-3, steps: int = 6) -> list[float]:
    """AdamW steps of ``model.compute_losses`` on one fixed batch; the loss before each step.
    As ``training_step``, the objective's staged state is committed after a finite loss."""
    opt = torch.optim.AdamW(params, lr=lr)
    hist = []
    for _ in range(steps):
        loss = model.compute_losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(float(loss))
        if math.isfinite(hist[-1]):
            model.commit_state()
    return hist
