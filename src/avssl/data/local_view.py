"""A second, *local* view of every training clip, made by the loader from the same decoded
frames and audio as the clip (the *global* view).

XKD (Sarkar & Etemad 2022, https://arxiv.org/abs/2211.13929; its public Kinetics config) shows
its teachers a local view of each clip: a contiguous quarter of the clip's frames with its own
random-resized crop of the frame (area 0.08-0.4), flip, colour jitter, grey-scale and blur, and
a quarter of its audio with its own volume jitter. An objective asks for one with a
:class:`LocalViewSpec` (``AVObjective.local_view_spec``; ``avssl pretrain`` passes it to
``AVDataModule.request_local_view`` before training); training and validation batches then
carry it as
``AVBatch.local``, an ``AVBatch`` of the same samples (same masks, keys and labels) with
``[B, C, frames, size, size]`` clips and ``[B, 1, audio_frames, F]`` fbanks.

Here the frame window is drawn uniformly inside the clip's frames and the audio window
uniformly inside the clip's audio window (cut to the recording); the video transform is the
loader's (:func:`avssl.data.transforms.build_video_transform` with preset ``train`` and the
spec's options), so the crop, flip, colour jitter and grey-scale are drawn per local view, and
with ``features_on: device`` the colour steps run on the device as for the global view. The
audio takes the spec's volume jitter on the waveform (``gain_db``) and no noise or
SpecAugment. What the spec does not hold (XKD's blur, its audio's random resize crop) the
objective applies on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import torch

from avssl.data.fbank import FbankConfig, compute_fbank
from avssl.data.transforms import (
    Normalize,
    build_audio_transforms,
    build_video_transform,
    preset_options,
)

#: what the local view never takes: background noise and SpecAugment (XKD's local audio has
#: neither; the spec's ``augment`` may not set them)
NO_NOISE = {"noise_p": 0.0, "freq_mask": 0, "time_mask": 0}


@dataclass(frozen=True)
class LocalViewSpec:
    """What the local view of each training clip is.

    Attributes:
        frames: video frames, a contiguous window of the clip's frames (<= the clip's).
        size: side of the square crop in pixels (the crop is of the whole decoded frame).
        audio_frames: fbank frames, a window of the clip's audio window (<= its frames).
        augment: options of the ``train`` transform preset for the local view (crop range,
            flip, colour jitter, grey-scale, volume jitter ``gain_db`` / ``gain_p``; see
            ``avssl.data.transforms.PRESETS``); background noise and SpecAugment stay off.
    """

    frames: int
    size: int
    audio_frames: int
    augment: dict = field(default_factory=dict)

    def check(self, num_frames: int, audio_frames: int) -> None:
        """One-line ``ValueError`` for a view that the training clips cannot give."""
        for name, v in (("frames", self.frames), ("size", self.size),
                        ("audio_frames", self.audio_frames)):  # fmt: skip
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"local view {name} must be a whole number >= 1, got {v!r}")
        if self.frames > num_frames or self.audio_frames > audio_frames:
            raise ValueError(
                f"a local view of {self.frames} frames and {self.audio_frames} fbank frames "
                f"does not fit in clips of {num_frames} frames and {audio_frames} fbank frames"
            )
        spec_aug = {k: self.augment[k] for k in NO_NOISE if self.augment.get(k)}
        if spec_aug:
            raise ValueError(f"the local view takes no noise or SpecAugment, got {spec_aug}")
        preset_options("train", self.options())  # unknown names and bad values fail here

    def options(self) -> dict:
        """The ``train`` preset overrides of the local view (noise and SpecAugment off)."""
        return {**self.augment, **NO_NOISE}

    def describe(self) -> str:
        """One line for the run's log: sizes and the transform options."""
        opts = ", ".join(f"{k} {v}" for k, v in sorted(self.augment.items()))
        sizes = f"{self.frames} frames at {self.size} px, {self.audio_frames} fbank frames"
        return f"{sizes} ({opts})" if opts else sizes


