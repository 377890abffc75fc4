"""Planning of the synthetic dataset: settings, per-clip nuisances, event times and splits.

Everything random is drawn here, in the parent process, from ``seed`` alone (one generator per
clip, keyed by (seed, label, clip index)), and written into the clip's json description; the
renderer (:mod:`avssl.data.synthetic_render`) only reads it. Event times follow the class rhythm
(inter-onset intervals, repeating) scaled by a per-clip tempo in [0.92, 1.08] from a per-clip
phase within one cycle, then snapped to frame times: per-clip timing carries no more than the
class does (DESIGN section 11). Splits hold out groups as UCF101 does
(Soomro et al., https://arxiv.org/abs/1212.0402).
"""

from __future__ import annotations

import math

import numpy as np

from avssl.data.synthetic_classes import TIMBRES

MAX_GROUPS = 25  # UCF101 has 25 groups per class
TEST_GROUP_FRACTION = 0.28  # UCF101 holds out 7 of 25 groups per split
TEXTURES = ("gradient", "stripes", "checker", "blobs", "grain")
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
LUMA = np.array([0.299, 0.587, 0.114])
SIZE_RANGE = (0.17, 0.27)  # object radius / short side: >= one 16-px patch wide at 64 px
NOISE_DB = (-35.0, -15.0)  # background noise relative to the notes' peak
DETUNE = 5.0  # semitones either way: pitch is a nuisance, the timbre names the class
DISTRACTOR_RATE = 1.0  # off-screen sounds per second (Poisson), other classes' timbres
DISTRACTOR_DB = (-12.0, -3.0)  # their level relative to the on-screen notes
VISUAL_NUISANCE = ("full", "plain")
# "plain" video: what the class does not fix is held constant on screen (a light grey object of
# mid size starting at the centre of a flat dark background); motion speed and phase, the flash
# and all of the audio stay as in "full". A control set, easier to see than the default one.
PLAIN_VISUAL = {
    "object_rgb": [0.85, 0.85, 0.85],
    "bg_rgb": [0.15, 0.15, 0.15],
    "bg_rgb2": [0.15, 0.15, 0.15],
    "texture": "gradient",
    "center": [0.5, 0.5],
    "size": round(sum(SIZE_RANGE) / 2, 4),
}


def validate_settings(**kw) -> dict:
    """Validated, json-serialisable generator settings."""
    s = dict(kw)
    s["size"], s["alt_size"] = list(s["size"]), list(s["alt_size"])
    s["alt_fps"] = list(s["alt_fps"])
    if not isinstance(s["num_classes"], int) or s["num_classes"] < 1:
        raise ValueError(f"synthetic num_classes must be a positive int, got {s['num_classes']}")
    if not isinstance(s["clips_per_class"], int) or s["clips_per_class"] < 2:
        raise ValueError(f"synthetic clips_per_class must be >= 2, got {s['clips_per_class']}")
    if not 0.5 <= s["min_duration"] <= s["max_duration"]:
        raise ValueError(
            f"synthetic durations need 0.5 <= min_duration <= max_duration, "
            f"got {s['min_duration']}, {s['max_duration']}"
        )
    for fps in [s["fps"], *s["alt_fps"]]:
        if not isinstance(fps, int) or not 1 <= fps <= 120:
            raise ValueError(f"synthetic frame rates must be ints in 1..120, got {fps!r}")
    for key in ("sample_rate", "alt_sample_rate"):
        if s[key] not in AAC_RATES:
            raise ValueError(f"synthetic {key} must be one of {AAC_RATES}, got {s[key]!r}")
    for key in ("size", "alt_size"):
        if len(s[key]) != 2 or any(v < 32 or v % 2 for v in s[key]):
            raise ValueError(f"synthetic {key} must be (width, height), even, >= 32: {s[key]}")
    for key in ("no_audio_fraction", "alt_fps_fraction", "alt_size_fraction"):
        if not 0.0 <= s[key] <= 1.0 / 3.0:
            raise ValueError(f"synthetic {key} must be in [0, 1/3], got {s[key]}")
    for key in ("stereo_fraction", "alt_rate_fraction"):
        if not 0.0 <= s[key] <= 1.0:
            raise ValueError(f"synthetic {key} must be in [0, 1], got {s[key]}")
    if s["visual_nuisance"] not in VISUAL_NUISANCE:
        raise ValueError(
            f"synthetic visual_nuisance must be one of {', '.join(VISUAL_NUISANCE)}, "
            f"got {s['visual_nuisance']!r}"
        )
    return s


