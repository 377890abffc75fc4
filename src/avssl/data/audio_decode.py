"""Audio decoding for the loader and ``avssl.embed`` (DESIGN section 7).

Decode once, downmix (stereo averaged, more channels by FFmpeg's mono downmix), resample to
the requested rate (:func:`load_audio`). Shard audio takes shortcuts: FLAC through
libsndfile, window by window where that is less (:class:`FlacWindows`), and 16-bit PCM WAV
read in place without decoding (:class:`PcmWave`). Sources are what :mod:`avssl.data.decode`
opens: a path, bytes or a binary file object of any container PyAV can read.
"""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import torch

from avssl.data.decode import MediaError, Source, _name, open_media

try:  # libsndfile's FLAC decoder: the shard audio path (see load_audio)
    import soundfile
except (ImportError, OSError):  # not installed, or its shared library does not load
    soundfile = None


_INT_SCALE = {"s16": 32768.0, "s32": 2147483648.0}
_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "flt": np.float32, "dbl": np.float64}


class _RawSamples:
    """Decoded frames' sample bytes, kept per plane and converted once at the end.

    Shard audio (FLAC at the target rate) arrives as ~140 small frames per 10 s; joining their
    bytes and converting once costs about half of what a ``to_ndarray`` per frame and a
    concatenation did (~0.5 of ~1.1 ms on top of the ~2.4 ms of decoding)."""

    def __init__(self, src: Source) -> None:
        self.src, self.channels = src, 1
        self.fmt: av.AudioFormat | None = None
        self.parts: list[list[bytes]] = []

    def add(self, frame: av.AudioFrame) -> None:
        fmt, channels = frame.format, len(frame.layout.channels)
        if self.fmt is None:
            if fmt.name.rstrip("p") not in _DTYPES:
                raise MediaError(f"{_name(self.src)}: unsupported audio sample format {fmt.name}")
            self.fmt, self.channels = fmt, channels
            self.parts = [[] for _ in range(channels if fmt.is_planar else 1)]
        elif fmt.name != self.fmt.name or channels != self.channels:
            raise MediaError(f"{_name(self.src)}: audio sample format changes mid-stream")
        per_plane = frame.samples * fmt.bytes * (1 if fmt.is_planar else channels)
        for parts, plane in zip(self.parts, frame.planes, strict=False):
            parts.append(bytes(memoryview(plane)[:per_plane]))  # a copy frees the frame

    def mono(self) -> np.ndarray:
        """Float samples in [-1, 1], channels averaged: ``[S]``."""
        assert self.fmt is not None
        name = self.fmt.name.rstrip("p")
        planes = [np.frombuffer(b"".join(p), _DTYPES[name]) for p in self.parts]
        x = np.stack(planes) if self.fmt.is_planar else planes[0].reshape(-1, self.channels).T
        if name == "u8":
            x = (x.astype(np.float32) - 128.0) / 128.0
        elif name in _INT_SCALE:
            x = x.astype(np.float32) / np.float32(_INT_SCALE[name])
        return x[0] if len(x) == 1 else x.mean(axis=0)  # [C, S] -> [S]


def _open_shard_flac(src: Source, sample_rate: int):
    """An open ``soundfile.SoundFile`` on mono 16-bit FLAC bytes at ``sample_rate``, or None
    (not such a file, no ``soundfile``, or libsndfile refuses it: FFmpeg decides then)."""
    if soundfile is None or not isinstance(src, bytes | bytearray) or src[:4] != b"fLaC":
        return None
    try:
        f = soundfile.SoundFile(io.BytesIO(src))
    except (RuntimeError, ValueError):  # LibsndfileError is a RuntimeError
        return None
    if f.channels != 1 or f.samplerate != sample_rate or f.subtype != "PCM_16":
        f.close()
        return None
    return f


def _shard_flac(src: Source, sample_rate: int) -> torch.Tensor | None:
    """``[S]`` float samples of mono 16-bit FLAC bytes at ``sample_rate`` read by libsndfile,
    or None (not such a file, no ``soundfile``, or libsndfile fails: FFmpeg decides then)."""
    f = _open_shard_flac(src, sample_rate)
    if f is None:
        return None
    try:
        with f:
            wave = f.read(dtype="float32")  # int16 / 32768, as the FFmpeg path converts
    except (RuntimeError, ValueError):
        return None
    return torch.from_numpy(wave) if len(wave) else None


