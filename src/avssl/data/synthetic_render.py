"""Rendering and encoding of one synthetic clip from its json description.

The description (one entry of ``synthetic_meta.json["clips"]``) holds everything: the class,
the event times, the nuisance values and a seed for the random textures and noise, so a clip can
be rendered again from the meta file alone. Video frames are drawn with vectorised signed
distance functions (:mod:`avssl.data.synthetic_classes`); audio is a note template added at every
event sample. Both are encoded with PyAV: H.264 (libx264, yuv420p) and AAC, in MP4.

Synchronisation: event times are multiples of ``1 / fps``; at an event frame the object flashes
(its colour moves towards white or black) and grows by 30 %, and the note starts at sample
``round(t * sample_rate)`` with a 2 ms attack, so the audio onset and the visual event coincide.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

from avssl.data.synthetic_classes import MOTIONS, SHAPES, TIMBRES, timbre_wave
from avssl.data.synthetic_plan import event_times

MOTION_HZ = 0.45  # motion cycles per second at speed 1
FLASH_TAU_S = 0.05  # decay of the visual flash after an event
FLASH_GROWTH = 0.3  # relative radius increase at the flash peak
FLASH_MIX = 0.85  # how far the colour moves towards the flash colour
CHUNK_FRAMES = 48  # frames rendered at once (bounds memory to ~10 MB at 128x128)
AUDIO_FRAME = 1024  # AAC frame size
DISTRACTOR_S = 0.25  # length of an off-screen sound


def flash_envelope(times: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Visual flash strength in [0, 1] at ``times`` (s): 1 at an event, decaying after it."""
    if len(events) == 0:
        return np.zeros_like(times)
    dt = times[:, None] - events[None, :]  # [T, E]
    env = np.where(dt >= -1e-6, np.exp(-np.clip(dt, 0.0, None) / FLASH_TAU_S), 0.0)
    return env.max(axis=1)


def object_track(clip: dict, cls: dict, times: np.ndarray) -> tuple[np.ndarray, ...]:
    """Object centre x, y and radius (pixels) and flash strength at ``times`` (s)."""
    nz, w, h = clip["nuisance"], clip["width"], clip["height"]
    radius = nz["size"] * min(w, h)
    cx0, cy0 = nz["center"][0] * w, nz["center"][1] * h
    room = radius * (1.0 + FLASH_GROWTH) + 1.0
    ax = max(0.0, min(cx0, w - cx0) - room)
    ay = max(0.0, min(cy0, h - cy0) - room)
    u = 2.0 * np.pi * MOTION_HZ * nz["speed"] * times + nz["motion_phase"]
    px, py = MOTIONS[cls["motion"]](u)
    flash = flash_envelope(times, event_times(clip))
    return cx0 + ax * px, cy0 + ay * py, radius * (1.0 + FLASH_GROWTH * flash), flash


def render_background(clip: dict, rng: np.random.Generator) -> np.ndarray:
    """Static textured background, float32 ``[H, W, 3]`` in [0, 1]."""
    nz, w, h = clip["nuisance"], clip["width"], clip["height"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h)
    ang, scale = nz["texture_angle"], nz["texture_scale"]
    along = xx * np.cos(ang) + yy * np.sin(ang)
    kind = nz["texture"]
    if kind == "stripes":
        m = 0.5 + 0.5 * np.sin(2 * np.pi * scale * along)
    elif kind == "checker":
        across = -xx * np.sin(ang) + yy * np.cos(ang)
        m = ((np.floor(scale * along) + np.floor(scale * across)) % 2).astype(np.float32)
    elif kind == "blobs":
        g = max(2, int(round(scale)))
        coarse = rng.random((g + 1, g + 1)).astype(np.float32)
        gy, gx = yy * g, xx * g  # bilinear upsampling of the coarse grid
        iy, ix = np.minimum(gy.astype(int), g - 1), np.minimum(gx.astype(int), g - 1)
        fy, fx = gy - iy, gx - ix
        top = coarse[iy, ix] * (1 - fx) + coarse[iy, ix + 1] * fx
        bot = coarse[iy + 1, ix] * (1 - fx) + coarse[iy + 1, ix + 1] * fx
        m = top * (1 - fy) + bot * fy
    elif kind == "grain":
        m = rng.random((h, w)).astype(np.float32)
    else:  # "gradient"
        m = along / max(float(along.max()), 1e-6)
    c1 = np.asarray(nz["bg_rgb"], np.float32)
    c2 = np.asarray(nz["bg_rgb2"], np.float32)
    return c1 + (c2 - c1) * m[..., None]


