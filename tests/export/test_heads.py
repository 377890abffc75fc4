"""Projection heads in bundles (``avssl.heads``): stored as layer lists, rebuilt exactly, checked
on load, used by ``avssl.embed(space="shared")``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

import avssl
from avssl.cli import UserError
from avssl.export import load_encoder
from avssl.heads import build_head, describe_head
from avssl.objectives._contrastive_heads import avid_head, fac_video_head, projection_head
from avssl.objectives.crisscross import simsiam_projector
from tests.evaluators.conftest import write_tiny_bundle
from tests.media import MEDIA


def _trained_stats(module: nn.Module) -> nn.Module:
    """Random weights and batch-norm running statistics away from their 0 / 1 start."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    module.train()
    for _ in range(3):
        module(torch.randn(16, 8, generator=gen) * 2 + 1)
    return module.eval()


@pytest.mark.parametrize(
    "make",
    [
        lambda: projection_head(8, 0, 4),  # a single Linear (MAViL's heads)
        lambda: projection_head(8, 16, 4),  # Linear-GELU-Linear
        lambda: fac_video_head(8, 4),  # Linear-BN-ReLU-Linear-BN
        lambda: avid_head(8, 16, 4),
        lambda: simsiam_projector(8, 16, 4),  # last BN without affine parameters
    ],
)
def test_describe_head_rebuilds_the_same_function(make):
    head = _trained_stats(make())
    spec, state = describe_head(head)
    json.dumps(spec)  # stored in config.json
    rebuilt = build_head(json.loads(json.dumps(spec)))
    rebuilt.load_state_dict(state, strict=True)
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), head(x))
    if any(isinstance(m, nn.BatchNorm1d) for m in head.modules()):  # running stats kept
        assert any("running_mean" in k and float(v.abs().sum()) > 0 for k, v in state.items())


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin(x)


def test_describe_head_refuses_what_a_layer_list_cannot_hold():
    with pytest.raises(ValueError, match="Tanh is not a layer"):
        describe_head(nn.Sequential(nn.Linear(8, 4), nn.Tanh()))
    with pytest.raises(ValueError, match="not its layers in order"):
        describe_head(_Residual())
    with pytest.raises(ValueError, match="running statistics"):
        describe_head(nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4, track_running_stats=False)))
    with pytest.raises(ValueError, match="unknown head layer"):
        build_head([{"layer": "conv"}])


@pytest.fixture()
def head_bundle(tmp_path):
    return write_tiny_bundle(tmp_path / "b", heads=16)


def test_bundle_with_heads_loads_and_projects(head_bundle):
    bundle = load_encoder(head_bundle)
    assert set(bundle.heads) == {"audio", "video"} and bundle.shared_space == "test NCE"
    assert "heads=P16" in repr(bundle)
    x = torch.randn(2, 3, bundle.embed_dim["audio"])
    z = bundle.project("audio", x)
    assert z.shape == (2, 3, 16)
    with torch.no_grad():
        assert torch.allclose(z, bundle.heads["audio"](x.reshape(6, -1)).reshape(2, 3, 16))


def test_bundle_with_v2a_heads_projects_each_direction_in_its_space(tmp_path, head_bundle):
    bundle = load_encoder(write_tiny_bundle(tmp_path / "v2a", heads=16, v2a=True))
    assert set(bundle.heads_v2a) == {"audio", "video"} and "(+v2a)" in repr(bundle)
    x = torch.randn(3, bundle.embed_dim["video"])
    with torch.no_grad():
        for m in ("audio", "video"):
            assert torch.allclose(bundle.project(m, x), bundle.heads[m](x))
            assert torch.allclose(bundle.project(m, x, "v2a"), bundle.heads_v2a[m](x))
        assert not torch.allclose(bundle.project("video", x, "v2a"), bundle.project("video", x))
    with pytest.raises(UserError, match="direction must be 'a2v' or 'v2a', got 'both'"):
        bundle.project("audio", x, "both")
    one = load_encoder(head_bundle)  # one space for both directions
    assert one.heads_v2a is None and "+v2a" not in repr(one)
    assert torch.equal(one.project("video", x, "v2a"), one.project("video", x))


