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


def _tiny_crisscross():
    from avssl.objectives.crisscross import CrissCross
    from tests.export.export_fakes import AUDIO_FRAMES, CROP, MEL_BINS, NUM_FRAMES

    torch.manual_seed(0)
    return CrissCross(size="tiny", depth=1, audio_frames=AUDIO_FRAMES, num_mel_bins=MEL_BINS,
                      num_frames=NUM_FRAMES, img_size=CROP, proj_dim=16, proj_hidden_dim=16,
                      pred_hidden_dim=8)  # fmt: skip


def _save(obj, name: str, path, drop: str = ""):
    """``obj`` as a Lightning-style checkpoint of objective ``name`` at ``path``, without the
    state_dict entries starting with ``drop``."""
    from tests.export.export_fakes import DATA

    ckpt = {"state_dict": obj.state_dict(), "hyper_parameters": dict(obj.hparams),
            "global_step": 3, "epoch": 0}  # fmt: skip
    obj.on_save_checkpoint(ckpt)
    ckpt["avssl"].update(objective=name, data=DATA)
    if drop:
        ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith(drop)}
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "drop, names",
    [
        ("predictor.audio.", "['predictor.audio.0.weight', "),  # a2v audio head: built on the fly
        ("predictor.video.", "['predictor.video.0.weight', "),  # v2a video head, the same
        ("projector.video.", "['projector.video.0.weight', "),  # a registered head
    ],
)
def test_checkpoint_missing_head_weights_is_refused(tmp_path, capsys, drop, names):
    """CrissCross's audio head is ``nn.Sequential(projector, predictor)``, made by
    ``export_heads()``: a checkpoint without the predictor's weights was exported with a randomly
    initialised predictor (exit 0); every weight of a head is now checked, as an encoder's."""
    obj = _tiny_crisscross()
    cc = "avssl.objectives.crisscross.CrissCross"
    good = _save(obj, cc, tmp_path / "good.ckpt")
    export.export_checkpoint(good, tmp_path / "good")  # the intact checkpoint exports
    path = _save(obj, cc, tmp_path / "partial.ckpt", drop=drop)
    err = export_error(capsys, path, tmp_path / "out")
    what = "v2a head" if drop == "predictor.video." else "head"
    assert f"{path}: checkpoint lacks weights of the exported {what}: {names}" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="lacks weights of the exported"):
        export.load_encoder(path)


def test_exported_weight_that_is_no_weight_of_the_objective_is_refused(fake_objectives, tmp_path):
    """A head holding a tensor the objective does not register (made by ``export_heads()``)
    was never loaded from the checkpoint: refused, as a weight the checkpoint lacks is."""
    from avssl.export_ckpt import _check_loaded

    obj = fake_objectives.AudioOnly()
    norm, fresh = obj.audio_encoder.norm, torch.nn.Linear(4, 4)
    src = tmp_path / "x.ckpt"
    with pytest.raises(UserError, match=r"\['weight of the video encoder \(not a weight of the"):
        _check_loaded(obj, {"audio": obj.audio_encoder, "video": fresh}, set(), src)
    _check_loaded(obj, {"audio": norm, "video": norm}, set(), src, "head")  # all loaded
    with pytest.raises(UserError, match=r"exported head: \['audio_encoder.norm.bias'\]"):
        _check_loaded(obj, {"audio": norm}, {"audio_encoder.norm.bias"}, src, "head")
    with pytest.raises(UserError) as caught:
        _check_loaded(obj, {"audio": norm, "video": fresh}, set(), src, "head")
    assert str(caught.value) == (
        f"{src}: checkpoint lacks weights of the exported head: ['weight of the video head (not "
        "a weight of the objective)', 'bias of the video head (not a weight of the objective)']"
    )


@pytest.mark.parametrize(
    "hparams, why",
    [({"width": 6}, "were its hyper_parameters edited?"),
     (None, "the checkpoint has no hyper_parameters, so the defaults were used")],
)  # fmt: skip
def test_hyper_parameters_that_do_not_fit_the_weights(fake_objectives, tmp_path, capsys,
                                                      hparams, why):  # fmt: skip
    """Weights of another shape than the hyper-parameters build raised the RuntimeError of
    ``load_state_dict`` (a traceback, exit 1); now one line naming the first such tensor."""
    ckpt = fake_checkpoint(fake_objectives.Sized(width=4), "Sized")
    ckpt["hyper_parameters"] = hparams
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    width = 8 if hparams is None else 6
    assert export_error(capsys, path, tmp_path / "o").endswith(
        f"{path}: the weights do not fit the Sized its hyper_parameters build: proj.weight is "
        f"[4, 192] in the checkpoint, [{width}, 192] in the rebuilt objective ({why})"
    )
    with pytest.raises(UserError, match="the weights do not fit the Sized"):
        export.load_encoder(path)


