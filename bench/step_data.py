"""``bench/step.py --data``: the fast step fed by the real loader (``AVDataModule``).

The loader's modules (PyAV, webdataset) are imported only when the first batch is asked for, so
that a run without ``--data`` does not load them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from step_models import Shape


def data_batches(args: argparse.Namespace, shape: Shape, batch: int, device: torch.device):
    """Endless batches from the real loader (only imported with --data)."""
    from avssl.data.batching import features_on_device
    from avssl.data.datamodule import AVDataModule

    dm = AVDataModule(
        data=args.data,
        train_split=args.split,
        batch_size=batch,
        num_workers=args.workers,
        worker_nice=worker_nice(args, device),
        num_frames=shape.frames,
        crop_size=shape.img,
        audio_frames=shape.audio[0],
        num_mel_bins=shape.audio[1],
        # One long epoch: a small split would otherwise end the epoch after a batch or two and
        # every epoch would restart the worker processes, which is not what training sees.
        batches_per_epoch=10**6,
        pin_memory=device.type == "cuda",
        features_on=features_on(args, device),
        repeated_sampling=args.repeats,
        keyframe_starts=args.keyframe_starts,
        modalities=list(shape.modalities),  # VideoMAE's step: no audio decoded or shipped
    )
    dm.setup("fit")
    while True:
        for b in dm.train_dataloader():
            yield features_on_device(b.to(device, non_blocking=True), dm.fbank)


def worker_nice(args: argparse.Namespace, device: torch.device) -> int:
    """The workers' niceness (``--worker-nice``; default: AVDataModule's, 10 on a GPU)."""
    if args.worker_nice is not None:
        return args.worker_nice
    from avssl.data.datamodule import GPU_WORKER_NICE  # only with --data (imports PyAV)

    return GPU_WORKER_NICE if device.type == "cuda" else 0


def features_on(args: argparse.Namespace, device: torch.device) -> str:
    """Where the fed step's batches are finished (``--features``; auto: the device if a GPU)."""
    if args.features != "auto":
        return args.features
    return "device" if device.type == "cuda" else "loader"
