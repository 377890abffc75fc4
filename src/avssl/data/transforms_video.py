"""Video transforms as plain callables: the random-resized, multi-scale and centre crops, the
horizontal flip, and ``Normalize`` (colour jitter, grey-scale and normalisation fused into one
colour matrix, which :func:`apply_affine` applies to a batch on any device).

Every transform is ``t(x, gen)`` with ``gen`` a ``torch.Generator`` (None = global RNG). They take
RGB uint8 ``[T, H, W, 3]`` frames (one clip; the same spatial crop and flip for every frame of the
clip) and ``Normalize`` returns float ``[C, T, H, W]``. The random draws (``_uniform``,
``_chance``) are shared with the audio transforms; :mod:`avssl.data.transforms` builds the named
presets from these and re-exports everything here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(gen: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _chance(gen: torch.Generator | None, p: float) -> bool:
    return p > 0 and float(torch.rand((), generator=gen)) < p


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[T, h, w, 3]`` -> uint8 ``[T, size[0], size[1], 3]`` (bilinear, antialiased)."""
    y = x.permute(0, 3, 1, 2)  # [T, 3, h, w], channels-last memory: fast uint8 kernel
    y = F.interpolate(y, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1)  # [T, H, W, 3]


class RandomResizedCrop:
    """Random area/aspect crop resized to ``size`` x ``size`` (Inception-style, one box/clip;
    after 10 draws that do not fit, torchvision's fallback: the whole frame, its aspect clamped
    to ``ratio``)."""

    def __init__(self, size: int, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def box(self, h: int, w: int, gen: torch.Generator | None) -> tuple[int, int, int, int]:
        """Returns (top, left, height, width) of the crop."""
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = h * w * _uniform(gen, *self.scale)
            r = math.exp(_uniform(gen, *log_r))
            cw, ch = round(math.sqrt(area * r)), round(math.sqrt(area / r))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (), generator=gen))
                left = int(torch.randint(0, w - cw + 1, (), generator=gen))
                return top, left, ch, cw
        # fallback (torchvision's): the centred whole frame, its aspect clamped to the range
        r = min(max(w / h, self.ratio[0]), self.ratio[1])
        ch, cw = (h, min(w, round(h * r))) if r * h <= w else (min(h, round(w / r)), w)
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        top, left, ch, cw = self.box(x.shape[1], x.shape[2], gen)
        return _resize(x[:, top : top + ch, left : left + cw], (self.size, self.size))


