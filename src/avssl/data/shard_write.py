"""What a prep run writes besides the converted media: the shard tar (written to a temporary
name, renamed into place when complete), the log-mel statistics behind ``stats.json``, and
JSON files written atomically."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np


class ShardWriter:
    """Writes one WebDataset tar to ``<path>.tmp`` and renames it into place on close."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.tar = tarfile.open(self.tmp, "w")
        self.count = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Adds ``<key>.<ext>`` members of one sample, consecutively."""
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        self.tar.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.tar.close()
        self.tmp.unlink(missing_ok=True)


class FbankStats:
    """Accumulates sum, sum of squares and count of raw log-mel values (avssl.data.fbank).

    Over each clip's own frames only, not padded to the loader's ``target_frames``: AST's
    AudioSet statistics (-4.2677 / 4.5690, which AudioMAE reuses) came from its train loader,
    features zero-padded to 1024 frames (about 2.5 % zeros for 10 s clips) with its SpecAugment
    and mixup on (``get_norm_stats.py``), so on clips much shorter than the target the two
    differ. The loader pads the raw log-mel with 0 before normalising, as AST does."""

    def __init__(self, total: float = 0.0, total_sq: float = 0.0, count: int = 0, clips: int = 0):
        self.total, self.total_sq, self.count, self.clips = total, total_sq, count, clips

    def add_wave(self, wave: np.ndarray, cfg: Any) -> None:
        import torch

        from avssl.data.fbank import log_mel

        mel = log_mel(torch.from_numpy(wave), cfg).double()  # [T_frames, F]
        self.total += float(mel.sum())
        self.total_sq += float((mel * mel).sum())
        self.count += mel.numel()
        self.clips += 1

    def merge(self, other: dict) -> None:
        self.total += other["total"]
        self.total_sq += other["total_sq"]
        self.count += other["count"]
        self.clips += other["clips"]

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "total_sq": self.total_sq,
            "count": self.count,
            "clips": self.clips,
        }

    def mean_std(self) -> tuple[float, float]:
        mean = self.total / self.count
        var = max(self.total_sq / self.count - mean * mean, 0.0)
        return mean, math.sqrt(var)


def write_json(path: str | Path, obj: Any) -> None:
    """Writes JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
