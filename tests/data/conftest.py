"""Session fixtures for the loader tests: small synthetic shards made by data_prep, and variants
of them (corrupt sample, no audio, audio only) rewritten with tarfile."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

NUM_CLASSES, CLIPS_PER_CLASS, SHARD_SIZE = 3, 4, 5  # 12 samples in 3 shards (5, 5, 2)


def prepare(out: Path, **options) -> Path:
    """The session's synthetic set prepared by data_prep into ``out`` (``options``: a ROOT of
    clips already generated, other encoding settings)."""
    from data_prep import prepare_dataset

    prepare_dataset(
        "synthetic",
        out=out,
        workers=1,
        num_classes=NUM_CLASSES,
        clips_per_class=CLIPS_PER_CLASS,
        shard_size=SHARD_SIZE,
        progress=False,
        log=lambda msg: None,
        **options,
    )
    return out


def samples_of(data: Path) -> list[dict]:
    """Every sample of a prepared folder (members as bytes), in key order."""
    from avssl.data.shards import ShardReader, resolve, split_table

    reader = ShardReader()
    return [reader.read(s, k) for s, k in split_table(resolve(data), None).ordered()]


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic dataset folder (shard format v1) made by data_prep."""
    return prepare(tmp_path_factory.mktemp("synth") / "prepared")


@pytest.fixture(scope="session")
def wav_synth(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clips of ``synth`` prepared again with ``audio_codec="wav"``."""
    out = tmp_path_factory.mktemp("wav") / "prepared"
    return prepare(out, root=synth / "raw", audio_codec="wav")


JPEG_FPS = 2


@pytest.fixture(scope="session")
def jpeg_synth(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clips of ``synth`` prepared again with two JPEG frames per second."""
    out = tmp_path_factory.mktemp("jpeg") / "prepared"
    return prepare(out, root=synth / "raw", jpeg_fps=JPEG_FPS)


def read_samples(tar_path: Path) -> list[dict]:
    """All samples of a tar as ``{"__key__": key, ext: bytes}`` dicts, in order."""
    samples: list[dict] = []
    with tarfile.open(tar_path) as tar:
        for info in tar:
            base = info.name.rsplit("/", 1)[-1]
            key = info.name[: len(info.name) - len(base)] + base.split(".", 1)[0]
            ext = base.split(".", 1)[1]
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(info).read()
    return samples


def write_samples(tar_path: Path, samples: list[dict]) -> None:
    """Writes samples as consecutive tar members plus the sidecar json of shard format v1."""
    with tarfile.open(tar_path, "w") as tar:
        for s in samples:
            for ext, data in s.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    sidecar = {"keys": [s["__key__"] for s in samples], "failures": []}
    tar_path.with_suffix(".json").write_text(json.dumps(sidecar))


def rewrite(src: Path, dst: Path, edit: Callable[[dict, int], dict]) -> Path:
    """Copies a prepared folder, passing every sample (and its global index) through ``edit``."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("raw", "*.tar", "shard-*.json"))
    manifest = json.loads((src / "manifest.json").read_text())
    index = 0
    for shard in manifest["shards"]:
        samples = read_samples(src / shard["file"])
        edited = []
        for s in samples:
            edited.append(edit(dict(s), index))
            index += 1
        write_samples(dst / shard["file"], edited)
    return dst


def _set_meta(sample: dict, **fields) -> dict:
    meta = json.loads(sample["json"])
    meta.update(fields)
    sample["json"] = json.dumps(meta).encode()
    return sample


CORRUPT_INDEX = 6  # second sample of the second shard


@pytest.fixture(scope="session")
def corrupt_data(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set with garbage bytes in the mp4 member of sample ``CORRUPT_INDEX``."""

    def edit(s: dict, i: int) -> dict:
        if i == CORRUPT_INDEX:
            s["mp4"] = bytes(range(256)) * 64
        return s

    return rewrite(synth, tmp_path_factory.mktemp("corrupt") / "prepared", edit)


@pytest.fixture(scope="session")
def noaudio_data(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set with every flac member removed (has_audio false)."""

    def edit(s: dict, i: int) -> dict:
        s.pop("flac", None)
        return _set_meta(s, has_audio=False, audio_sample_rate=None)

    return rewrite(synth, tmp_path_factory.mktemp("noaudio") / "prepared", edit)


@pytest.fixture(scope="session")
def audio_only_data(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set as an audio-only dataset (no mp4 members, has_video false)."""

    def edit(s: dict, i: int) -> dict:
        s.pop("mp4", None)
        return _set_meta(s, has_video=False)

    return rewrite(synth, tmp_path_factory.mktemp("audioonly") / "prepared", edit)


@pytest.fixture(autouse=True)
def no_global_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader tests' streams take data seed 0 (``data_seed``): a global seed left in the
    environment by an earlier test (``seed_everything`` sets ``PL_GLOBAL_SEED``) is removed,
    and the variable is back as it was after the test (which may set it)."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # records the variable's state before the test
    monkeypatch.delenv("PL_GLOBAL_SEED")


def _small_args(**overrides) -> dict:
    args = dict(
        batch_size=2,
        num_workers=0,
        num_frames=4,
        frame_stride=2,
        crop_size=32,
        audio_frames=128,
        train_split="train1",
        val_split="test1",
    )
    args.update(overrides)
    return args


@pytest.fixture
def small_args() -> Callable[..., dict]:
    """Builds AVDataModule arguments small enough for fast tests (keyword overrides)."""
    return _small_args
