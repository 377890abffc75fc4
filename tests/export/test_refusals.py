"""Bad input is refused with one clear line (exit 2), and loading never runs code from a file."""

from __future__ import annotations

import json
import pickle
import zipfile

import pytest
import torch

from avssl import export
from avssl.cli import UserError
from avssl.cli import main as cli_main
from tests.export.export_fakes import fake_checkpoint, flip_member_bytes


class WritesMarker:
    """Unpickling this runs ``exec``: it writes a marker file (the attack being refused)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def export_error(capsys, ckpt, out) -> str:
    """Runs ``avssl export`` through the CLI; returns its one-line error (asserting exit 2)."""
    assert cli_main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avssl export: error: ") and "\n" not in err
    return err


def test_pickled_code_is_refused_and_never_runs(fake_objectives, tmp_path, capsys):
    # the payload is live: plain pickle does run it
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(WritesMarker(str(control))))
    assert control.read_text() == "pwned"

    marker = tmp_path / "marker"
    ckpt = fake_checkpoint(fake_objectives.AudioOnly(), "AudioOnly")
    ckpt["avssl"]["recipe"] = WritesMarker(str(marker))
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    err = export_error(capsys, path, tmp_path / "out")
    assert f"refusing to unpickle {path}" in err and "the Python object exec" in err
    with pytest.raises(UserError, match="refusing to unpickle"):
        export.load_encoder(path)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_foreign_lightning_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 0, "global_step": 3}, path)
    assert "not an avssl checkpoint" in export_error(capsys, path, tmp_path / "o")
    torch.save({"model": {"w": torch.ones(2)}}, path)  # a plain torch state, not Lightning
    assert "not a Lightning checkpoint" in export_error(capsys, path, tmp_path / "o")


@pytest.mark.parametrize(
    "objective",
    ["os.system", "avssl.models.vit.AudioViT", "avssl.objectives", "avssl.objectives.x.os.path"],
)
def test_objective_outside_avssl_objectives_is_refused(fake_objectives, tmp_path, objective):
    ckpt = fake_checkpoint(fake_objectives.AudioOnly(), "AudioOnly")
    ckpt["avssl"]["objective"] = objective
    path = tmp_path / "x.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="objective|not an avssl objective class|not found"):
        export.export_checkpoint(path, tmp_path / "o")


def test_missing_and_unreadable_paths(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    assert "nope.ckpt: no such checkpoint" in export_error(capsys, missing, tmp_path / "o")
    with pytest.raises(UserError, match="no such encoder bundle or checkpoint"):
        export.load_encoder(tmp_path / "nowhere")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    err = export_error(capsys, garbage, tmp_path / "o")
    assert err.endswith("garbage.ckpt: not a checkpoint (not the zip archive torch.save writes)")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:  # a zip, but not torch.save's
        z.writestr("notes.txt", "hello")
    assert "not a readable torch checkpoint" in export_error(
        capsys, tmp_path / "other.zip", tmp_path / "o"
    )
    assert "is a folder" in export_error(capsys, tmp_path, tmp_path / "o")


def test_newer_bundle_format_is_refused(save_fake, tmp_path):
    _, ckpt = save_fake("AudioOnly")
    out = tmp_path / "b"
    export.export_checkpoint(ckpt, out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format_version"] == 1  # no head stored inside another: older avssl reads it
    cfg["format_version"] = export.FORMAT_VERSION + 1
    (out / "config.json").write_text(json.dumps(cfg))
    newer = f"format_version {export.FORMAT_VERSION + 1} is newer than this avssl reads"
    with pytest.raises(UserError, match=newer):
        export.load_encoder(out)


def test_checkpoint_missing_encoder_weights_is_refused(fake_objectives, tmp_path):
    obj = fake_objectives.TwoTower()
    ckpt = fake_checkpoint(obj, "TwoTower")
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if "teacher_video" not in k}
    path = tmp_path / "partial.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="lacks weights of the exported encoder"):
        export.export_checkpoint(path, tmp_path / "o")


def test_bundle_with_swapped_weight_files_names_the_mismatch(save_fake, tmp_path):
    """The audio and video weight files swapped: the error says which weights do not fit."""
    _, ckpt = save_fake("TwoTower")
    out = tmp_path / "b"
    export.export_checkpoint(ckpt, out)
    a, v = out / "audio_encoder.safetensors", out / "video_encoder.safetensors"
    a.rename(tmp_path / "a"), v.rename(a), (tmp_path / "a").rename(v)
    with pytest.raises(UserError) as caught:
        export.load_encoder(out)
    msg = str(caught.value)
    assert "\n" not in msg and "cannot rebuild the audio encoder: Error(s) in loading" in msg
    assert "size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg


def test_export_into_a_dataset_or_checkpoint_folder_is_refused(save_fake, tmp_path, capsys):
    _, ckpt = save_fake("AudioOnly")
    data = tmp_path / "shards"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    assert export_error(capsys, ckpt, data).endswith(
        f"{data}: holds a prepared dataset; export the bundle into a folder of its own"
    )
    assert sorted(p.name for p in data.iterdir()) == ["manifest.json"]
    runs = ckpt.parent  # the checkpoint's own folder
    assert export_error(capsys, ckpt, runs).endswith(f"{runs}: holds checkpoints; export the "
                                                     "bundle into a folder of its own")  # fmt: skip


def test_damaged_checkpoint_is_refused_naming_the_member(save_fake, tmp_path, capsys):
    """Bytes changed inside a tensor of the archive: torch.load reads them as other weights
    (the export succeeded with weights off by up to 115); the CRC check refuses the file."""
    _, ckpt = save_fake("TwoTower")
    member = flip_member_bytes(ckpt)
    out = tmp_path / "out"
    assert export_error(capsys, ckpt, out).endswith(
        f"{ckpt}: damaged checkpoint: archive member {member} does not match its CRC-32 (the file "
        "changed after it was written); use an intact copy or another checkpoint of the run"
    )
    assert not out.exists()
    with pytest.raises(UserError, match=f"damaged checkpoint: archive member {member} "):
        export.load_encoder(ckpt)
