"""Opening media for the decoders: sources, errors and codec thread settings.

A source (:data:`Source`) is a path, bytes or a binary file object of any container PyAV can
read; :func:`open_media` opens it with clear errors (:class:`MediaError` for media that cannot
be decoded). Codec threads: one inside a DataLoader worker, automatic elsewhere
(:func:`default_threads`). Used by :mod:`avssl.data.decode` (video, which re-exports these
names) and :mod:`avssl.data.audio_decode`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import av
import torch

Source = str | Path | bytes | bytearray | memoryview | BinaryIO


class MediaError(ValueError):
    """A media file that cannot be decoded (corrupt, truncated or without the needed stream)."""


def _name(src: Source) -> str:
    return str(src) if isinstance(src, (str, Path)) else f"<{type(src).__name__} media>"


def open_media(src: Source) -> av.container.InputContainer:
    """Opens ``src`` (path, bytes or file object) for reading; clear errors on failure."""
    if isinstance(src, (str, Path)):
        if not Path(src).is_file():
            raise FileNotFoundError(f"media file not found: {src}")
        target: str | BinaryIO = str(src)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        target = io.BytesIO(bytes(src))
    else:
        target = src
    try:
        return av.open(target, mode="r")
    except av.error.FFmpegError as err:
        reason = getattr(err, "strerror", None) or str(err)  # without FFmpeg's copy of the path
        raise MediaError(f"{_name(src)}: cannot open media ({reason})") from err


def default_threads() -> int:
    """Codec threads: 1 inside a DataLoader worker (no oversubscription), else 0 (auto)."""
    return 1 if torch.utils.data.get_worker_info() is not None else 0


def _configure_threads(stream: av.stream.Stream, threads: int | None) -> None:
    threads = default_threads() if threads is None else threads
    ctx = stream.codec_context
    ctx.thread_count = threads
    ctx.thread_type = "AUTO" if threads != 1 else "SLICE"
