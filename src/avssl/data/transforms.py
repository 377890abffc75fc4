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

The video transforms live in :mod:`avssl.data.transforms_video` (re-exported here); the audio
transforms, ``Compose``, the presets and their option checks live here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from avssl.data.transforms_video import (  # noqa: F401  (re-exported: loader and tests use them)
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiScaleCrop,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ResizeCenterCrop,
    _chance,
    _resize,
    _uniform,
    apply_affine,
)

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


class Compose:
    """Applies transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, gen)
        return x


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
