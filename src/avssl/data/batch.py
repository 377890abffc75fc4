"""The in-memory batch contract shared by loaders, objectives and evaluators (DESIGN section 3)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

#: ``AVBatch.extra`` key set by the loader's collate: True when every sample of the batch has
#: both audio and video, known on the host before the transfer, so that a step can choose a
#: path without reading device masks (a host sync): MAViL's fusion then runs unmasked.
MODALITIES_COMPLETE = "modalities_complete"


@dataclass
class AVBatch:
    """A batch of audio-visual clips.

    Attributes:
        video: float ``[B, C, T, H, W]`` (``[B, K, C, T, H, W]`` with K clips per sample),
            normalised RGB; zeros where ``video_mask`` is False.
        audio: float ``[B, 1, Ta, F]`` (``[B, K, 1, Ta, F]`` with K clips) normalised log-mel
            fbank, time frames x mel bins; zeros where ``audio_mask`` is False.
        key: sample keys, length B.
        label: long ``[B]`` class ids (-1 when unknown), or float ``[B, C]`` multi-hot, or None.
        video_mask: bool ``[B]``, False where the sample has no video.
        audio_mask: bool ``[B]``, False where the sample has no audio.
        audio_mismatched: bool ``[B]``, True where the audio comes from another sample
            (``audio_mode="mismatched"``); None in other modes.
        clip_start: float ``[B]`` or ``[B, K]`` start time (s) of each video clip, or None.
        audio_start: float ``[B]`` or ``[B, K]`` start time (s) of each audio window, or None.
        audio_wave: float ``[B, S]`` or ``[B, K, S]`` zero-padded waveform windows, set only by
            a loader that leaves the last steps to the training device (``on_device``; ``audio``
            is then an empty ``[B, (K,) 1, 0, F]`` placeholder until
            :func:`avssl.data.batching.features_on_device` fills it and clears these three).
        audio_wave_len: long ``[B]`` or ``[B, K]`` valid samples of ``audio_wave``.
        audio_bands: long ``[B, (K,) M, 3]`` SpecAugment bands (dim 0 time / 1 frequency,
            start, width) to zero in the fbank computed from ``audio_wave``.
        video_u8: uint8 ``[B, (K,) T, H, W, 3]`` cropped, flipped clips, likewise (``video``
            is then an empty ``[B, (K,) C, T, 0, 0]`` placeholder).
        video_affine: float ``[B, (K,) 3, 6]`` colour matrix, offset and clamp bounds per
            channel that turn ``video_u8`` into normalised, colour-jittered ``video``.
        local: the samples' local views (:mod:`avssl.data.local_view`), an ``AVBatch`` with
            the same keys, labels and masks; None unless the objective asked for them.
        extra: host-side notes of the loader (``skipped``, :data:`MODALITIES_COMPLETE`, ...).
    """

    video: torch.Tensor
    audio: torch.Tensor
    key: list[str]
    label: torch.Tensor | None = None
    video_mask: torch.Tensor | None = None
    audio_mask: torch.Tensor | None = None
    audio_mismatched: torch.Tensor | None = None
    clip_start: torch.Tensor | None = None
    audio_start: torch.Tensor | None = None
    audio_wave: torch.Tensor | None = None
    audio_wave_len: torch.Tensor | None = None
    audio_bands: torch.Tensor | None = None
    video_u8: torch.Tensor | None = None
    video_affine: torch.Tensor | None = None
    local: AVBatch | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.key)

    def pin_memory(self) -> AVBatch:
        """Pins every tensor field and the ``local`` batch (DataLoader, ``pin_memory=True``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.pin_memory() if torch.is_tensor(v) or isinstance(v, AVBatch) else v
        return AVBatch(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AVBatch:
        """Moves every tensor field and the ``local`` batch to ``device``; other fields are kept
        as they are."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moves = torch.is_tensor(v) or isinstance(v, AVBatch)
            out[f.name] = v.to(device, non_blocking=non_blocking) if moves else v
        return AVBatch(**out)