def test_size_mismatch_seen_only_by_load_state_dict_is_one_line(fake_objectives, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    from avssl import export_ckpt

    monkeypatch.setattr(export_ckpt, "_check_shapes", lambda *args: None, raising=False)
    ckpt = fake_checkpoint(fake_objectives.Sized(width=4), "Sized")
    ckpt["hyper_parameters"] = {"width": 6}
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(UserError) as caught:
        export.export_checkpoint(path, tmp_path / "o")
    msg = str(caught.value)
    assert "\n" not in msg and msg.startswith(f"{path}: the weights do not fit the rebuilt ")
    assert "(size mismatch for proj.weight: copying a param with shape" in msg


@pytest.mark.parametrize(
    "objective, message",
    [
        ("avssl.objectives.base.AVObjective",
         "is the abstract base of the objectives, not one; refused"),
        ("avssl.objectives._export_fakes.NoExport",
         "does not implement export_encoders(); nothing to export"),
    ],
)  # fmt: skip
def test_abstract_objective_class_is_refused(fake_objectives, tmp_path, capsys, objective,
                                             message):  # fmt: skip
    """The base class passed ``issubclass(cls, AVObjective)``; its ``export_encoders()`` then
    raised NotImplementedError (a traceback)."""
    ckpt = fake_checkpoint(fake_objectives.AudioOnly(), "AudioOnly")
    ckpt["avssl"]["objective"] = objective
    path = tmp_path / "base.ckpt"
    torch.save(ckpt, path)
    assert export_error(capsys, path, tmp_path / "o").endswith(f"{path}: {objective} {message}")


@pytest.mark.parametrize("cut", ["half", "tail"])
def test_checkpoint_cut_off_mid_save_is_called_truncated(save_fake, tmp_path, capsys, cut):
    """A zip archive without its end (a save killed mid-write, an incomplete copy) was called
    "not a checkpoint"; it is a damaged one. Files that are no zip keep "not a checkpoint"."""
    _, ckpt = save_fake("AudioOnly")
    data = ckpt.read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-100])
    assert export_error(capsys, path, tmp_path / "o").endswith(
        f"{path}: damaged or truncated checkpoint (a zip archive without its end, as a save "
        "killed mid-write or an incomplete copy leaves); use an intact copy or another "
        "checkpoint of the run"
    )
    with pytest.raises(UserError, match="damaged or truncated checkpoint"):
        export.load_encoder(path)
    path.write_bytes(b"")  # empty: no zip at all
    assert export_error(capsys, path, tmp_path / "o").endswith(
        f"{path}: not a checkpoint (not the zip archive torch.save writes)"
    )


def test_run_folder_given_as_checkpoint_names_its_last_ckpt(save_fake, tmp_path, capsys):
    """``runs/<recipe>/<run id>`` (or its ``checkpoints/``) given as the checkpoint: the error
    names the file to pass, ``<folder>/checkpoints/last.ckpt``; hints show that layout."""
    _, ckpt = save_fake("AudioOnly")
    run = tmp_path / "runs" / "fake" / "run1"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(ckpt.read_bytes())
    for folder in (run, run / "checkpoints"):
        assert export_error(capsys, folder, tmp_path / "o").endswith(
            f"{folder}: is a run folder, not a checkpoint file; pass {last}"
        )
    with pytest.raises(UserError, match=f"no config.json\\); a run folder: load or export its "
                       f"checkpoint {last}$"):  # fmt: skip
        export.load_encoder(run)
    assert export_error(capsys, tmp_path / "runs", tmp_path / "o").endswith(
        "is a folder; expected a checkpoint file (e.g. runs/<recipe>/<run id>/checkpoints/"
        "last.ckpt)"
    )
    assert cli_main(["export", "--out", str(tmp_path / "o")]) == 2
    assert "CKPT=runs/<recipe>/<run id>/checkpoints/last.ckpt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["export", "--help"])
    usage = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "training checkpoint (e.g. runs/<recipe>/<run id>/checkpoints/last.ckpt)" in usage