class MultiScaleCrop:
    """VideoMAE's pretraining crop (TSN's multi-scale corner crop, https://arxiv.org/abs/1507.02159,
    as VideoMAE, https://arxiv.org/abs/2203.12602, pretrains): each side of the box is one of
    ``scales`` times the frame's short side (a side within 2 px of ``size`` taken as ``size``),
    height and width at most ``max_distort`` steps apart in that list, so the box is square or
    mildly oblong; its corner is one of 13 fixed points (the four corners, the centre, the four
    edge midpoints and the four quarter points of the free space, in steps of a quarter of it);
    the box is resized to ``size`` x ``size``. One box per clip. A snapped side larger than the
    frame is cut to the frame (VideoMAE's PIL crop pads it with black instead)."""

    SCALES = (1.0, 0.875, 0.75, 0.66)
    # (rows, columns) of the box's corner in quarters of the free space: corners, centre,
    # edge midpoints, quarter points
    POINTS = ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2),
              (1, 1), (1, 3), (3, 1), (3, 3))  # fmt: skip

    def __init__(self, size: int, scales=SCALES, max_distort: int = 1):
        self.size, self.scales, self.max_distort = size, tuple(scales), max_distort

    def box(self, h: int, w: int, gen: torch.Generator | None) -> tuple[int, int, int, int]:
        """Returns (top, left, height, width) of the crop."""
        sides = [int(min(h, w) * s) for s in self.scales]
        sides = [self.size if abs(s - self.size) < 3 else s for s in sides]
        pairs = [
            (min(sides[i], h), min(sides[j], w))
            for i in range(len(sides))
            for j in range(len(sides))
            if abs(i - j) <= self.max_distort
        ]
        ch, cw = pairs[int(torch.randint(0, len(pairs), (), generator=gen))]
        rows, cols = self.POINTS[int(torch.randint(0, len(self.POINTS), (), generator=gen))]
        return rows * ((h - ch) // 4), cols * ((w - cw) // 4), ch, cw

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        top, left, ch, cw = self.box(x.shape[1], x.shape[2], gen)
        return _resize(x[:, top : top + ch, left : left + cw], (self.size, self.size))


class ResizeCenterCrop:
    """Resizes the short side to ``size`` then crops the centred ``size`` x ``size`` square."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        h, w = x.shape[1], x.shape[2]
        s = self.size / min(h, w)
        nh, nw = max(self.size, round(h * s)), max(self.size, round(w * s))
        if (nh, nw) != (h, w):
            x = _resize(x, (nh, nw))
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        return x[:, top : top + self.size, left : left + self.size]


class RandomHorizontalFlip:
    """Mirrors the whole clip left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return x.flip(2) if _chance(gen, self.p) else x  # [T, H, W, 3]: W is dim 2


class Normalize:
    """uint8 ``[T, H, W, 3]`` -> float ``[C, T, H, W]``: ``(x / 255 - mean) / std``, with an
    optional colour jitter (brightness, contrast, saturation factors drawn from
    ``[1 - j, 1 + j]``, then a hue shift drawn from ``[-hue, hue]`` turns, applied in that order
    with probability ``jitter_p``) and an optional grey-scale conversion (probability
    ``grey_p``, after the jitter, as SimCLR's https://arxiv.org/abs/2002.05709 and CVRL's
    https://arxiv.org/abs/2008.03800 do) fused in.

    The jitter steps, the grey-scale conversion and the normalisation are linear in the pixel
    values, so they run as one 3x3 colour matrix plus offset, clamped once to the valid range
    at the end (torchvision clamps after each step). The hue shift is the linear one: a
    rotation of the chroma plane of YIQ about the grey axis (luma and grey levels unchanged),
    which approximates torchvision's HSV hue shift (same direction; it differs most for
    saturated colours). With ``grey_p`` or ``hue`` 0 no random number is drawn for it, so the
    other draws are those of a Normalize without it.
    """

    GREY = torch.tensor([0.299, 0.587, 0.114])
    YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])

    def __init__(
        self, mean=IMAGENET_MEAN, std=IMAGENET_STD, jitter=0.0, jitter_p=0.8, grey_p=0.0, hue=0.0
    ) -> None:
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5] (a fraction of a turn), got {hue}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1)
        self.jitter, self.jitter_p, self.grey_p, self.hue = jitter, jitter_p, grey_p, hue

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        t, h, w, _ = x.shape
        y = torch.empty(3, t * h * w)
        y.view(3, t, h, w).copy_(x.permute(3, 0, 1, 2))  # [T, H, W, 3] -> float [C, T*H*W]
        colour = self._colour_affine(x, gen)
        if colour is not None:
            mat, offset = colour  # in [0, 255] units
            y = torch.addmm(offset / (255.0 * self.std) - self.mean / self.std,
                            mat / (255.0 * self.std), y)  # fmt: skip
            for c in range(3):  # clamp to the normalised image of [0, 1]
                lo, hi = (-self.mean[c] / self.std[c]), (1 - self.mean[c]) / self.std[c]
                y[c].clamp_(float(lo), float(hi))
            return y.view(3, t, h, w)
        return y.mul_(1.0 / (255.0 * self.std)).sub_(self.mean / self.std).view(3, t, h, w)

    def affine(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """What ``__call__`` would do to the uint8 clip ``x``, drawing the same random numbers,
        as ``[3, 6]``: colour matrix (in normalised units per 0-255 value), offset, lower and
        upper clamp bound per channel; :func:`apply_affine` applies it (on any device)."""
        scale = 1.0 / (255.0 * self.std)  # [3, 1]
        colour = self._colour_affine(x, gen)
        if colour is not None:
            mat, offset = colour[0] * scale, colour[1] * scale - self.mean / self.std
        else:
            mat, offset = torch.diag(scale[:, 0]), -self.mean / self.std
        lo, hi = -self.mean / self.std, (1 - self.mean) / self.std
        return torch.cat([mat, offset, lo, hi], dim=1)

    def _colour_affine(self, x: torch.Tensor, gen) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(matrix [3, 3], offset [3, 1]) in 0-255 units of the jitter and grey-scale drawn
        for this clip, or None when neither applies."""
        colour = None
        if (self.jitter > 0 or self.hue > 0) and _chance(gen, self.jitter_p):
            colour = self._jitter_affine(x, gen)
        if self.grey_p > 0 and _chance(gen, self.grey_p):
            grey = self.GREY.expand(3, 3)  # every channel becomes the luma
            colour = (grey, torch.zeros(3, 1)) if colour is None else (
                grey @ colour[0], grey @ colour[1])  # fmt: skip
        return colour

    def _jitter_affine(self, x: torch.Tensor, gen) -> tuple[torch.Tensor, torch.Tensor]:
        """(matrix [3, 3], offset [3, 1]) of brightness b, contrast c, saturation s:
        ``s_mat (c b x + (1 - c) b m)`` with ``m`` the mean grey level and
        ``s_mat = s I + (1 - s) 1 grey^T`` (which leaves grey levels unchanged)."""
        lo, hi = max(0.0, 1 - self.jitter), 1 + self.jitter
        b, c, s = (_uniform(gen, lo, hi) for _ in range(3))
        m = float((x[:, ::4, ::4].float() @ self.GREY).mean())  # grey mean on a subsample
        s_mat = s * torch.eye(3) + (1 - s) * self.GREY.expand(3, 3)
        if self.hue > 0:  # the offset is grey, which the hue rotation leaves as it is
            s_mat = self.hue_matrix(_uniform(gen, -self.hue, self.hue)) @ s_mat
        return c * b * s_mat, torch.full((3, 1), (1 - c) * b * m)

    @classmethod
    def hue_matrix(cls, h: float) -> torch.Tensor:
        """``[3, 3]`` RGB matrix of a hue shift by ``h`` turns: the YIQ chroma plane rotated by
        ``-2 pi h`` (the sign that moves red towards yellow for ``h > 0``, as HSV's hue)."""
        cos, sin = math.cos(2 * math.pi * h), math.sin(2 * math.pi * h)
        rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, sin], [0.0, -sin, cos]])
        return torch.linalg.inv(cls.YIQ) @ rot @ cls.YIQ


def apply_affine(x: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """uint8 clips ``[N, T, H, W, 3]`` and their :meth:`Normalize.affine` ``[N, 3, 6]`` ->
    float ``[N, 3, T, H, W]``: colour matrix, offset, clamp (``Normalize.__call__``'s result to
    float rounding; a clip without jitter is inside the bounds already)."""
    n, t, h, w, _ = x.shape
    y = x.permute(0, 4, 1, 2, 3).reshape(n, 3, t * h * w).float()  # [N, 3, THW]
    y = torch.baddbmm(affine[:, :, 3:4], affine[:, :, :3], y)
    y = torch.maximum(torch.minimum(y, affine[:, :, 5:6]), affine[:, :, 4:5])
    return y.view(n, 3, t, h, w)
