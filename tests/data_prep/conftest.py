"""Session fixture of small media files made with PyAV (see prep_helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prep_helpers import write_audio_codecless_avi, write_clip, write_codecless_avi, write_wav


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Named tiny media files: av, noaudio, big (640x480), fast (60 fps), badaudio, wav, ..."""
    d = tmp_path_factory.mktemp("media")
    files = {
        "av": write_clip(d / "av.mp4"),
        "mono": write_clip(d / "mono.mp4", stereo=False, audio_rate=16000),
        "noaudio": write_clip(d / "noaudio.mp4", audio_rate=None),
        "big": write_clip(d / "big.mp4", 640, 480, fps=10, seconds=2.5, audio_rate=None),
        "fast": write_clip(d / "fast.mp4", 96, 64, fps=60, seconds=1.0, audio_rate=None),
        "badaudio": write_clip(d / "badaudio.mp4", garbage_audio=True),
        "long": write_clip(d / "long.mp4", fps=25, seconds=4.0, faststart=True, audio_rate=None),
        "wav": write_wav(d / "tone.wav"),
        "nocodec": write_codecless_avi(d / "nocodec.avi"),
        "nocodec_audio": write_audio_codecless_avi(d / "nocodec_audio.avi"),
    }
    data = files["long"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    files["truncated"] = d / "truncated.mp4"
    data = files["av"].read_bytes()
    (d / "cut_header.mp4").write_bytes(data[: len(data) // 3])
    files["cut_header"] = d / "cut_header.mp4"
    (d / "zero.mp4").write_bytes(b"")
    files["zero"] = d / "zero.mp4"
    (d / "text.avi").write_text("this is a text file renamed to .avi\n" * 20)
    files["text"] = d / "text.avi"
    return files
