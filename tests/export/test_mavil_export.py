"""Export of real MAViL checkpoints: stage 1 trained for a few steps (recipes/debug.yaml sizes),
and a stage-2 checkpoint built from it; exact features, ONNX and embed on a real clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import avssl
from avssl import export
from avssl.cli import main as cli_main
from tests.media import MEDIA

pytestmark = pytest.mark.slow
MEDIA_CLIP = MEDIA / "audioset_clip_h264_aac.mp4"


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory) -> Path:
    from tests import test_recipes as recipes

    shards = recipes.build_tiny_shards(tmp_path_factory.getbasetemp())
    cached = recipes._LAST.get("mavil")  # reuse when test_recipes trained it in this session
    return cached or recipes.run_recipe("mavil", shards, tmp_path_factory.mktemp("mavil_runs"))


def rebuilt_encoders(path: Path) -> tuple[dict, torch.nn.Module]:
    """The encoders inside a checkpoint, rebuilt by hand (MAViL + its state_dict)."""
    from avssl.objectives.mavil import MAViL

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    obj = MAViL(**hp)
    obj.load_state_dict(ckpt["state_dict"])
    return obj.eval().export_encoders(), obj


def inputs(prep: dict, batch: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    fb, s = prep["fbank"], prep["crop_size"]
    return {
        "audio": torch.randn(batch, 1, fb["target_frames"], fb["num_mel_bins"], generator=gen),
        "video": torch.randn(batch, 3, prep["num_frames"], s, s, generator=gen),
    }


def test_stage1_export_exact_onnx_and_embed(stage1_ckpt, tmp_path, capsys):
    out = tmp_path / "encoders" / "mavil"
    assert cli_main(["export", "--ckpt", str(stage1_ckpt), "--out", str(out), "--onnx"]) == 0
    printed = capsys.readouterr().out
    assert "exported the student encoders" in printed and "avssl.load_encoder(" in printed
    bundle = avssl.load_encoder(out)
    prov = bundle.provenance
    assert (prov["objective"], prov["recipe"], prov["step"]) == (
        "avssl.objectives.mavil.MAViL", "mavil", 4
    )  # fmt: skip
    assert bundle.preprocessing["crop_size"] == 64 and bundle.preprocessing["assumed"] == []
    assert bundle.preprocessing["fbank"]["target_frames"] == 128  # debug.yaml
    reference, _ = rebuilt_encoders(stage1_ckpt)

    import onnxruntime as ort

    for modality in ("audio", "video"):
        enc = getattr(bundle, modality)
        session = ort.InferenceSession(str(out / f"{modality}_encoder.onnx"))
        for batch in (1, 4):
            x = inputs(bundle.preprocessing, batch)[modality]
            with torch.no_grad():
                mine, theirs = enc(x), reference[modality](x)
            assert float((mine - theirs).abs().max()) == 0.0  # CPU fp32: bit-identical
            (onnx_out,) = session.run(["embedding"], {modality: x.numpy()})
            assert np.abs(onnx_out - mine.numpy()).max() <= 1e-4
    if not MEDIA_CLIP.is_file():
        pytest.skip("shared/media not available: the bundle's embed of a real clip not checked")
    emb = avssl.embed(out, MEDIA_CLIP)
    assert emb["audio"].shape == (192,) and emb["video"].shape == (192,)


def test_stage2_exports_the_student(stage1_ckpt, tmp_path):
    from avssl.objectives.mavil import MAViL

    s1 = torch.load(stage1_ckpt, map_location="cpu", weights_only=True)
    hp = {k: v for k, v in s1["hyper_parameters"].items() if not k.startswith("_")}
    obj = MAViL(**{**hp, "stage": 2, "teacher_ckpt": str(stage1_ckpt)})
    assert int(obj.teacher_loaded) == 1
    hparams = {**dict(obj.hparams), "teacher_ckpt": str(tmp_path / "gone.ckpt")}
    ckpt = {
        "state_dict": obj.state_dict(),
        "global_step": 9,
        "epoch": 0,
        "hyper_parameters": hparams,
    }
    obj.on_save_checkpoint(ckpt)  # the objective's own provenance block
    ckpt["avssl"]["data"] = s1["avssl"]["data"]
    path = tmp_path / "stage2.ckpt"
    torch.save(ckpt, path)  # its teacher_ckpt no longer exists: export must not need it

    bundle = export.load_encoder(path)
    assert bundle.provenance["encoder"]["which"] == "student"
    assert "stage 2" in bundle.provenance["encoder"]["note"]
    x = inputs(bundle.preprocessing, 2)
    with torch.no_grad():
        assert float((bundle.video(x["video"]) - obj.video_encoder(x["video"])).abs().max()) == 0
        teacher_out = obj.teacher.video(x["video"])
        assert float((bundle.video(x["video"]) - teacher_out).abs().max()) > 1e-4
