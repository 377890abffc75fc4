"""``avssl export --onnx``: ONNX graphs with a dynamic batch that match PyTorch in onnxruntime."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from avssl import export

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory, fake_objectives):
    from tests.export.export_fakes import fake_checkpoint, randomize

    tmp = tmp_path_factory.mktemp("onnx")
    obj = fake_objectives.TwoTower(depth=2)
    randomize(obj, 5)
    torch.save(fake_checkpoint(obj, "TwoTower"), tmp / "m.ckpt")
    assert export.main(["--ckpt", str(tmp / "m.ckpt"), "--out", str(tmp / "b"), "--onnx"]) == 0
    return tmp / "b"


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_onnx_matches_pytorch_at_two_batch_sizes(onnx_bundle, modality):
    bundle = export.load_encoder(onnx_bundle)
    enc = getattr(bundle, modality)
    path = onnx_bundle / f"{modality}_encoder.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # symbolic batch
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["avssl_modality"] == modality and meta["avssl_encoder"] == "teacher"
    # the weights are in the .onnx file itself, stored once (no .onnx.data beside it)
    assert model.graph.initializer and all(not t.external_data for t in model.graph.initializer)
    assert not list(onnx_bundle.glob("*.data"))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    prep = bundle.preprocessing
    fb = prep["fbank"]
    crop, frames = prep["crop_size"], prep["num_frames"]
    gen = torch.Generator().manual_seed(11)
    for batch in (2, 5):  # neither is the batch used when exporting (2 traced, 1 and 3 checked)
        if modality == "audio":
            x = torch.randn(batch, 1, fb["target_frames"], fb["num_mel_bins"], generator=gen)
        else:
            x = torch.randn(batch, 3, frames, crop, crop, generator=gen)
        (out,) = session.run(["embedding"], {modality: x.numpy()})
        with torch.no_grad():
            ref = enc(x).numpy()
        assert out.shape == (batch, 192)
        assert np.abs(out - ref).max() <= 1e-4
        assert np.abs(out[0] - out[1]).max() > 1e-3  # rows really differ (not a constant graph)


def test_reexport_without_onnx_removes_stale_onnx_files(onnx_bundle, save_fake, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(onnx_bundle, out)
    assert (out / "video_encoder.onnx").is_file()
    (out / "video_encoder.onnx.data").write_bytes(b"weights of an older export")
    _, audio_only = save_fake("AudioOnly")
    written = export.export_checkpoint(audio_only, out)
    assert not list(out.glob("*.onnx")) and all(p.suffix != ".onnx" for p in written)
    assert not list(out.glob("*.onnx.data"))


@pytest.mark.parametrize("v2a", [False, True])
def test_heads_export_to_onnx(tmp_path, capsys, v2a):
    """A bundle with projection heads gets ``<modality>_head.onnx`` (embedding -> shared space,
    dynamic batch) matching ``bundle.project`` in onnxruntime, and ``<modality>_head_v2a.onnx``
    where it has the video -> audio direction's heads."""
    from avssl.export_onnx import export_onnx
    from tests.evaluators.conftest import write_tiny_bundle

    folder = write_tiny_bundle(tmp_path / "b", heads=16, seed=3, v2a=v2a)
    bundle = export.load_encoder(folder)
    written = {p.name for p in export_onnx(bundle, folder)}
    tags = ("a2v", "v2a") if v2a else ("a2v",)
    want = {
        f"{m}_head{'' if t == 'a2v' else '_v2a'}.onnx" for m in ("audio", "video") for t in tags
    }
    assert {n for n in written if "_head" in n} == want
    assert "video_head.onnx: " in capsys.readouterr().out
    gen = torch.Generator().manual_seed(4)
    for modality, direction in ((m, t) for m in ("audio", "video") for t in tags):
        tag = "" if direction == "a2v" else "_v2a"
        session = ort.InferenceSession(str(folder / f"{modality}_head{tag}.onnx"),
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        x = torch.randn(5, bundle.embed_dim[modality], generator=gen)
        (out,) = session.run(["shared"], {"embedding": x.numpy()})
        ref = bundle.project(modality, x, direction).numpy()
        assert out.shape == (5, 16) and np.abs(out - ref).max() <= 1e-5
