"""Checkpoint -> bundle -> encoders: exact round trip, every export_encoders() shape, CLI, hub."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import avssl
from avssl import export
from avssl.cli import main as cli_main
from tests.data_prep.prep_helpers import write_clip
from tests.export.export_fakes import AUDIO_FRAMES, CROP, MEL_BINS, NUM_FRAMES

REPO = Path(__file__).resolve().parents[2]


def inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "audio": torch.randn(batch, 1, AUDIO_FRAMES, MEL_BINS, generator=gen),
        "video": torch.randn(batch, 3, NUM_FRAMES, CROP, CROP, generator=gen),
    }


def from_checkpoint_file(cls: type, path: Path, **init) -> dict:
    """The encoders as they are inside the checkpoint: objective rebuilt + state_dict loaded."""
    obj = cls(**init)
    obj.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    return obj.eval().export_encoders()


def max_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def test_bundle_features_equal_checkpoint_exactly(save_fake, fake_objectives, tmp_path, capsys):
    obj, ckpt = save_fake("TwoTower", seed=1, depth=2)
    out = tmp_path / "bundle"
    assert export.main(["--ckpt", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "audio_encoder.safetensors", "config.json", "video_encoder.safetensors"
    ]  # fmt: skip
    assert f"wrote {out / 'video_encoder.safetensors'}" in printed and "avssl.embed(enc" in printed

    reference = from_checkpoint_file(fake_objectives.TwoTower, ckpt, depth=2)
    bundle = avssl.load_encoder(out)
    x = inputs()
    for modality in ("audio", "video"):
        enc = getattr(bundle, modality)
        assert not enc.training and not any(p.requires_grad for p in enc.parameters())
        assert max_diff(enc, reference[modality], x[modality]) == 0.0
    # the teacher was exported, not the student (they hold different random weights)
    assert max_diff(bundle.audio, obj.audio_encoder, x["audio"]) > 1e-3
    assert bundle.embed_dim == {"audio": 192, "video": 192}


def test_config_json_contents(save_fake, tmp_path):
    _, ckpt = save_fake("TwoTower")
    out = tmp_path / "b"
    export.export_checkpoint(ckpt, out)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["format"], cfg["format_version"]) == ("avssl-encoder-bundle", 1)
    assert cfg["audio"]["modality"] == "audio" and cfg["video"]["depth"] == 1
    prov = cfg["provenance"]
    assert prov["objective"] == "avssl.objectives._export_fakes.TwoTower"
    assert (prov["recipe"], prov["step"], prov["epoch"]) == ("fake", 17, 2)
    assert prov["encoder"] == {"which": "teacher", "note": "EMA teacher, as the paper evaluates"}
    assert prov["avssl_version"] == "0.1.0" and prov["format_version"] == 1
    assert len(prov["checkpoint_sha256"]) == 64 and prov["hyper_parameters"]["depth"] == 1
    prep = cfg["preprocessing"]
    audio = prep["fbank"]
    assert (audio["target_frames"], audio["num_mel_bins"], audio["mean"]) == (64, 32, -5.0)
    assert (audio["std"], audio["norm"]) == (4.0, "audiomae")
    assert (prep["num_frames"], prep["frame_stride"], prep["crop_size"]) == (4, 2, 32)
    assert prep["video_mean"] == [0.45, 0.45, 0.45] and prep["video_std"] == [0.225] * 3
    assert prep["assumed"] == [] and prep["target_fps"] is None


def test_missing_settings_are_assumed_and_listed(save_fake, tmp_path, capsys):
    _, ckpt = save_fake("TwoTower", data={"num_frames": 4, "crop_size": 32})
    export.export_checkpoint(ckpt, tmp_path / "b")
    prep = export.load_encoder(tmp_path / "b").preprocessing
    assert "video_mean" in prep["assumed"] and "fbank.mean" in prep["assumed"]
    assert prep["video_mean"] == [0.485, 0.456, 0.406] and prep["fbank"]["mean"] == -4.2677
    assert "does not record" in capsys.readouterr().out


def test_load_encoder_accepts_training_checkpoint(save_fake, fake_objectives):
    _, ckpt = save_fake("TwoTower", seed=3)
    bundle = export.load_encoder(ckpt)
    reference = from_checkpoint_file(fake_objectives.TwoTower, ckpt)
    x = inputs(seed=1)
    assert max_diff(bundle.video, reference["video"], x["video"]) == 0.0
    assert bundle.provenance["encoder"]["which"] == "teacher"


def test_audio_only_objective_and_stale_files(save_fake, tmp_path):
    _, two = save_fake("TwoTower")
    _, audio_only = save_fake("AudioOnly")
    out = tmp_path / "b"
    export.export_checkpoint(two, out)
    export.export_checkpoint(audio_only, out)  # same folder: the old video weights must go
    assert not (out / "video_encoder.safetensors").exists()
    bundle = export.load_encoder(out / "config.json")
    assert bundle.video is None and bundle.config["video"] is None
    assert bundle.embed_dim["video"] is None


def test_shared_backbone_written_for_both(save_fake, tmp_path):
    obj, ckpt = save_fake("Shared", seed=2)
    out = tmp_path / "b"
    export.export_checkpoint(ckpt, out)
    bundle = export.load_encoder(out)
    assert bundle.provenance["shared_backbone"] is True
    x = inputs()["video"]
    assert max_diff(bundle.audio, obj.encoder, x) == 0.0
    assert max_diff(bundle.video, obj.encoder, x) == 0.0


def test_cli_dispatch_and_usage_errors(save_fake, tmp_path, capsys):
    _, ckpt = save_fake("TwoTower")
    assert cli_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "config.json").is_file()
    capsys.readouterr()
    old = os.umask(0o022)
    try:  # bundle files readable by others (safetensors itself writes 0600)
        assert cli_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "o")]) == 0
    finally:
        os.umask(old)
    out = capsys.readouterr().out  # the second export into "o" says what it replaced
    assert f"[export] replaced the bundle that was in {tmp_path / 'o'} ({ckpt.name}, recipe" in out
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "o").iterdir()}
    assert modes == {"config.json": 0o644, "audio_encoder.safetensors": 0o644,
                     "video_encoder.safetensors": 0o644}  # fmt: skip
    assert cli_main(["export", "--ckpt", "", "--out", str(tmp_path / "p")]) == 2
    assert "--ckpt is required" in capsys.readouterr().err


LIGHTNING_CHECK = """
import sys
import avssl
bundle = avssl.load_encoder(sys.argv[1])
assert bundle.video is not None
assert avssl.embed(bundle, sys.argv[2])["video"].shape == (bundle.embed_dim["video"],)
names = ("pytorch_lightning", "lightning", "lightning_fabric")
loaded = sorted(m for m in names if m in sys.modules)
print("LIGHTNING", loaded)
"""


def test_loading_and_embedding_do_not_import_lightning(save_fake, tmp_path):
    _, ckpt = save_fake("TwoTower")
    export.export_checkpoint(ckpt, tmp_path / "b")
    run = [sys.executable, "-c", LIGHTNING_CHECK]
    clip = write_clip(tmp_path / "clip.mp4")  # a small H.264 + AAC file: decoding included
    res = subprocess.run([*run, str(tmp_path / "b"), str(clip)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert "LIGHTNING []" in res.stdout
    # control: the same probe does see Lightning when a checkpoint (objective) is loaded
    probe = LIGHTNING_CHECK.replace(
        "import avssl\n", "import avssl, tests.export.export_fakes as f; f.register()\n"
    )
    res = subprocess.run([sys.executable, "-c", probe, str(ckpt), str(clip)], capture_output=True,
                         text=True, check=True, cwd=REPO)  # fmt: skip
    assert "'pytorch_lightning'" in res.stdout


HUB_WITHOUT_INSTALL = """
import importlib.util, sys
assert importlib.util.find_spec("avssl") is None
import torch
bundle = torch.hub.load(sys.argv[1], "load_encoder", path=sys.argv[2], source="local")
print("HUB", type(bundle).__name__, bundle.embed_dim["audio"])
"""


def test_torch_hub_local(save_fake, tmp_path):
    _, ckpt = save_fake("TwoTower", seed=4)
    out = tmp_path / "b"
    export.export_checkpoint(ckpt, out)
    hub = torch.hub.load(str(REPO), "load_encoder", path=str(out), source="local")
    direct = export.load_encoder(out)
    x = inputs()
    assert type(hub).__name__ == "EncoderBundle"
    assert max_diff(hub.audio, direct.audio, x["audio"]) == 0.0
    # a plain checkout, avssl not installed: hubconf.py finds src/ itself. -S skips the .pth
    # files that install avssl; PYTHONPATH still gives torch and the other dependencies.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    cmd = [sys.executable, "-S", "-c", HUB_WITHOUT_INSTALL, str(REPO), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert "HUB EncoderBundle 192" in res.stdout, res.stderr[-2000:]


HUB_OTHER_CHECKOUT = """
import sys, torch
bundle = torch.hub.load(sys.argv[1], "load_encoder", path=sys.argv[2], source="local")
print("AVSSL", sys.modules["avssl"].__file__)
"""


def test_torch_hub_uses_the_checkout_it_is_given(save_fake, tmp_path):
    """avssl is installed (this checkout); hub.load of another checkout uses that one's code."""
    _, ckpt = save_fake("TwoTower")
    export.export_checkpoint(ckpt, tmp_path / "b")
    other = tmp_path / "other"
    shutil.copytree(REPO / "src", other / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(REPO / "hubconf.py", other / "hubconf.py")
    cmd = [sys.executable, "-c", HUB_OTHER_CHECKOUT, str(other), str(tmp_path / "b")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert f"AVSSL {other / 'src' / 'avssl' / '__init__.py'}" in res.stdout, res.stderr[-2000:]


@pytest.mark.parametrize("shape", ["missing_weights", "bad_json", "not_a_bundle"])
def test_broken_bundles_are_refused(save_fake, tmp_path, shape):
    _, ckpt = save_fake("TwoTower")
    out = tmp_path / "b"
    export.export_checkpoint(ckpt, out)
    if shape == "missing_weights":
        (out / "audio_encoder.safetensors").unlink()
        expected = "audio_encoder.safetensors: missing"
    elif shape == "bad_json":
        (out / "config.json").write_text("{oops")
        expected = "not valid JSON"
    else:
        (out / "config.json").write_text(json.dumps({"format": "something-else"}))
        expected = "not an avssl encoder bundle"
    with pytest.raises(avssl.cli.UserError, match=expected):
        export.load_encoder(out)