def _count(fraction: float, n: int) -> int:
    """At least one clip for any positive fraction, so small sets still hold every variant."""
    return int(math.ceil(fraction * n)) if fraction > 0 else 0


def _variants(s: dict, n: int) -> list[dict]:
    """Per-clip format variants (audio presence, fps, size, channels, rate), drawn globally."""
    rng = np.random.default_rng([s["seed"], 7])
    order = rng.permutation(n)
    n_na, n_fps, n_size = (
        _count(s[k], n) for k in ("no_audio_fraction", "alt_fps_fraction", "alt_size_fraction")
    )
    out = [{"has_audio": True, "fps": s["fps"], "size": s["size"]} for _ in range(n)]
    for i in order[:n_na]:
        out[i]["has_audio"] = False
    for k, i in enumerate(order[n_na : n_na + n_fps]):
        out[i]["fps"] = s["alt_fps"][k % len(s["alt_fps"])]
    for i in order[n_na + n_fps : n_na + n_fps + n_size]:
        out[i]["size"] = s["alt_size"]
    audio_order = rng.permutation(n)
    stereo = set(audio_order[: _count(s["stereo_fraction"], n)].tolist())
    alt_rate = set(rng.permutation(n)[: _count(s["alt_rate_fraction"], n)].tolist())
    for i in range(n):
        out[i]["channels"] = 2 if i in stereo else 1
        out[i]["sample_rate"] = s["alt_sample_rate"] if i in alt_rate else s["sample_rate"]
    return out


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object colour and two background colours on one side of it in luminance (>= 0.25 away)."""
    obj = rng.random(3)
    lum = float(obj @ LUMA)
    room_dark, room_light = max(lum - 0.25, 0.0), max(0.75 - lum, 0.0)
    dark = rng.random() * (room_dark + room_light) < room_dark
    cols: list[np.ndarray] = []
    while len(cols) < 2:  # rejection sampling; accepts within a few draws on average
        c = rng.random(3)
        if (float(c @ LUMA) <= lum - 0.25) if dark else (float(c @ LUMA) >= lum + 0.25):
            cols.append(c)
    return obj, cols[0], cols[1]


def _nuisance(rng: np.random.Generator, rhythm: list[float], visual: str = "full") -> dict:
    """Per-clip nuisance values, independent of the class except the phase range (one cycle).

    ``visual="plain"`` replaces the on-screen ones by :data:`PLAIN_VISUAL` after drawing them
    all, so every other value (and the rest of the clip's stream) is the same as in "full"."""
    obj, bg1, bg2 = _colour_pair(rng)
    tempo = rng.uniform(0.92, 1.08)
    r4 = lambda v: round(float(v), 4)
    nz = {
        "object_rgb": [r4(v) for v in obj],
        "bg_rgb": [r4(v) for v in bg1],
        "bg_rgb2": [r4(v) for v in bg2],
        "texture": TEXTURES[int(rng.integers(len(TEXTURES)))],
        "texture_scale": r4(rng.uniform(2.0, 8.0)),
        "texture_angle": r4(rng.uniform(0.0, np.pi)),
        "center": [r4(rng.uniform(0.3, 0.7)), r4(rng.uniform(0.3, 0.7))],
        "size": r4(rng.uniform(SIZE_RANGE[0], SIZE_RANGE[1])),
        "speed": r4(np.exp(rng.uniform(np.log(0.6), np.log(1.6)))),
        "motion_phase": r4(rng.uniform(0.0, 2 * np.pi)),
        "gain_db": r4(rng.uniform(-20.0, -3.0)),
        "noise_db": r4(rng.uniform(NOISE_DB[0], NOISE_DB[1])),
        "noise_color": "pink" if rng.random() < 0.5 else "white",
        "pan": r4(rng.uniform(np.pi / 8, 3 * np.pi / 8)),
        "detune": r4(rng.uniform(-DETUNE, DETUNE)),
        "tempo": r4(tempo),
        "phase": r4(rng.uniform(0.0, sum(rhythm) * tempo)),
    }
    if visual == "plain":
        nz.update(PLAIN_VISUAL)
    return nz


def _events(rhythm: list[float], tempo: float, phase: float, num_frames: int, fps: int):
    """Event times (s): the rhythm cycle from ``phase``, snapped to frame times, < clip end."""
    times: list[float] = []
    t, k = phase, 0
    while t * fps < num_frames - 1:
        frame = int(round(t * fps))
        if not times or frame > round(times[-1] * fps):
            times.append(frame / fps)
        t += rhythm[k % len(rhythm)] * tempo
        k += 1
    return [round(v, 5) for v in times]


def _distractors(rng: np.random.Generator, timbre: str, duration: float) -> list[list]:
    """Off-screen sounds ``[time s, timbre, detune semitones, level dB]`` at Poisson times,
    never in the class timbre: heard but not shown, as in real videos."""
    others = [t for t in TIMBRES if t != timbre]
    out: list[list] = []
    t = float(rng.exponential(1.0 / DISTRACTOR_RATE))
    while t < duration - 0.05:
        out.append(
            [
                round(t, 4),
                others[int(rng.integers(len(others)))],
                round(float(rng.uniform(-DETUNE, DETUNE)), 4),
                round(float(rng.uniform(*DISTRACTOR_DB)), 4),
            ]
        )
        t += float(rng.exponential(1.0 / DISTRACTOR_RATE))
    return out


def _plan_one(s: dict, cls: dict, label: int, j: int, var: dict, groups: int) -> dict:
    """Description of clip ``j`` of class ``label``, drawn from its own (seed, label, j) stream."""
    rng = np.random.default_rng([s["seed"], label, j])
    fps, (width, height) = var["fps"], var["size"]
    num_frames = int(round(rng.uniform(s["min_duration"], s["max_duration"]) * fps))
    nz = _nuisance(rng, cls["rhythm"], s.get("visual_nuisance", "full"))
    group, index = j % groups + 1, j // groups + 1
    audio = var["has_audio"]
    return {
        "file": f"UCF-101/{cls['name']}/v_{cls['name']}_g{group:02d}_c{index:02d}.mp4",
        "class": cls["name"],
        "label": label,
        "group": group,
        "duration": round(num_frames / fps, 6),
        "fps": fps,
        "num_frames": num_frames,
        "width": width,
        "height": height,
        "has_audio": audio,
        "sample_rate": var["sample_rate"] if audio else None,
        "channels": var["channels"] if audio else 0,
        "seed": int(rng.integers(2**31)),
        "events": _events(cls["rhythm"], nz["tempo"], nz["phase"], num_frames, fps),
        "distractors": _distractors(rng, cls["timbre"], num_frames / fps),
        "nuisance": nz,
    }


def plan_clips(s: dict, classes: list[dict]) -> list[dict]:
    """Every clip's description (the meta entries), in class then clip order."""
    k_per = s["clips_per_class"]
    variants = _variants(s, len(classes) * k_per)
    groups = min(MAX_GROUPS, k_per)
    return [
        _plan_one(s, cls, label, j, variants[label * k_per + j], groups)
        for label, cls in enumerate(classes)
        for j in range(k_per)
    ]


def held_out_groups(num_groups: int) -> dict[int, list[int]]:
    """Held-out groups (1-based) of splits 1..3; 7 of 25 per split as in UCF101."""
    n_test = max(1, int(round(num_groups * TEST_GROUP_FRACTION)))
    return {
        s + 1: sorted((s * n_test + i) % num_groups + 1 for i in range(n_test)) for s in range(3)
    }


def event_times(clip: dict) -> np.ndarray:
    """Exact event times (s) of a clip: multiples of ``1 / fps`` (the meta rounds them)."""
    fps = clip["fps"]
    return np.round(np.asarray(clip["events"], dtype=np.float64) * fps) / fps
