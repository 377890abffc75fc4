"""Video and audio transforms as plain callables, and the named presets ("train", "mae",
"videomae", "eval", "none").

Every transform is ``t(x, gen)`` with ``gen`` a ``torch.Generator`` (None = global RNG), so a
loader can seed it per worker. Video transforms take RGB uint8 ``[T, H, W, 3]`` frames (one
clip; the same spatial crop and flip for every frame of the clip) and the final ``Normalize``
returns float ``[C, T, H, W]``. Audio transforms act on the waveform ``[S]`` (gain, noise) or on
the normalised fbank ``[Ta, F]`` (SpecAugment, https://arxiv.org/abs/1904.08779).

Presets:
    train: random-resized crop (area 0.25-1, aspect 3/4-4/3), horizontal flip p=0.5, colour
        jitter 0.4 (p=0.8; hue jitter ``hue``, default 0: off), random grey-scale (``grey_p``,
        default 0: off), normalise; audio
        gain +-6 dB (p=0.5), white noise at 10-40 dB SNR (p=0.3), SpecAugment one 24-bin
        frequency mask and one 96-frame time mask (AST's ESC-50 sizes; AST takes
        48 / 192 on AudioSet: ``augment`` ``freq_mask`` / ``time_mask``). Masked cells are 0
        in normalised units, the dataset mean; AST masks the log-mel with 0 before its
        normalisation, which puts them near +0.47 with the AudioSet statistics.
    mae: the pretraining inputs of the masked autoencoders: the random-resized crop of
        "train" (approximating VideoMAE's multi-scale crop, https://arxiv.org/abs/2203.12602),
        no flip, no colour jitter (VideoMAE's pretraining adds neither); no audio changes
        (AudioMAE pretrains without SpecAugment, mixup or noise, https://arxiv.org/abs/2207.06405;
        the masking is the augmentation).
    videomae: "mae" with VideoMAE's own multi-scale corner crop (``MultiScaleCrop``,
        ``crop: multiscale``) in place of the random-resized crop.
    eval: resize the short side to the crop size, centre crop, normalise; no audio changes.
    none: like eval (no augmentation at all); as a training preset the loader still draws
        random clip times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRESETS: dict[str, dict] = {
    "train": {
        "crop": "random",
        "crop_scale": (0.25, 1.0),
        "crop_ratio": (3 / 4, 4 / 3),
        "flip_p": 0.5,
        "jitter": 0.4,
        "jitter_p": 0.8,
        "grey_p": 0.0,  # random grey-scale (SimCLR, CVRL: 0.2); off by default
        "hue": 0.0,  # hue jitter, a fraction of a turn (torchvision's 0-0.5); off by default
        "gain_db": 6.0,
        "gain_p": 0.5,
        "noise_snr_db": (10.0, 40.0),
        "noise_p": 0.3,
        "freq_mask": 24,
        "time_mask": 96,
    },
    "eval": {
        "crop": "center",
        "flip_p": 0.0,
        "jitter": 0.0,
        "gain_p": 0.0,
        "noise_p": 0.0,
        "freq_mask": 0,
        "time_mask": 0,
    },
}
PRESETS["mae"] = {**PRESETS["eval"], "crop": "random"}  # eval's settings, train's random crop
PRESETS["videomae"] = {**PRESETS["eval"], "crop": "multiscale"}  # VideoMAE's pretraining crop
PRESETS["none"] = dict(PRESETS["eval"])
Transform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def _uniform(gen: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _chance(gen: torch.Generator | None, p: float) -> bool:
    return p > 0 and float(torch.rand((), generator=gen)) < p


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[T, h, w, 3]`` -> uint8 ``[T, size[0], size[1], 3]`` (bilinear, antialiased)."""
    y = x.permute(0, 3, 1, 2)  # [T, 3, h, w], channels-last memory: fast uint8 kernel
    y = F.interpolate(y, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1)  # [T, H, W, 3]