def render_frames(clip: dict, cls: dict, bg: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Frames ``start..stop-1`` as uint8 ``[T, H, W, 3]``.

    The shape is evaluated only in a square box of side B around the object in each frame.
    """
    h, w = bg.shape[:2]
    times = np.arange(start, stop, dtype=np.float64) / clip["fps"]
    cx, cy, rad, flash = object_track(clip, cls, times)
    obj = np.asarray(clip["nuisance"]["object_rgb"], np.float32)
    lum = float(obj @ np.array([0.299, 0.587, 0.114], np.float32))
    target = np.zeros(3, np.float32) if lum > 0.5 else np.ones(3, np.float32)
    colour = obj + (target - obj) * (FLASH_MIX * flash.astype(np.float32))[:, None]  # [T, 3]
    side = min(h, w, 2 * int(np.ceil(1.25 * rad.max())) + 4)
    x0 = np.clip(np.floor(cx).astype(int) - side // 2, 0, w - side)  # [T] box corners
    y0 = np.clip(np.floor(cy).astype(int) - side // 2, 0, h - side)
    rows = y0[:, None] + np.arange(side)  # [T, B]
    cols = x0[:, None] + np.arange(side)
    r = rad.astype(np.float32)[:, None, None]
    x = (cols[:, None, :] - cx[:, None, None]).astype(np.float32) / r  # [T, 1, B]
    y = (rows[:, :, None] - cy[:, None, None]).astype(np.float32) / r  # [T, B, 1]
    sdf = SHAPES[cls["shape"]](x, y)  # [T, B, B] in radius units
    alpha = np.clip(0.5 - sdf * r, 0.0, 1.0)[..., None]  # [T, B, B, 1] anti-aliased coverage
    patch = bg[rows[:, :, None], cols[:, None, :]]  # [T, B, B, 3]
    patch = patch + (colour[:, None, None, :] - patch) * alpha
    patch = (np.clip(patch, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    bg8 = (np.clip(bg, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    frames = np.repeat(bg8[None], len(times), axis=0)  # [T, H, W, 3]
    for t in range(len(times)):
        frames[t, y0[t] : y0[t] + side, x0[t] : x0[t] + side] = patch[t]
    return frames


def note_template(
    timbre: str, f0: float, sr: int, length: int, rng: np.random.Generator
) -> np.ndarray:
    """One note of ``timbre``: float32 ``[length]``, peak 1, 2 ms attack, exponential decay."""
    t = np.arange(length, dtype=np.float64) / sr
    env = np.minimum(t / 0.002, 1.0) * np.exp(-t / TIMBRES[timbre][1])
    fade = min(length, int(0.005 * sr))  # 5 ms fade-out at the gate
    env[length - fade :] *= np.linspace(1.0, 0.0, fade)
    note = timbre_wave(timbre, t, f0, sr, rng) * env
    return (note / max(float(np.abs(note).max()), 1e-9)).astype(np.float32)


def render_audio(clip: dict, cls: dict, rng: np.random.Generator) -> np.ndarray:
    """The clip's soundtrack, float32 ``[C, S]`` in [-1, 1]."""
    nz, sr = clip["nuisance"], clip["sample_rate"]
    num = int(round(clip["duration"] * sr))
    rhythm = np.asarray(cls["rhythm"]) * nz["tempo"]
    events = event_times(clip)
    gaps = np.diff(events)
    min_gap = float(gaps.min()) if len(gaps) else float(rhythm.min())
    gate = max(int(0.8 * min(min_gap, float(rhythm.min())) * sr), 16)  # silent before each onset
    f0 = TIMBRES[cls["timbre"]][0] * 2.0 ** (nz["detune"] / 12.0)
    note = note_template(cls["timbre"], f0, sr, gate, rng)
    dry = np.zeros(num + gate, np.float32)
    for s in np.round(events * sr).astype(int):
        dry[s : s + gate] += note
    off_rng = np.random.default_rng([clip["seed"], 2])  # own stream: noise is the same without
    for t, timbre, detune, level_db in clip.get("distractors", []):
        s = int(round(t * sr))
        f0_d = TIMBRES[timbre][0] * 2.0 ** (detune / 12.0)
        length = min(int(DISTRACTOR_S * sr), num + gate - s)
        dry[s : s + length] += 10.0 ** (level_db / 20.0) * note_template(
            timbre, f0_d, sr, length, off_rng
        )
    peak = 10.0 ** (nz["gain_db"] / 20.0)
    dry = dry[:num] * peak
    pan = nz["pan"]
    gains = [1.0] if clip["channels"] == 1 else [np.cos(pan) * 1.414, np.sin(pan) * 1.414]
    noise = rng.standard_normal((len(gains), num)).astype(np.float32)
    if nz["noise_color"] == "pink":  # 1/f power: scale the spectrum by 1/sqrt(f)
        spec = np.fft.rfft(noise, axis=1)
        spec[:, 1:] /= np.sqrt(np.arange(1, spec.shape[1]))
        noise = np.fft.irfft(spec, n=num, axis=1).astype(np.float32)
        noise /= max(float(noise.std()), 1e-9)
    noise *= peak * 10.0 ** (nz["noise_db"] / 20.0)
    out = np.stack([dry * g for g in gains]) + noise  # [C, S]
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _encode_audio(container, stream, wave: np.ndarray, start: int, stop: int) -> None:
    """Encode samples ``start..stop-1`` of ``wave`` [C, S] in AAC-sized frames."""
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    for s in range(start, min(stop, wave.shape[1]), AUDIO_FRAME):
        chunk = np.ascontiguousarray(wave[:, s : s + AUDIO_FRAME])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = stream.codec_context.sample_rate, s
        container.mux(stream.encode(frame))


def _encode(container, clip: dict, cls: dict) -> None:
    """Add the streams, then encode video chunk by chunk with the audio interleaved."""
    fps, sr = clip["fps"], clip["sample_rate"]
    gop = str(max(1, int(round(fps))))
    opts = {"preset": "veryfast", "crf": "20", "threads": "1", "g": gop, "bf": "0"}
    video = container.add_stream("libx264", rate=fps, options=opts)
    video.width, video.height, video.pix_fmt = clip["width"], clip["height"], "yuv420p"
    audio, wave = None, np.zeros((1, 0), np.float32)
    if clip["has_audio"]:
        layout = "mono" if clip["channels"] == 1 else "stereo"
        audio = container.add_stream("aac", rate=sr, layout=layout, options={"aac_coder": "fast"})
        audio.bit_rate = 64000 * clip["channels"]
        wave = render_audio(clip, cls, np.random.default_rng([clip["seed"], 1]))
    bg = render_background(clip, np.random.default_rng(clip["seed"]))
    done = 0  # audio samples encoded so far (a multiple of AUDIO_FRAME)
    for start in range(0, clip["num_frames"], CHUNK_FRAMES):
        stop = min(start + CHUNK_FRAMES, clip["num_frames"])
        for i, img in enumerate(render_frames(clip, cls, bg, start, stop)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = start + i
            container.mux(video.encode(frame))
        if audio is not None:
            upto = -(-int(stop * sr / fps) // AUDIO_FRAME) * AUDIO_FRAME
            _encode_audio(container, audio, wave, done, upto)
            done = upto
    container.mux(video.encode(None))
    if audio is not None:
        _encode_audio(container, audio, wave, done, wave.shape[1])
        container.mux(audio.encode(None))


def write_clip(root: str, clip: dict, cls: dict) -> str:
    """Render and encode one clip to ``root/clip["file"]`` (atomically); returns the path."""
    path = Path(root) / clip["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        _encode(container, clip, cls)
    os.replace(tmp, path)
    return str(path)
