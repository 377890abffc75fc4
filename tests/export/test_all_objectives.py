"""Every recipe's objective exports through ``export_encoders()`` alone (no per-objective code).

Parametrised over ``recipes/*.yaml``: the objective is built with the recipe's arguments and
``debug.yaml`` sizes, given random weights, saved as a checkpoint with its own ``avssl`` block,
exported, and the bundle's features must equal ``export_encoders()`` of the objective exactly.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import yaml

from avssl import export
from avssl.train import NOT_RECIPES
from tests.export.export_fakes import randomize

pytestmark = pytest.mark.slow
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
NAMES = sorted(p.stem for p in RECIPES.glob("*.yaml") if p.stem not in NOT_RECIPES)
DATA = {  # debug.yaml data sizes, in AVDataModule.preprocessing() layout
    "num_frames": 4,
    "frame_stride": None,
    "target_fps": None,
    "crop_size": 64,
    "video_mean": [0.485, 0.456, 0.406],
    "video_std": [0.229, 0.224, 0.225],
    "fbank": {
        "sample_rate": 16000,
        "num_mel_bins": 128,
        "frame_shift_ms": 10.0,
        "frame_length_ms": 25.0,
        "target_frames": 128,
        "mean": -6.0,
        "std": 4.0,
        "norm": "audiomae",
    },  # fmt: skip
}


def build_objective(recipe: str, tmp_path: Path):
    model = yaml.safe_load((RECIPES / f"{recipe}.yaml").read_text())["model"]
    debug = yaml.safe_load((RECIPES / "debug.yaml").read_text())["model"]["init_args"]
    init = {**(model.get("init_args") or {}), **debug}
    if "teacher_ckpt" in init and not init["teacher_ckpt"]:
        init["teacher_ckpt"] = str(tmp_path / "absent-teacher.ckpt")  # export must not need it
    module, _, name = model["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**init)


def _export(obj, recipe: str, tmp_path: Path):
    """Saves ``obj`` as recipe ``recipe``'s checkpoint, exports it and loads the bundle."""
    obj.recipe_name = recipe
    ckpt = {"state_dict": obj.state_dict(), "hyper_parameters": dict(obj.hparams),
            "global_step": 5, "epoch": 0}  # fmt: skip
    obj.on_save_checkpoint(ckpt)
    ckpt["avssl"]["data"] = DATA
    torch.save(ckpt, tmp_path / "last.ckpt")
    export.export_checkpoint(tmp_path / "last.ckpt", tmp_path / "bundle")
    return export.load_encoder(tmp_path / "bundle")


@pytest.mark.parametrize("recipe", NAMES)
def test_recipe_objective_exports_exactly(recipe, tmp_path):
    obj = build_objective(recipe, tmp_path)
    randomize(obj, 3)  # teacher and student copies now differ
    bundle = _export(obj, recipe, tmp_path)
    expected = obj.eval().export_encoders()
    assert bundle.provenance["encoder"]["which"] == expected["which"]
    assert bundle.provenance["recipe"] == recipe and bundle.preprocessing["assumed"] == []
    gen = torch.Generator().manual_seed(0)
    x = {"audio": torch.randn(2, 1, 128, 128, generator=gen),
         "video": torch.randn(2, 3, 4, 64, 64, generator=gen)}  # fmt: skip
    for modality in ("audio", "video"):
        if expected[modality] is None:
            assert getattr(bundle, modality) is None
            continue
        with torch.no_grad():
            diff = (getattr(bundle, modality)(x[modality]) - expected[modality](x[modality])).abs()
        assert float(diff.max()) == 0.0


# recipes whose objective aligns audio with video
HEADS = {"vatt", "avid", "avid_cma", "mavil", "mavil_stage2", "crisscross"}


@pytest.mark.parametrize("recipe", NAMES)
def test_recipe_heads_project_as_the_objective(recipe, tmp_path):
    """The bundle's heads map its clip embeddings exactly where the objective's cross-modal term
    compares them (VATT/AVID: ``embed``; MAViL: the inter-modal heads); others carry none."""
    obj = build_objective(recipe, tmp_path)
    randomize(obj, 4)
    bundle = _export(obj, recipe, tmp_path)
    files = sorted(p.name for p in (tmp_path / "bundle").glob("*_head.safetensors"))
    if recipe not in HEADS:
        assert bundle.heads is None and files == [] and "heads" not in bundle.config
        with pytest.raises(export.UserError, match="no projection heads"):
            bundle.project("audio", torch.zeros(1, 8))
        return
    back = sorted(p.name for p in (tmp_path / "bundle").glob("*_head_v2a.safetensors"))
    if recipe != "crisscross":  # one space serves both directions, each head in its own file
        assert files == ["audio_head.safetensors", "video_head.safetensors"]
        assert bundle.heads_v2a is None and back == [] and "v2a" not in bundle.config["heads"]
        assert bundle.config["format_version"] == 1 and "weights_in" not in bundle.config["heads"]
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, 1, 128, 128, generator=gen)
    v = torch.randn(3, 3, 4, 64, 64, generator=gen)
    obj.eval()
    with torch.no_grad():
        if hasattr(obj, "embed"):  # AVContrastive: what its NCE compares
            want_a, want_v = obj.embed(a, v)
        elif recipe == "crisscross":  # audio predictor vs video projector (its sync term)
            want_a = obj.predictor["audio"](obj.projector["audio"](obj.audio_encoder(a)))
            want_v = obj.projector["video"](obj.video_encoder(v))
        else:  # MAViL: the inter-modal InfoNCE's inputs
            want_a = obj.proj["inter_audio"](obj.audio_encoder.forward_features(a).mean(dim=1))
            want_v = obj.proj["inter_video"](obj.video_encoder.forward_features(v).mean(dim=1))
    got_a = bundle.project("audio", bundle.audio(a))
    got_v = bundle.project("video", bundle.video(v))
    assert got_a.shape == want_a.shape and got_v.shape == want_v.shape
    assert torch.allclose(got_a, want_a, atol=1e-5) and torch.allclose(got_v, want_v, atol=1e-5)
    assert bundle.config["heads"]["dim"] == want_a.shape[1]
    assert bundle.shared_space == obj.export_heads()["space"]
    if recipe == "crisscross":  # and video predictor vs audio projector (the other direction)
        # each projector stored once: projector + predictor files hold the projectors alone
        assert files == ["audio_head.safetensors"] and back == ["video_head_v2a.safetensors"]
        assert bundle.config["heads"]["weights_in"] == {"video": "video_head_v2a"}
        assert bundle.config["heads"]["v2a"]["weights_in"] == {"audio": "audio_head"}
        assert bundle.config["format_version"] == 2
        with torch.no_grad():
            want_a = obj.projector["audio"](obj.audio_encoder(a))
            want_v = obj.predictor["video"](obj.projector["video"](obj.video_encoder(v)))
        got_a = bundle.project("audio", bundle.audio(a), "v2a")
        got_v = bundle.project("video", bundle.video(v), "v2a")
        assert torch.allclose(got_a, want_a, atol=1e-5) and torch.allclose(got_v, want_v, atol=1e-5)
        assert bundle.config["heads"]["v2a"]["space"] == obj.export_heads()["v2a"]["space"]