class Compose:
    """Applies transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, gen)
        return x


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


class RandomGain:
    """Scales the waveform by a gain drawn uniformly in ``[-max_db, max_db]`` dB."""

    def __init__(self, max_db: float = 6.0, p: float = 0.5):
        self.max_db, self.p = max_db, p

    def __call__(self, wave: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if not _chance(gen, self.p):
            return wave
        return wave * 10.0 ** (_uniform(gen, -self.max_db, self.max_db) / 20.0)


class BackgroundNoise:
    """Adds white Gaussian noise at an SNR drawn uniformly in ``snr_db`` (dB)."""

    def __init__(self, snr_db=(10.0, 40.0), p: float = 0.3):
        self.snr_db, self.p = tuple(snr_db), p

    def __call__(self, wave: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if not _chance(gen, self.p) or wave.numel() == 0:
            return wave
        power = float(wave.pow(2).mean()) or 1e-8
        noise_power = power / 10.0 ** (_uniform(gen, *self.snr_db) / 10.0)
        return wave + torch.randn(wave.shape, generator=gen) * math.sqrt(noise_power)


class SpecAugment:
    """Zeroes ``num_masks`` random frequency bands (up to ``freq_mask`` bins) and time spans
    (up to ``time_mask`` frames) of a normalised ``[Ta, F]`` fbank (zero = dataset mean).
    Park et al., SpecAugment, https://arxiv.org/abs/1904.08779."""

    def __init__(self, freq_mask: int = 24, time_mask: int = 96, num_masks: int = 1):
        self.freq_mask, self.time_mask, self.num_masks = freq_mask, time_mask, num_masks

    def __call__(self, spec: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        spec = spec.clone()
        for dim, start, w in self.draw(spec.shape[0], spec.shape[1], gen):
            spec.narrow(dim, start, w).zero_()
        return spec

    def num_bands(self) -> int:
        """How many bands :meth:`draw` returns."""
        return self.num_masks * ((self.freq_mask > 0) + (self.time_mask > 0))

    def draw(self, frames: int, bins: int, gen: torch.Generator | None = None) -> list:
        """The bands ``(dim, start, width)`` (dim 0 = time, 1 = frequency) that ``__call__``
        zeroes in a ``[frames, bins]`` fbank, drawn from ``gen`` in the same order."""
        bands = []
        for dim, width, size in ((1, self.freq_mask, bins), (0, self.time_mask, frames)):
            for _ in range(self.num_masks if width > 0 else 0):
                w = int(torch.randint(0, min(width, size) + 1, (), generator=gen))
                start = int(torch.randint(0, size - w + 1, (), generator=gen))
                bands.append((dim, start, w))
        return bands


def preset_options(preset: str, overrides: dict | None = None) -> dict:
    """The option dict of a named preset, with ``overrides`` applied (unknown keys rejected)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown transform preset {preset!r}; choose one of {list(PRESETS)}")
    opts = {**PRESETS["train"], **PRESETS[preset]}
    for k, v in (overrides or {}).items():
        if k not in opts:
            raise ValueError(f"unknown augmentation option {k!r}; known: {sorted(opts)}")
        opts[k] = _checked_option(k, v)
    return opts


CROPS = ("random", "multiscale", "center")
_PROBABILITIES = ("flip_p", "jitter_p", "grey_p", "gain_p", "noise_p")
_RANGES = {"crop_scale": (0.0, 1.0), "crop_ratio": (0.0, math.inf), "noise_snr_db": None}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _checked_option(key: str, v):
    """An override's value, checked against what its option takes (one-line ``ValueError``);
    ranges come back as tuples."""
    bad = f"augmentation option {key} must be"
    got = f"got {v!r} ({type(v).__name__})"
    if key == "crop":
        if v not in CROPS:
            raise ValueError(f"{bad} one of {', '.join(map(repr, CROPS))}, {got}")
        return v
    if key in _RANGES:
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_number, v))):
            raise ValueError(f"{bad} a pair of numbers [low, high], {got}")
        lo, hi = float(v[0]), float(v[1])
        bounds = _RANGES[key]
        if lo > hi or (bounds and not (bounds[0] < lo and hi <= bounds[1])):
            where = f" within ({bounds[0]}, {bounds[1]}]" if bounds else ""
            raise ValueError(f"{bad} a range low <= high{where}, got {list(v)}")
        return (lo, hi)
    if key in ("freq_mask", "time_mask"):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise ValueError(f"{bad} a whole number of bins/frames >= 0, {got}")
        return v
    if not _number(v):
        raise ValueError(f"{bad} a number, {got}")
    if key in _PROBABILITIES and not 0 <= v <= 1:
        raise ValueError(f"{bad} a probability in [0, 1], got {v}")
    if key == "hue" and not 0 <= v <= 0.5:
        raise ValueError(f"{bad} in [0, 0.5] (a fraction of a turn), got {v}")
    if v < 0:
        raise ValueError(f"{bad} >= 0, got {v}")
    return v


def build_video_transform(
    preset: str, crop_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, overrides=None
) -> Compose:
    """uint8 ``[T, H, W, 3]`` clip -> float ``[C, T, crop, crop]`` for a named preset."""
    o = preset_options(preset, overrides)
    crops = {
        "random": lambda: RandomResizedCrop(crop_size, o["crop_scale"], o["crop_ratio"]),
        "multiscale": lambda: MultiScaleCrop(crop_size),
        "center": lambda: ResizeCenterCrop(crop_size),
    }
    steps: list = [crops[o["crop"]]()]
    if o["flip_p"] > 0:
        steps.append(RandomHorizontalFlip(o["flip_p"]))
    steps.append(Normalize(mean, std, o["jitter"], o["jitter_p"], o["grey_p"], o["hue"]))
    return Compose(steps)


def build_audio_transforms(preset: str, overrides=None) -> tuple[Compose, Compose]:
    """(waveform transform, fbank transform) for a named preset; either may be empty."""
    o = preset_options(preset, overrides)
    wave: list = []
    if o["gain_p"] > 0:
        wave.append(RandomGain(o["gain_db"], o["gain_p"]))
    if o["noise_p"] > 0:
        wave.append(BackgroundNoise(o["noise_snr_db"], o["noise_p"]))
    spec: list = []
    if o["freq_mask"] or o["time_mask"]:
        spec.append(SpecAugment(o["freq_mask"], o["time_mask"]))
    return Compose(wave), Compose(spec)
