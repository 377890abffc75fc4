"""Frame- and sample-level encoders of the shard writer (shard format v1, DESIGN section 3).

Video is re-encoded with PyAV/libx264 to a constant-frame-rate H.264 MP4 without audio:
upright (a display matrix's rotation applied) with square pixels (the sample aspect ratio
applied), short side scaled down to ``short_side`` (never up; even dimensions), frame rate
capped at ``max_fps`` (frames dropped uniformly by timestamp; AVI's frames, whose timestamps
packed B-frames shuffle, and frames without timestamps are timed by their count at the
source's rate), a keyframe at least every ``gop_seconds``, x264's
``fastdecode`` tune by default (no CABAC, no deblocking filter, no weighted prediction: the
loader decodes these streams ~1.4-1.7x faster for ~4-17 % more bytes and ~0.3 dB less PSNR at
the same CRF, see data_prep/README.md). Audio is downmixed to mono, resampled to ``sample_rate``
and stored as 16-bit FLAC, aligned to the first video frame, with gaps in its timestamps kept
as silence. Short GOPs keep random clip access cheap for the loader. A file is truncated when
fewer frames decode than its header counts, or (no count: WebM, Matroska) when they stop well
before the header's duration, or when its audio stops well before the audio's own duration.

The encoders are fed decoded frames by :func:`avssl.data.writer.convert`: ``_VideoEncoder``
(the mp4), :class:`JpegFrames` (JPEG frames at a low fps, instead of the mp4), ``_AudioCollector``
(mono int16 at the target rate) and :func:`encode_flac` / :func:`encode_wav` (the audio member).
They live in :mod:`avssl.data.video_encode` and :mod:`avssl.data.audio_encode`, the settings,
limits and :class:`MediaError` in :mod:`avssl.data.encode_settings`, the source video's timing,
geometry and truncation checks in :mod:`avssl.data.video_timing`; all are importable from here.
"""

from __future__ import annotations

from avssl.data.audio_encode import (  # noqa: F401  (re-exported: the writer and tests use them)
    _AudioCollector,
    encode_flac,
    encode_wav,
)
from avssl.data.encode_settings import (  # noqa: F401  (re-exported)
    AUDIO_GAP_SECONDS,
    MAX_GAP_SECONDS,
    MIN_FRAME_FRACTION,
    X264_TUNES,
    EncodeSettings,
    MediaError,
    check_tune,
    output_size,
)
from avssl.data.video_encode import (  # noqa: F401  (re-exported)
    JPEG_QSCALE,
    JpegFrames,
    _VideoEncoder,
    encode_jpeg,
)
from avssl.data.video_timing import (  # noqa: F401  (re-exported)
    _check_decoded,
    _check_span,
    _display,
    _frame_time,
    _stream_end,
    _stream_rate,
    _tag_seconds,
    _upright,
    container_seconds,
    counts_frames,
    tagged_end,
)
