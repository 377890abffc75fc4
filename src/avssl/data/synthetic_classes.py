"""Class vocabulary of the synthetic audio-visual dataset: shapes, motions, timbres, rhythms.

A class is a tuple (shape, motion path, timbre, rhythm). Shape and motion make the class visible
in every frame; timbre and rhythm make it audible in every event. Everything else about a clip
(colours, background, position, size, speed, loudness, pitch, noise, off-screen sounds, timing
phase) is a per-clip
nuisance drawn in :mod:`avssl.data.synthetic` independently of the class, following the advice
of "Objects that Sound" (Arandjelovic & Zisserman, https://arxiv.org/abs/1712.06651) and DESIGN
section 11: the class must be the cheapest thing the two streams share.

Shapes are signed distance functions of coordinates normalised by the object radius, so one
vectorised expression renders every frame of a clip at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Array = np.ndarray

# ----------------------------------------------------------------------------------- shapes


def _circle(x: Array, y: Array) -> Array:
    return np.sqrt(x * x + y * y) - 1.0


def _square(x: Array, y: Array) -> Array:
    return np.maximum(np.abs(x), np.abs(y)) - 0.85


def _triangle(x: Array, y: Array) -> Array:
    # Equilateral, apex up (image y grows downwards).
    return np.maximum(np.abs(x) * 0.866 - y * 0.5, y) - 0.55


def _cross(x: Array, y: Array) -> Array:
    ax, ay = np.abs(x), np.abs(y)
    return np.minimum(np.maximum(ax - 1.0, ay - 0.3), np.maximum(ax - 0.3, ay - 1.0))


def _ring(x: Array, y: Array) -> Array:
    return np.abs(np.sqrt(x * x + y * y) - 0.75) - 0.25


def _diamond(x: Array, y: Array) -> Array:
    return (np.abs(x) + np.abs(y) - 1.15) * 0.707


def _star(x: Array, y: Array) -> Array:
    r = np.sqrt(x * x + y * y)
    return r - (0.62 + 0.38 * np.cos(5.0 * np.arctan2(x, -y)))


def _bar(x: Array, y: Array) -> Array:
    return np.maximum(np.abs(x) - 1.1, np.abs(y) - 0.35)


def _crescent(x: Array, y: Array) -> Array:
    return np.maximum(np.sqrt(x * x + y * y) - 1.0, 0.8 - np.sqrt((x - 0.55) ** 2 + y * y))


def _hourglass(x: Array, y: Array) -> Array:
    return np.maximum(np.abs(x) - np.abs(y) * 0.9, np.abs(y) - 0.95)


SHAPES: dict[str, Callable[[Array, Array], Array]] = {
    "Circle": _circle,
    "Square": _square,
    "Triangle": _triangle,
    "Cross": _cross,
    "Ring": _ring,
    "Diamond": _diamond,
    "Star": _star,
    "Bar": _bar,
    "Crescent": _crescent,
    "Hourglass": _hourglass,
}

# ----------------------------------------------------------------------------------- motions


def _tri(u: Array) -> Array:
    """Triangle wave in [-1, 1] with period 2 pi."""
    return 2.0 / np.pi * np.arcsin(np.sin(u))


MOTIONS: dict[str, Callable[[Array], tuple[Array, Array]]] = {
    "Swing": lambda u: (np.sin(u), np.zeros_like(u)),
    "Bob": lambda u: (np.zeros_like(u), np.sin(u)),
    "Orbit": lambda u: (np.cos(u), np.sin(u)),
    "Eight": lambda u: (np.sin(u), np.sin(2.0 * u)),
    "Slide": lambda u: (_tri(u) * 0.9, _tri(u) * 0.9),
    "Bounce": lambda u: (0.5 * _tri(0.5 * u), 1.0 - 2.0 * np.abs(np.sin(u))),
    "Zigzag": lambda u: (_tri(u), 0.6 * _tri(5.0 * u)),
    "Spiral": lambda u: (
        (0.35 + 0.65 * np.abs(np.sin(0.25 * u))) * np.cos(2.0 * u),
        (0.35 + 0.65 * np.abs(np.sin(0.25 * u))) * np.sin(2.0 * u),
    ),
    "Pendulum": lambda u: (
        np.sin(1.2 * np.sin(u)) / np.sin(1.2),
        1.0 - 2.0 * (1.0 - np.cos(1.2 * np.sin(u))) / (1.0 - np.cos(1.2)),
    ),
    "Hover": lambda u: (0.25 * np.sin(3.0 * u), 0.25 * np.cos(2.0 * u)),
}

# ----------------------------------------------------------------------------------- timbres
# name -> (base frequency Hz, decay time constant s). Waveforms are built in synthetic_render.

TIMBRES: dict[str, tuple[float, float]] = {
    "sine": (262.0, 0.12),
    "square": (196.0, 0.08),
    "saw": (147.0, 0.15),
    "hihat": (6000.0, 0.035),
    "kick": (55.0, 0.15),
    "bell": (880.0, 0.25),
    "pluck": (440.0, 0.2),
    "snare": (185.0, 0.07),
    "chirp": (500.0, 0.12),
    "organ": (330.0, 0.3),
}


def _harmonics(t: Array, f0: float, sr: int, ks: list[int], decay: float = 0.0) -> Array:
    """Sum of harmonics ``k`` with amplitude 1/k (decaying as exp(-decay k t)), band-limited."""
    out = np.zeros_like(t)
    for k in ks:
        if k * f0 < 0.45 * sr:
            out += np.exp(-decay * k * t) * np.sin(2 * np.pi * k * f0 * t) / k
    return out


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> Array:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    return np.fft.irfft(spec * ((freqs >= lo) & (freqs <= hi)), n=n)


def timbre_wave(name: str, t: Array, f0: float, sr: int, rng: np.random.Generator) -> Array:
    """Raw waveform of timbre ``name`` at times ``t`` (s), before the note envelope."""
    two_pi = 2 * np.pi
    if name == "sine":
        return np.sin(two_pi * f0 * t) + 0.3 * np.sin(two_pi * 2 * f0 * t)
    if name == "square":
        return _harmonics(t, f0, sr, list(range(1, 40, 2)))
    if name == "saw":
        return _harmonics(t, f0, sr, list(range(1, 40)))
    if name == "hihat":
        return _band_noise(rng, t.size, sr, min(0.7 * f0, 0.3 * sr), 0.45 * sr)
    if name == "kick":  # pitch falls from 3 f0 to f0
        return np.sin(two_pi * (f0 * t + 2.0 * f0 * 0.03 * (1.0 - np.exp(-t / 0.03))))
    if name == "bell":  # FM, modulation index decaying
        mod = 2.0 * np.exp(-t / 0.1) * np.sin(two_pi * 1.4 * f0 * t)
        return np.sin(two_pi * f0 * t + mod)
    if name == "pluck":
        return _harmonics(t, f0, sr, list(range(1, 9)), decay=8.0)
    if name == "snare":
        return 3.0 * _band_noise(rng, t.size, sr, 1000.0, 3000.0) + 0.5 * np.sin(two_pi * f0 * t)
    if name == "chirp":  # frequency f0 -> 3 f0 over 100 ms
        return np.sin(two_pi * f0 * (t + np.cumsum(2.0 * np.minimum(t / 0.1, 1.0)) / sr))
    if name == "organ":
        return (
            np.sin(two_pi * f0 * t)
            + 0.7 * np.sin(two_pi * 2 * f0 * t)
            + 0.5 * np.sin(two_pi * 4 * f0 * t)
        )
    raise ValueError(f"unknown synthetic timbre {name!r}")


# ----------------------------------------------------------------------------------- rhythms
# Inter-onset intervals (s) of one cycle at tempo 1; the cycle repeats. Minimum 0.2 s so that
# events stay apart by several frames at 15 fps and notes are gated before the next onset.

RHYTHMS: list[list[float]] = [
    [0.5],
    [0.3],
    [0.2, 0.6],
    [0.25, 0.25, 0.5],
    [0.7, 0.2, 0.2],
    [0.4, 0.2],
    [0.2, 0.2, 0.2, 0.6],
    [0.9],
    [0.3, 0.3, 0.6],
    [0.6, 0.3],
]

MAX_CLASSES = 100


def class_table(num_classes: int) -> list[dict]:
    """The first ``num_classes`` classes, each a json-serialisable dict.

    Class ``k = 10 m + a`` takes shape ``a``, motion ``(a + m) % 10``, timbre ``(a + 2m) % 10``
    and rhythm ``(a + 3m) % 10``: the first ten classes differ in every attribute, later ones
    in at least two, and every (shape, motion) pair is unique, which names the class.

    Args:
        num_classes: 1..100.

    Returns:
        Dicts with keys name, shape, motion, timbre, rhythm (list of inter-onset seconds).
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"synthetic num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    shapes, motions, timbres = list(SHAPES), list(MOTIONS), list(TIMBRES)
    table = []
    for k in range(num_classes):
        m, a = divmod(k, 10)
        shape, motion = shapes[a], motions[(a + m) % 10]
        table.append(
            {
                "name": f"{shape}{motion}",
                "shape": shape,
                "motion": motion,
                "timbre": timbres[(a + 2 * m) % 10],
                "rhythm": RHYTHMS[(a + 3 * m) % 10],
            }
        )
    return table