class LocalViews:
    """Makes the local views of one sample's clips in the loader's workers.

    Its ``k``, ``spec``, ``crop_size``, ``fbank``, ``window``, ``num_bands``, ``modalities``,
    ``on_device`` and ``local`` read like a ``SampleProcessor``'s, so that
    :func:`avssl.data.batching.collate` stacks local views as it stacks clips.
    """

    def __init__(
        self,
        spec: LocalViewSpec,
        fbank: FbankConfig,
        mean,
        std,
        k: int,
        modalities: tuple[str, ...],
        on_device: bool,
    ) -> None:
        self.view = spec
        self.video_tf = build_video_transform("train", spec.size, mean, std, spec.options())
        self.wave_tf, _ = build_audio_transforms("train", spec.options())
        self.fbank = replace(fbank, target_frames=spec.audio_frames)
        self.window = self.fbank.samples_for_frames(spec.audio_frames)
        self.spec = SimpleNamespace(num_frames=spec.frames)
        self.crop_size, self.k, self.modalities = spec.size, k, modalities
        self.on_device, self.num_bands, self.local = on_device, 0, None

    def video(self, clips: list[torch.Tensor], times: list[list[float]], gen: torch.Generator):
        """``K`` uint8 ``[T, H, W, 3]`` clips and their frame times -> the local clips
        (``[K, C, frames, size, size]``, or with ``on_device`` uint8 crops ``[K, frames, size,
        size, 3]`` and colour maps ``[K, 3, 6]``) and their start times."""
        out, maps, starts = [], [], []
        geometry, colour = self.video_tf.transforms[:-1], self.video_tf.transforms[-1]
        assert isinstance(colour, Normalize)  # build_video_transform ends with it
        for clip, clip_times in zip(clips, times):
            first = int(torch.randint(0, len(clip) - self.view.frames + 1, (), generator=gen))
            x = clip[first : first + self.view.frames]  # [frames, H, W, 3]
            starts.append(clip_times[first])
            if self.on_device:
                for step in geometry:
                    x = step(x, gen)
                out.append(x)
                maps.append(colour.affine(x, gen))
            else:
                out.append(self.video_tf(x, gen))
        if self.on_device:
            return (torch.stack(out), torch.stack(maps)), starts
        return torch.stack(out), starts

    def audio(self, wave, starts: list[int], window: int, gen: torch.Generator):
        """The local audio of the windows at sample ``starts`` (``window`` samples each) of
        ``wave``: ``[K, 1, audio_frames, F]`` fbanks, or with ``on_device`` the zero-padded
        waveforms ``[K, S]``, lengths ``[K]`` and (empty) SpecAugment bands; and start times."""
        sr, out, seconds = self.fbank.sample_rate, [], []
        for a in starts:
            end = min(int(a) + window, len(wave))  # the global window, cut to the recording
            last = max(int(a), end - self.window)
            b = int(torch.randint(int(a), last + 1, (), generator=gen))
            out.append(self.wave_tf(wave[b : b + self.window], gen))
            seconds.append(b / sr)
        if not self.on_device:
            specs = [compute_fbank(w, self.fbank) for w in out]
            return torch.stack(specs).unsqueeze(1), seconds  # [K, 1, Ta', F]
        waves, lens = torch.zeros(len(out), self.window), torch.zeros(len(out), dtype=torch.long)
        for i, w in enumerate(out):
            waves[i, : len(w)], lens[i] = w, len(w)
        return (waves, lens, torch.zeros(len(out), 0, 3, dtype=torch.long)), seconds


def local_items(items: list[dict]) -> list[dict]:
    """The processed samples' local views, shaped as processed samples (for ``collate``)."""
    return [
        {
            "key": it["key"],
            "label": it["label"],
            "video": it["local_video"],
            "audio": it["local_audio"],
            "clip_start": it["local_clip_start"],
            "audio_start": it["local_audio_start"],
        }
        for it in items
    ]
