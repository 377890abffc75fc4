"""Image panels for TensorBoard: input | masked input | reconstruction, side by side.

Used by objectives' ``visualize(batch)`` (MAE-style figures, He et al. 2021,
https://arxiv.org/abs/2111.06377). Everything returns float ``[3, H, W]`` images in [0, 1].
"""

from __future__ import annotations

import torch

GAP = 2  # pixels between panels


def _scale(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    lo, hi = ref.min(), ref.max()
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0).expand(3, *x.shape) if x.ndim == 2 else x


def _hcat(panels: list[torch.Tensor], gap: int = GAP) -> torch.Tensor:
    """Concatenates ``[3, H, W_i]`` images along the width with white gaps."""
    h = panels[0].shape[1]
    sep = torch.ones(3, h, gap, dtype=panels[0].dtype)
    out = []
    for i, p in enumerate(panels):
        out.append(p)
        if i < len(panels) - 1:
            out.append(sep)
    return torch.cat(out, dim=2)


def _vcat(panels: list[torch.Tensor], gap: int = GAP) -> torch.Tensor:
    """Concatenates ``[3, H_i, W]`` images along the height with white gaps."""
    w = panels[0].shape[2]
    sep = torch.ones(3, gap, w, dtype=panels[0].dtype)
    out = []
    for i, p in enumerate(panels):
        out.append(p)
        if i < len(panels) - 1:
            out.append(sep)
    return torch.cat(out, dim=1)


def spectrogram_panel(inp: torch.Tensor, masked: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Three spectrograms ``[Ta, F]`` side by side, time on x, low frequencies at the bottom.

    Returns:
        ``[3, F, 3 Ta + 2 GAP]`` image in [0, 1], scaled by the input's range.
    """
    ref = inp.detach().float().cpu()
    tiles = []
    for x in (inp, masked, recon):
        img = _scale(x.detach().float().cpu(), ref).t().flip(0)  # [F, Ta], low freq at bottom
        tiles.append(_rgb(img))
    return _hcat(tiles)


def video_panel(inp: torch.Tensor, masked: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Rows input / masked / reconstruction, columns the frames of a ``[C, T, H, W]`` clip.

    Returns:
        ``[3, 3 H + 2 GAP, T W + (T-1) GAP]`` image in [0, 1], scaled by the input's range.
    """
    ref = inp.detach().float().cpu()
    rows = []
    for x in (inp, masked, recon):
        x = _scale(x.detach().float().cpu(), ref)
        if x.shape[0] == 1:
            x = x.expand(3, *x.shape[1:])
        frames = [x[:3, t] for t in range(x.shape[1])]  # T x [3, H, W]
        rows.append(_hcat(frames))
    return _vcat(rows)


def masked_fill(patches: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    """Sets masked patches to ``value``. patches ``[N, P]``, mask ``[N]`` (1 = masked)."""
    return torch.where(mask.bool().unsqueeze(-1), torch.full_like(patches, value), patches)


def paste(visible: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reconstruction figure: visible patches from the input, masked ones from the prediction."""
    return torch.where(mask.bool().unsqueeze(-1), pred, visible)


def denorm_pred(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Undoes per-patch normalisation of a norm-pix prediction with the target's statistics."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return pred * (var + 1e-6).sqrt() + mean