class FlacWindows:
    """Shard FLAC (mono, 16-bit, at the loader's rate) decoded window by window.

    ``len()`` is the sample count of the FLAC header and ``windows[a:b]`` decodes samples
    ``a`` to ``b - 1`` only, after a seek (libsndfile seeks to the exact sample): the same
    values as slicing the whole decoded recording, for the part a short window needs (a 3.2 s
    window of a 10 s clip decodes in ~40 % of the time of the whole clip). When a read fails
    or returns fewer samples than the header promises, the recording is decoded whole once
    with :func:`load_audio`, what the loader does without windows, and the windows are cut
    from that: a read that failed on an intact file gives the same samples, while a recording
    shorter than its header's count (a truncated file) raises ``MediaError``, so the sample is
    skipped and counted as corrupt instead of trained on with its window moved. A window that
    lies before the cut reads as in the intact file (damage outside the windows is not seen,
    as for video frames outside a clip). Use as a context manager (closes the file).
    """

    def __init__(self, f, src: bytes, sample_rate: int) -> None:
        self._f, self._src, self._rate = f, src, sample_rate
        self._n = int(f.frames)
        self._whole: torch.Tensor | None = None

    @classmethod
    def open(cls, src: Source, sample_rate: int) -> FlacWindows | None:
        """Windows over ``src``, or None when libsndfile does not take it or the header
        gives no sample count (the caller decodes it whole)."""
        if not isinstance(src, bytes | bytearray):
            return None
        f = _open_shard_flac(src, sample_rate)
        if f is None:
            return None
        if f.frames <= 0:
            f.close()
            return None
        return cls(f, bytes(src), sample_rate)

    def __len__(self) -> int:
        return self._n if self._whole is None else len(self._whole)

    def __getitem__(self, span: slice) -> torch.Tensor:
        a, b, _ = span.indices(len(self))
        if self._whole is None and b > a:
            try:
                self._f.seek(a)
                got = self._f.read(b - a, dtype="float32")
                if len(got) == b - a:
                    return torch.from_numpy(got)
            except (RuntimeError, ValueError):
                pass
            self._whole = self._decode_whole()
        return self._whole[a:b] if self._whole is not None else torch.zeros(0)

    def _decode_whole(self) -> torch.Tensor:
        """``[S]``: the whole recording, after a window read failed or came up short.

        Raises:
            MediaError: it is shorter than the header says (truncated), or does not decode.
        """
        whole, _ = load_audio(self._src, self._rate)
        if len(whole) < self._n:
            raise MediaError(f"FLAC truncated: {len(whole)} of {self._n} samples decode")
        return whole

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> FlacWindows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_CHUNK = struct.Struct("<4sI")  # RIFF chunk header: id, size of the body
_FMT = struct.Struct("<HHIIHH")  # format tag, channels, rate, bytes/s, block align, bits


