"""Fixtures of the evaluator tests: a tiny synthetic dataset and random-init encoder bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def tiny_prep(crop: int = 32, frames: int = 4, audio_frames: int = 128) -> dict:
    """A preprocessing dict in the ``AVDataModule.preprocessing()`` layout, tiny inputs."""
    from avssl.data.fbank import FbankConfig

    return {
        "num_frames": frames,
        "frame_stride": None,
        "target_fps": None,
        "crop_size": crop,
        "video_mean": IMAGENET_MEAN,
        "video_std": IMAGENET_STD,
        "fbank": FbankConfig(target_frames=audio_frames).to_dict(),
    }


def write_tiny_bundle(
    out: Path,
    audio: bool = True,
    video: bool = True,
    prep=None,
    seed=0,
    heads: int = 0,
    v2a: bool = False,
):
    """A bundle folder with 1-block ViT-Tiny encoders at random initialisation; ``heads`` > 0
    adds random Linear-GELU-Linear projection heads into a space that wide, ``v2a`` a second
    such pair for the video -> audio direction's space."""
    from safetensors.torch import save_file

    from avssl.models.vit import AudioViT, VideoViT

    torch.manual_seed(seed)
    a = AudioViT("tiny", depth=1, input_size=(128, 128)) if audio else None
    v = VideoViT("tiny", depth=1, num_frames=4, img_size=32) if video else None
    config = {
        "format": "avssl-encoder-bundle",
        "format_version": 1,
        "audio": a.config() if a else None,
        "video": v.config() if v else None,
        "preprocessing": prep or tiny_prep(),
        "provenance": {"objective": "random-init (test)"},
    }
    out.mkdir(parents=True, exist_ok=True)  # the bundle layout of DESIGN section 3
    for modality, enc in (("audio", a), ("video", v)):
        if enc is not None:
            state = {k: t.contiguous() for k, t in enc.state_dict().items()}
            save_file(state, str(out / f"{modality}_encoder.safetensors"))
    if heads:
        from avssl.heads import describe_head

        config["heads"] = {"space": "test NCE", "dim": heads}
        if v2a:
            config["heads"]["v2a"] = {"space": "test NCE back", "dim": heads}
        for tag, entry in (("", config["heads"]), ("_v2a", config["heads"].get("v2a"))):
            for modality, enc in (("audio", a), ("video", v)):
                if entry is None:
                    continue
                d = enc.embed_dim
                mlp = torch.nn.Sequential(
                    torch.nn.Linear(d, 32), torch.nn.GELU(), torch.nn.Linear(32, heads)
                )
                entry[modality], state = describe_head(mlp)
                save_file(state, str(out / f"{modality}_head{tag}.safetensors"))
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """3 classes x 4 clips prepared as shards (splits train1/test1 ... train3/test3)."""
    import data_prep

    out = tmp_path_factory.mktemp("evaluators") / "synthetic"
    data_prep.prepare_dataset(
        "synthetic", out=out, num_classes=3, clips_per_class=4, progress=False, log=lambda m: None
    )
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture()
def data_copy(synthetic_data, tmp_path) -> Path:
    """A copy of the prepared folder whose split files a test may edit (shards linked)."""
    out = tmp_path / "synthetic_copy"
    out.mkdir()
    for name in ("manifest.json", "stats.json"):
        shutil.copy(synthetic_data / name, out / name)
    shutil.copytree(synthetic_data / "splits", out / "splits")
    (out / "shards").symlink_to(synthetic_data / "shards", target_is_directory=True)
    return out