@pytest.mark.parametrize("suffix", [".safetensors", ".onnx", ".onnx.data"])
def test_export_describes_each_head_file_with_its_own_space(tmp_path, suffix):
    """``avssl export`` lists what it wrote: ``<modality>_head_v2a.onnx`` was described with
    the a2v space (only ``*_head_v2a.safetensors`` was recognised as the v2a head's)."""
    from avssl.export import _describe

    folder = write_tiny_bundle(tmp_path / "v2a", heads=16, v2a=True)
    bundle = load_encoder(folder)
    for modality in ("audio", "video"):
        for tag, space in (("", "test NCE"), ("_v2a", "test NCE back")):
            path = folder / f"{modality}_head{tag}{suffix}"
            if not path.is_file():
                path.write_bytes(b"\0" * 10)  # only its size is read
            text = _describe(path, bundle)
            assert f"(projection into the {space} space, P=16, " in text, text


def _edit(bundle_dir, change) -> None:
    cfg = json.loads((bundle_dir / "config.json").read_text())
    change(cfg)
    (bundle_dir / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["heads"].pop("video"), "needs an audio and a video layer list"),
        (lambda c: c["heads"]["audio"][0].update({"in": 7}), "audio head takes D=7"),
        (lambda c: c["heads"]["video"][-1].update({"out": 8}), "different widths"),
        (lambda c: c["heads"].update({"audio": [{"layer": "relu"}]}), "invalid audio head"),
        (lambda c: c.update({"video": None}), "video head but no video encoder"),
    ],
)
def test_bad_heads_config_is_one_line_error(head_bundle, change, message):
    _edit(head_bundle, change)
    with pytest.raises(UserError, match=message):
        load_encoder(head_bundle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["heads"]["v2a"].pop("video"), "'heads.v2a' needs an audio and a video"),
        (lambda c: c["heads"]["v2a"]["audio"][0].update({"in": 7}), "v2a audio head takes D=7"),
        (lambda c: c["heads"]["v2a"]["video"][-1].update({"out": 8}), "v2a heads project into"),
        (lambda c: c["heads"].update({"v2a": [1]}), "'heads.v2a' needs an audio and a video"),
    ],
)
def test_bad_v2a_heads_config_is_one_line_error(tmp_path, change, message):
    folder = write_tiny_bundle(tmp_path / "v2a", heads=16, v2a=True)
    _edit(folder, change)
    with pytest.raises(UserError, match=message):
        load_encoder(folder)


def test_missing_or_wrong_v2a_head_weights(tmp_path):
    folder = write_tiny_bundle(tmp_path / "v2a", heads=16, v2a=True)
    other = write_tiny_bundle(tmp_path / "other", heads=24, v2a=True)
    shutil.copy(other / "video_head_v2a.safetensors", folder / "video_head_v2a.safetensors")
    with pytest.raises(UserError, match="cannot rebuild the v2a video head"):
        load_encoder(folder)
    (folder / "video_head_v2a.safetensors").unlink()
    with pytest.raises(UserError, match=r"video_head_v2a.safetensors: missing \(config.json lists "
                       "a video v2a head"):  # fmt: skip
        load_encoder(folder)


def test_missing_or_wrong_head_weights(head_bundle, tmp_path):
    other = write_tiny_bundle(tmp_path / "other", heads=24)
    shutil.copy(other / "video_head.safetensors", head_bundle / "video_head.safetensors")
    with pytest.raises(UserError, match="cannot rebuild the video head: .*size mismatch"):
        load_encoder(head_bundle)
    (head_bundle / "video_head.safetensors").unlink()
    with pytest.raises(UserError, match=r"video_head.safetensors: missing \(config.json lists"):
        load_encoder(head_bundle)


@pytest.mark.skipif(not MEDIA.is_dir(), reason="shared/media not available")
def test_embed_in_the_shared_space(head_bundle, tmp_path):
    clip = MEDIA / "audioset_clip_h264_aac.mp4"
    bundle = load_encoder(head_bundle)
    back = avssl.embed(bundle, clip)
    shared = avssl.embed(bundle, clip, space="shared")
    for m in ("audio", "video"):  # one clip: the head of the clip embedding
        assert shared[m].shape == (16,)
        assert torch.allclose(shared[m], bundle.project(m, back[m][None])[0], atol=1e-6)
    two = avssl.embed(bundle, clip, num_clips=2, space="shared")
    assert two["video"].shape == (16,)
    with pytest.raises(UserError, match="space must be 'backbone' or 'shared'"):
        avssl.embed(bundle, clip, space="joint")
    plain = load_encoder(write_tiny_bundle(tmp_path / "plain"))
    assert plain.heads is None
    with pytest.raises(UserError, match="has no projection heads"):
        avssl.embed(plain, clip, space="shared")
