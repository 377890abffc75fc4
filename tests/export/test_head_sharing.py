"""Heads stored inside another head's file (``avssl.heads.share_head_weights``): CrissCross's
projectors serve one direction alone and the other followed by a predictor; a bundle stores
each once and rebuilds all four heads exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from avssl.cli import UserError
from avssl.export import load_encoder
from avssl.export_ckpt import write_bundle
from avssl.heads import describe_head, head_key, share_head_weights
from tests.evaluators.conftest import write_tiny_bundle
from tests.export.test_heads import _edit

MODALITIES = ("audio", "video")


def _crisscross_like(folder):
    """A tiny bundle whose spaces share projectors as CrissCross's do: audio queries as the
    audio projector + predictor against the video projector, video queries the other way
    round. Returns (folder, {direction: {modality: module}})."""
    write_tiny_bundle(folder, heads=16, v2a=True)
    config = json.loads((folder / "config.json").read_text())
    states = {m: load_file(str(folder / f"{m}_encoder.safetensors")) for m in MODALITIES}
    torch.manual_seed(5)
    d = config["audio"]["embed_dim"]
    proj = {m: nn.Sequential(nn.Linear(d, 24), nn.GELU(), nn.Linear(24, 16)) for m in MODALITIES}
    pred = {m: nn.Sequential(nn.Linear(16, 16)) for m in MODALITIES}
    heads = {
        "a2v": {"audio": nn.Sequential(proj["audio"], pred["audio"]), "video": proj["video"]},
        "v2a": {"audio": proj["audio"], "video": nn.Sequential(proj["video"], pred["video"])},
    }
    for direction, pair in heads.items():
        entry = config["heads"] if direction == "a2v" else config["heads"]["v2a"]
        for modality, module in pair.items():
            entry[modality], states[head_key(modality, direction)] = describe_head(module)
    write_bundle(folder, config, states)
    return folder, heads


def test_shared_projectors_are_stored_once_and_rebuilt_exactly(tmp_path):
    folder, heads = _crisscross_like(tmp_path / "cc")
    names = sorted(p.name for p in folder.glob("*_head*.safetensors"))
    assert names == ["audio_head.safetensors", "video_head_v2a.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 2
    assert config["heads"]["weights_in"] == {"video": "video_head_v2a"}
    assert config["heads"]["v2a"]["weights_in"] == {"audio": "audio_head"}
    assert "weights_in" not in config["heads"]["v2a"]["video"]  # the layer lists stay whole
    assert len(config["heads"]["video"]) == 3 and len(config["heads"]["v2a"]["video"]) == 4
    bundle = load_encoder(folder)
    x = torch.randn(5, bundle.embed_dim["audio"])
    for direction, pair in heads.items():
        for modality, module in pair.items():
            with torch.no_grad():
                want = module(x)
            assert torch.equal(bundle.project(modality, x, direction), want)
    # the predictor-only layer is what distinguishes the two spaces
    assert not torch.allclose(bundle.project("video", x, "v2a"), bundle.project("video", x))


def test_heads_equal_in_layers_but_not_weights_keep_their_own_files(tmp_path):
    folder = write_tiny_bundle(tmp_path / "v2a", heads=16, v2a=True)  # four random heads
    config = json.loads((folder / "config.json").read_text())
    states = {
        head_key(m, d): load_file(str(folder / f"{head_key(m, d)}.safetensors"))
        for m in MODALITIES
        for d in ("a2v", "v2a")
    }
    assert config["heads"]["audio"] == config["heads"]["v2a"]["audio"]  # same layer lists
    assert share_head_weights(config, states) == {}
    states["audio_head_v2a"] = {k: v.clone() for k, v in states["audio_head"].items()}
    assert share_head_weights(config, states) == {"audio_head_v2a": "audio_head"}
    assert config["heads"]["v2a"]["weights_in"] == {"audio": "audio_head"}
    states["audio_head_v2a"]["0.bias"] += 1e-6  # one weight differs: shared no longer
    assert share_head_weights(config, states) == {}
    assert "weights_in" not in config["heads"]["v2a"]  # a stale entry is dropped


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["heads"].update({"weights_in": {"video": "nope_head"}}),
         r"'heads.weights_in.video' names no other head \('nope_head'\)"),
        (lambda c: c["heads"].update({"weights_in": {"video": "video_head"}}),
         "'heads.weights_in.video' names no other head"),
        (lambda c: c["heads"].update({"weights_in": ["video_head_v2a"]}),
         "'heads.weights_in' maps audio/video to a head"),
        (lambda c: c["heads"].update({"weights_in": {"text": "video_head_v2a"}}),
         "'heads.weights_in' maps audio/video to a head"),
        (lambda c: c["heads"].update({"weights_in": {"audio": "video_head_v2a",
                                                     "video": "video_head_v2a"}}),
         "'heads.v2a.weights_in.audio' names audio_head, itself stored elsewhere"),
        (lambda c: c["heads"]["video"][0].update({"bias": False}),
         "'heads.weights_in.video': video_head_v2a's layers do not begin with this head's"),
    ],
)  # fmt: skip
def test_bad_weights_in_is_one_line_error(tmp_path, change, message):
    folder, _ = _crisscross_like(tmp_path / "cc")
    _edit(folder, change)
    with pytest.raises(UserError, match=message):
        load_encoder(folder)


def test_missing_or_wrong_file_of_shared_weights(tmp_path):
    folder, _ = _crisscross_like(tmp_path / "cc")
    held = folder / "video_head_v2a.safetensors"  # also holds the a2v video head's weights
    for wrong in ({"0.weight": torch.zeros(3, 3)}, {"proj.weight": torch.zeros(3, 3)}):
        save_file(wrong, str(held))
        with pytest.raises(UserError, match="cannot rebuild the video head"):
            load_encoder(folder)
    (folder / "video_head_v2a.safetensors").unlink()
    with pytest.raises(UserError, match=r"video_head_v2a.safetensors: missing \(config.json lists"):
        load_encoder(folder)
