"""The preprocessing stored in an encoder bundle, and ``avssl.embed`` which applies it.

A bundle's ``preprocessing`` has the layout of ``AVDataModule.preprocessing()`` (what the
checkpoint records in ``checkpoint["avssl"]["data"]``, and what ``make_eval_loader`` takes), so
evaluators feed a bundle exactly as the loader fed training::

    {"num_frames": T, "frame_stride": int | None, "target_fps": float | None, "crop_size": S,
     "video_mean": [3], "video_std": [3], "fbank": FbankConfig fields (incl. mean/std/norm),
     "assumed": [settings the checkpoint did not record], "eval_transform": description}

``embed`` decodes a raw file with the loader's own evaluation path (``SampleProcessor`` with the
"eval" preset): ``num_clips`` uniformly spaced clips, short side resized to the crop size, centre
crop, ``(x / 255 - mean) / std``; one fbank window centred on each clip (uniformly spaced when the
file has no video), normalised with the bundle's stats. Nothing here imports Lightning.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from avssl.cli import UserError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# AVDataModule's defaults, used (and listed in "assumed") when a checkpoint lacks a setting
VIDEO_DEFAULTS: dict[str, Any] = {
    "num_frames": 8,
    "frame_stride": None,
    "target_fps": None,
    "crop_size": 112,
    "video_mean": IMAGENET_MEAN,
    "video_std": IMAGENET_STD,
}
EVAL_TRANSFORM = (
    "video: num_clips uniformly spaced clips, short side resized to crop_size (bilinear, "
    "antialiased), centre crop, RGB (x / 255 - video_mean) / video_std -> [B, 3, T, S, S]; "
    "audio: mono 16 kHz, kaldi log-mel fbank window of fbank.target_frames centred on each clip, "
    "normalised with fbank.mean/std/norm -> [B, 1, Ta, F]"
)


def preprocessing_from_data(data: dict, modules: dict, src: Path) -> dict:
    """Bundle ``preprocessing`` from a checkpoint's recorded data settings.

    Settings the checkpoint does not record are filled with the loader's defaults, listed in
    ``"assumed"`` and printed, so a missing setting is never silent.

    Args:
        data: ``checkpoint["avssl"]["data"]`` (empty when trained without the DataModule).
        modules: exported encoders by modality (for the message only).
        src: checkpoint path, for messages.
    """
    from avssl.data.fbank import FbankConfig

    prep = dict(data)
    assumed = []
    for key, default in VIDEO_DEFAULTS.items():
        if key not in prep:
            assumed.append(key)
            prep[key] = default
    recorded_fb = dict(data.get("fbank") or {})
    names = [f.name for f in fields(FbankConfig)]
    assumed += [f"fbank.{n}" for n in names if n not in recorded_fb]
    try:
        fbank = FbankConfig(**{k: v for k, v in recorded_fb.items() if k in names})
    except (TypeError, ValueError) as err:
        raise UserError(f"{src}: recorded fbank settings are invalid ({err})") from None
    prep["fbank"] = fbank.to_dict()
    prep["assumed"] = assumed
    prep["eval_transform"] = EVAL_TRANSFORM
    if assumed:
        which = "/".join(sorted(modules))
        print(f"[export] {src}: checkpoint does not record {assumed}; using loader defaults "
              f"for the {which} preprocessing")  # fmt: skip
    return prep


def _processor(prep: dict, num_clips: int):
    """The loader's evaluation SampleProcessor for a bundle's preprocessing."""
    from avssl.data.sampling import build_processor

    return build_processor(prep, "eval", num_clips, "aligned", train=False)


def load_clips(media_file: str | Path, prep: dict, num_clips: int = 1, want=("audio", "video")):
    """Decodes a raw media file into encoder inputs with a bundle's preprocessing.

    Args:
        media_file: any file PyAV reads (mp4, avi, mkv, wav, flac, ...).
        prep: the bundle's ``preprocessing``.
        num_clips: K clips (and audio windows), uniformly spaced.
        want: modalities to decode.

    Returns:
        ``{"video": float [K, 3, T, S, S] or None, "audio": float [K, 1, Ta, F] or None}``;
        None where the file lacks that stream or it is not wanted.
    """
    from avssl.data.decode import MediaError, open_media

    path = Path(media_file).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such media file")
    if num_clips < 1:
        raise UserError(f"num_clips must be >= 1, got {num_clips}")
    try:
        with open_media(path) as container:
            has_video, has_audio = bool(container.streams.video), bool(container.streams.audio)
        if not (has_video or has_audio):
            raise UserError(f"{path}: has neither a video nor an audio stream")
        sample: dict[str, Any] = {"__key__": path.stem}
        sample["json"] = json.dumps(
            {"id": path.stem, "has_video": has_video, "has_audio": has_audio}
        )
        if has_video and "video" in want:
            sample["mp4"] = path
        if has_audio and "audio" in want:
            sample["flac"] = path
        item = _processor(prep, num_clips)(sample, torch.Generator().manual_seed(0))
    except MediaError as err:
        reason = str(err).removeprefix(f"{path}: ")  # the path once, at the start
        raise UserError(f"{path}: cannot decode ({reason})") from None
    return {"video": item["video"], "audio": item["audio"]}


def embed(bundle: Any, media_file: str | Path, num_clips: int = 1, space: str = "backbone") -> dict:
    """Embeds a raw video or audio file with the bundle's encoders and preprocessing.

    Args:
        bundle: an ``EncoderBundle`` (``avssl.load_encoder``).
        media_file: video or audio file.
        num_clips: K clips averaged into one embedding per modality.
        space: "backbone" (the encoders' clip embeddings, ``[D]``) or "shared" (each clip
            through the bundle's projection heads into the audio-video space its objective
            aligned, ``[P]``; for cross-modal search; needs a bundle with heads).

    Returns:
        ``{"audio": float [D_a] or None, "video": float [D_v] or None}`` (on CPU). A modality
        is None when the bundle has no encoder for it or the file has no such stream (e.g. a
        video without an audio track gives ``audio=None``, never an embedding of silence).
    """
    if space not in ("backbone", "shared"):
        raise UserError(f"space must be 'backbone' or 'shared', got {space!r}")
    if space == "shared" and bundle.heads is None:
        raise bundle.no_heads()
    want = tuple(m for m, enc in bundle.encoders().items() if enc is not None)
    clips = load_clips(media_file, bundle.preprocessing, num_clips, want)
    out: dict[str, torch.Tensor | None] = {"audio": None, "video": None}
    for modality in want:
        x = clips[modality]
        if x is None:
            continue
        enc = bundle.encoders()[modality]
        param = next(enc.parameters())
        with torch.inference_mode():
            feats = enc(x.to(param.device, param.dtype))  # [K, D]
            if space == "shared":
                feats = bundle.project(modality, feats)  # [K, P]
        out[modality] = feats.float().mean(dim=0).cpu()  # [D] or [P]
    return out
