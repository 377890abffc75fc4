"""Audio-video alignment on synthetic clips whose sound events happen at known frames.

The generator records every event (the object flashes and a note starts at the same instant)
in the sample json under "synthetic". Whenever a decoded clip holds an event frame, the aligned
audio window must hold the note onset, at the right fbank frame.
"""

from __future__ import annotations

import json

import pytest
import torch

from avssl.data.datamodule import AVDataModule
from avssl.data.shards import ShardReader, resolve, split_table
from avssl.data.synthetic import event_frames

FRAMES, AUDIO_FRAMES, CLIPS = 2, 30, 12


def _metas(folder) -> dict:
    reader = ShardReader()
    return {
        k: json.loads(reader.read(s, k)["json"])
        for s, k in split_table(resolve(folder), None).ordered()
    }


def _onset_checks(batches, metas) -> list[tuple[int, int]]:
    """(detected onset frame, expected onset frame) for every clip that shows an event."""
    out = []
    for b in batches:
        for i, key in enumerate(b.key):
            meta = metas[key]
            if not b.audio_mask[i]:
                continue
            fps, events = meta["fps"], event_frames(meta["synthetic"], meta["fps"])
            for k in range(b.clip_start.shape[1]):
                first = round(float(b.clip_start[i, k]) * fps)
                shown = [f for f in events if first <= f < first + FRAMES]
                if not shown:
                    continue
                onset = shown[0] / fps - float(b.audio_start[i, k])  # s into the window
                energy = b.audio[i, k, 0].mean(-1)  # [Ta] mean raw log-mel per frame
                jump = torch.diff(energy)  # jump[j]: energy rise into fbank frame j + 1
                expected = _fbank_frame(onset)
                later = [f for f in events if f > shown[0]]
                if later:  # look before the next event's note, which may start louder
                    nxt = _fbank_frame(later[0] / fps - float(b.audio_start[i, k]))
                    jump = jump[: max(1, nxt - 3)]
                detected = int(jump.argmax()) + 1 if float(jump.max()) > 1.0 else -100
                out.append((detected, expected))
    return out


def _fbank_frame(t: float) -> int:
    """The first 25 ms fbank frame (10 ms hop) that reaches time ``t`` (s into the window)."""
    return int((t - 0.025) // 0.01) + 1


@pytest.mark.parametrize("path", ["train", "train-keyframes", "eval"])
def test_aligned_audio_holds_the_event_shown_in_the_frames(synth, path):
    dm = AVDataModule(
        str(synth),
        train_split=None,
        val_split="all",
        batch_size=4,
        num_workers=0,
        num_frames=FRAMES,
        frame_stride=1,
        crop_size=16,
        audio_frames=AUDIO_FRAMES,
        fbank_norm="none",
        clips_per_video=CLIPS,
        val_clips=CLIPS,
        train_preset="none",
        batches_per_epoch=3,
        keyframe_starts=path == "train-keyframes",
    )
    batches = list(dm.train_dataloader() if path != "eval" else dm.val_dataloader())
    checks = _onset_checks(batches, _metas(synth))
    assert len(checks) >= 10
    misses = [(d, e) for d, e in checks if abs(d - e) > 2]
    assert not misses, f"{len(misses)} of {len(checks)} event clips without the onset: {misses}"


def test_random_audio_misses_the_event(synth):
    dm = AVDataModule(
        str(synth),
        train_split=None,
        batch_size=4,
        num_workers=0,
        num_frames=FRAMES,
        frame_stride=1,
        crop_size=16,
        audio_frames=AUDIO_FRAMES,
        fbank_norm="none",
        clips_per_video=CLIPS,
        train_preset="none",
        audio_mode="random",
        batches_per_epoch=3,
    )
    checks = _onset_checks(list(dm.train_dataloader()), _metas(synth))
    misses = [(d, e) for d, e in checks if abs(d - e) > 2]
    assert len(checks) >= 10 and len(misses) > len(checks) // 2