class PcmWave:
    """Shard WAV audio (RIFF, mono 16-bit PCM at the loader's rate) read in place.

    The samples are the member's bytes, so ``windows[a:b]`` converts samples ``a`` to
    ``b - 1`` of an int16 view to floats (``int16 / 32768``, the values libsndfile and the
    FFmpeg path give for the same samples in FLAC) and nothing is decoded: the shards'
    ``--audio-codec wav`` option, for steps whose audio windows cost more to decode than the
    rest of the sample (CAV-MAE's 10 s window from FLAC: ~2 ms per sample on one core).
    """

    def __init__(self, samples: np.ndarray) -> None:
        self._s = samples

    @classmethod
    def open(cls, src: Source, sample_rate: int) -> PcmWave | None:
        """The samples of ``src``, or None when it is not a RIFF/WAVE file in that layout
        (FFmpeg decides then: other rates, channels or sample formats are converted).

        Raises:
            MediaError: a mono 16-bit PCM WAV at ``sample_rate`` whose data chunk is missing,
                or shorter than its header says (a truncated file).
        """
        if not isinstance(src, bytes | bytearray) or src[:4] != b"RIFF" or src[8:12] != b"WAVE":
            return None
        pos, fmt = 12, None
        while pos + _CHUNK.size <= len(src):
            cid, size = _CHUNK.unpack_from(src, pos)
            body = pos + _CHUNK.size
            if cid == b"fmt " and size >= _FMT.size:
                tag, channels, rate, _, _, bits = _FMT.unpack_from(src, body)
                fmt = (tag, channels, rate, bits)
                if fmt != (1, 1, sample_rate, 16):
                    return None
            elif cid == b"data":
                if fmt is None or size == 0xFFFFFFFF:  # no format yet, or a streamed length
                    return None
                if body + size > len(src):
                    have = (len(src) - body) // 2
                    raise MediaError(f"WAV truncated: {have} of {size // 2} samples present")
                return cls(np.frombuffer(src, dtype="<i2", count=size // 2, offset=body))
            pos = body + size + (size & 1)  # chunks are padded to even sizes
        if fmt is None:
            return None
        raise MediaError("WAV without a data chunk (truncated?)")

    def __len__(self) -> int:
        return len(self._s)

    def __getitem__(self, span: slice) -> torch.Tensor:
        a, b, _ = span.indices(len(self))
        return torch.from_numpy(self._s[a:b].astype(np.float32) / np.float32(32768))


def _resampler(frame: av.AudioFrame, sample_rate: int) -> av.AudioResampler | None:
    """FFmpeg's resampler for a stream whose first frame is ``frame``, or None when its samples
    can be kept as they are. Mono and stereo at ``sample_rate`` need none (averaging stereo is
    FFmpeg's mono downmix, both channels at 0.5). More channels are downmixed by FFmpeg as the
    shard writer does (5.1: centre 0.29, front 0.21, surround 0.15, LFE 0), not averaged."""
    surround = len(frame.layout.channels) > 2
    if frame.sample_rate == sample_rate and not surround:
        return None
    if surround:  # the writer's call; integer output is what makes FFmpeg normalise the mix
        return av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    return av.AudioResampler("fltp", rate=sample_rate)


def load_audio(src: Source, sample_rate: int = 16000) -> tuple[torch.Tensor, bool]:
    """Decodes the first audio stream to a mono float waveform at ``sample_rate``.

    Mono and stereo are averaged; more channels take FFmpeg's mono downmix, as in the shard
    writer. Samples are in [-1, 1]. Audio already at ``sample_rate`` (shard FLAC) is converted
    directly, other rates go through FFmpeg's resampler. Returns
    ``(wave [S], True)``, or ``(empty tensor, False)`` when the file has no audio stream.

    Shard audio (FLAC bytes, mono, 16-bit, at ``sample_rate``) is read with libsndfile when
    the ``soundfile`` package loads: the same samples bit for bit in about two thirds of the
    time (1.97 vs 3.00 ms per 10 s clip). Anything else, and FLAC libsndfile refuses, takes
    the FFmpeg path. Shard WAV (mono, 16-bit PCM, at ``sample_rate``) is read in place
    (:class:`PcmWave`; a truncated one raises MediaError).
    """
    fast = _shard_flac(src, sample_rate)
    if fast is not None:
        return fast, True
    pcm = PcmWave.open(src, sample_rate)
    if pcm is not None:
        return pcm[0 : len(pcm)], True
    with open_media(src) as container:
        if not container.streams.audio:
            return torch.zeros(0), False
        stream = container.streams.audio[0]
        stream.codec_context.thread_count = 1
        resampler: av.AudioResampler | None = None
        raw = _RawSamples(src)
        first_setup = None
        try:
            for frame in container.decode(stream):
                setup = (frame.format.name, frame.layout.name, frame.sample_rate)
                if first_setup is None:
                    first_setup = setup
                    resampler = _resampler(frame, sample_rate)
                if resampler is None:  # mono/stereo at the rate: raw samples, converted below
                    raw.add(frame)
                    continue
                if setup != first_setup:  # the resampler would raise a bare ValueError
                    raise MediaError(
                        f"{_name(src)}: audio format changes mid-stream ({first_setup} -> {setup})"
                    )
                frame.pts = None
                for out in resampler.resample(frame):
                    raw.add(out)
            if resampler is not None:
                for out in resampler.resample(None):
                    raw.add(out)
            if raw.fmt is None:
                return torch.zeros(0), True
            wave = raw.mono()
        except av.error.FFmpegError as err:
            raise MediaError(f"{_name(src)}: audio decoding failed ({err})") from err
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), True
