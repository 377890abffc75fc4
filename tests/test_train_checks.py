"""Checks before the first step (``avssl.train_checks``, ``AVObjective.check_before_fit``) and
``train_split: auto``: each bad run stops with one line, exit 2, and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_recipes import RECIPES, debug_args

from avssl import cli
from avssl.data.datamodule import AVDataModule
from avssl.data.shards import DataSource
from tests.data_prep.prep_helpers import write_clip
from tests.export.export_fakes import flip_member_bytes


@pytest.fixture(autouse=True)
def _fresh_run_id(monkeypatch):
    monkeypatch.delenv("AVSSL_RUN_ID", raising=False)


def _error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def _pretrain_args(shards: Path, runs: Path, *opts: str, recipe: str = "mavil") -> list[str]:
    args = ["pretrain", "--recipe", recipe, "--data", str(shards), "--runs", str(runs), *opts]
    return args + ["--", "--config", str(RECIPES / "debug.yaml")]


def _fake_checkpoint(path: Path, objective: str, recipe: str, **hp) -> Path:
    meta = {"objective": f"avssl.objectives.{objective}", "recipe": recipe}
    torch.save({"state_dict": {}, "avssl": meta, "hyper_parameters": hp}, path)
    return path


def test_resuming_another_recipes_checkpoint_is_refused(shards, tmp_path, capsys):
    """Lightning would take the other run's objective from the checkpoint and train it under
    this recipe's name; the run stops before that."""
    other = _fake_checkpoint(tmp_path / "vatt.ckpt", "contrastive.AVContrastive", "vatt")
    runs = tmp_path / "runs"
    err = _error(capsys, _pretrain_args(shards, runs, "--resume", str(other)))
    assert err.endswith(
        f"cannot resume {other}: it is a checkpoint of recipe vatt (AVContrastive), this run is "
        "recipe mavil; resume it with RECIPE=vatt"
    )
    assert not runs.exists()


def test_resuming_with_other_model_options_is_refused(shards, tmp_path, capsys):
    """LightningCLI takes a resumed run's model settings from the checkpoint: an option that
    would change one is refused instead of being dropped."""
    from avssl.train_checks import check_resume, model_options

    ckpt = _fake_checkpoint(
        tmp_path / "m.ckpt", "mavil.MAViL", "mavil", depth=2, lr=None, betas=(0.9, 0.95)
    )
    runs = tmp_path / "runs"
    args = _pretrain_args(shards, runs, "--resume", str(ckpt)) + ["--model.init_args.depth", "3"]
    assert _error(capsys, args).endswith(
        f"--model.init_args.depth 3: a resumed run keeps its checkpoint's model settings "
        f"(depth=2 in {ckpt}); start a new run to change it"
    )
    assert not runs.exists()
    same = ["--model.init_args.depth=2", "--model.lr", "null", "--model.betas=[0.9, 0.95]"]
    check_resume(str(ckpt), "mavil", same)  # the checkpoint's own settings pass
    with pytest.raises(cli.UserError, match=r"--model.init_args.lr 0.5: .*\(lr=None in "):
        check_resume(str(ckpt), "mavil", ["--model.lr=0.5"])
    args = ["--model.init_args.depth=4", "--model.lr", "1e-3", "--trainer.x", "1"]
    args += ["--model.class_path", "x", "--model.init_args.augment.flip_p", "0"]
    assert model_options(args) == {"depth": 4, "lr": 1e-3}


def test_a_bad_augmentation_value_fails_before_training(shards, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = _pretrain_args(shards, runs) + ["--data.init_args.augment.hue", "abc"]
    want = "augmentation option hue must be a number, got 'abc' (str)"
    assert _error(capsys, args).endswith(want)
    args = _pretrain_args(shards, runs) + ["--data.init_args.augment.flip", "0"]
    assert "unknown augmentation option 'flip'" in _error(capsys, args)
    assert not runs.exists()


def test_resuming_a_file_that_is_no_checkpoint_is_refused(shards, tmp_path, capsys):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    want = f"{text}: not a checkpoint (not the zip archive torch.save writes)"
    runs = tmp_path / "runs"
    assert _error(capsys, _pretrain_args(shards, runs, "--resume", str(text))).endswith(want)
    for flag in (["--ckpt_path", str(text)], [f"--ckpt_path={text}"]):  # avssl fit, both forms
        assert _error(capsys, debug_args("mavil", shards, runs, *flag)).endswith(want)
    assert not runs.exists()


def test_stage2_teacher_must_be_a_stage1_mavil_checkpoint(shards, tmp_path, capsys):
    runs = tmp_path / "runs"

    def err_for(teacher: Path) -> str:
        args = debug_args("mavil_stage2", shards, runs, f"--model.init_args.teacher_ckpt={teacher}")
        err = _error(capsys, args)
        assert "Union subtypes" not in err and "Namespace(" not in err  # the cause only
        return err

    missing = tmp_path / "missing.ckpt"
    assert err_for(missing).endswith(
        f"MAViL stage 2: teacher_ckpt {missing}: file not found; pass a stage-1 MAViL checkpoint "
        "(model.init_args.teacher_ckpt)"
    )
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert err_for(text).endswith(f"teacher_ckpt {text}: not a checkpoint (no torch.save archive)")
    xkd = _fake_checkpoint(tmp_path / "xkd.ckpt", "xkd.XKD", "xkd", depth=2)
    assert err_for(xkd).endswith(f"teacher_ckpt {xkd}: a checkpoint of XKD, not of MAViL stage 1")
    stage2 = _fake_checkpoint(tmp_path / "s2.ckpt", "mavil.MAViL", "mavil_stage2", stage=2)
    assert err_for(stage2).endswith("a checkpoint of MAViL stage 2, not of MAViL stage 1")
    damaged = tmp_path / "s1.ckpt"  # a stage-1 checkpoint whose tensor bytes changed
    torch.save(
        {"state_dict": {"w": torch.arange(4096.0)}, "avssl": {}, "hyper_parameters": {}}, damaged
    )
    member = flip_member_bytes(damaged)
    assert err_for(damaged).endswith(
        f"teacher_ckpt {damaged}: damaged checkpoint: archive member {member} does not match its "
        "CRC-32 (the file changed after it was written); use an intact copy or another "
        "checkpoint of the run"
    )
    assert not runs.exists()


def test_audio_visual_objective_on_data_without_audio_is_refused(tmp_path, capsys):
    """Prepared clips without an audio track: every audio and cross-modal term would be 0."""
    import data_prep

    root = tmp_path / "clips"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            write_clip(root / cls / f"c{i}.mp4", audio_rate=None)
    out = tmp_path / "noaudio"
    quiet = dict(progress=False, log=lambda msg: None)
    data_prep.prepare_dataset("folder", root, None, out, layout="classes", **quiet)
    assert json.loads((out / "stats.json").read_text())["num_clips"] == 0
    runs = tmp_path / "runs"
    for recipe, name in (("vatt", "AVContrastive"), ("mavil", "MAViL")):
        err = _error(capsys, _pretrain_args(out, runs, recipe=recipe))
        assert err.endswith(
            f"{name} trains on audio and video, but no sample in {out} has audio (shards looked "
            "at: 1 of 1); choose data with both"
        )
    assert not runs.exists()


def test_audio_visual_objective_on_audio_only_data_is_refused(shards, tmp_path, capsys):
    """Shards without any video member (an audio-only AudioSet mirror, ESC-50, sound files)."""
    from tests.data.conftest import rewrite

    data = rewrite(
        shards, tmp_path / "audio_only", lambda s, i: {k: v for k, v in s.items() if k != "mp4"}
    )
    n = len(json.loads((data / "manifest.json").read_text())["shards"])
    err = _error(capsys, _pretrain_args(data, tmp_path / "runs", recipe="xkd"))
    assert err.endswith(
        f"XKD trains on audio and video, but no sample in {data} has video (shards looked at: "
        f"{n} of {n}); choose data with both"
    )
    assert not (tmp_path / "runs").exists()


def test_modalities_present_looks_at_shards_spread_over_the_data(shards, monkeypatch):
    import avssl.data.shards as shards_mod
    from avssl import train_checks

    read = []
    monkeypatch.setattr(shards_mod, "index_tar", lambda p: read.append(p) or [("k", {"mp4": 0})])
    names = [f"s{i:02d}.tar" for i in range(20)]
    assert train_checks.modalities_present(names, look_at=4) == {"audio": False, "video": True}
    assert read == ["s00.tar", "s06.tar", "s13.tar", "s19.tar"]  # first, last, evenly between
    read.clear()
    monkeypatch.setattr(
        shards_mod, "index_tar", lambda p: read.append(p) or [("k", {"wav": 0, "f000.jpg": 0})]
    )
    assert train_checks.modalities_present(names) == {"audio": True, "video": True}
    assert read == ["s00.tar"]  # stops once both are found


BAL, UNBAL = "balanced_train_segments", "unbalanced_train_segments"


@pytest.mark.parametrize(
    "dataset,splits,want",
    [
        ("ucf101", {"train1": 9, "test1": 3}, "train1"),
        ("vggsound", {"train": 5, "test": 2}, "train"),
        ("kinetics_sounds", {"train": 5, "val": 2}, "train"),
        ("audioset", {BAL: 5, "eval_segments": 2}, BAL),
        ("audioset", {UNBAL: 9, BAL: 5}, UNBAL),
        ("audioset", {UNBAL: 0, BAL: 5}, BAL),  # an empty split does not count
        ("folder", {"all": 9, "train": 7, "test": 2}, "train"),
        ("folder", {"all": 9}, None),
        ("esc50", {"fold1": 4, "fold2": 4}, None),
        ("nope", {"train": 4}, None),
    ],
)  # fmt: skip
def test_auto_train_split_is_the_datasets_training_split(dataset, splits, want):
    source = DataSource([], Path("."), {"dataset": dataset, "splits": splits})
    assert source.auto_train_split() == want


def test_datamodule_resolves_auto_and_keeps_a_named_split(shards, tmp_path):
    dm = AVDataModule(str(shards), batch_size=2, num_workers=0)
    assert dm.hparams["train_split"] == "train1"  # synthetic: UCF101's layout
    assert dm.table(dm.hparams["train_split"]).num_samples == 9
    assert AVDataModule(str(shards), train_split="test1").hparams["train_split"] == "test1"
    pattern = str(shards / "shards" / "*.tar")  # the manifest is found beside the shards
    assert AVDataModule(pattern, batch_size=2, num_workers=0).hparams["train_split"] == "train1"
    alone = tmp_path / "alone.tar"  # a shard without its folder: every sample
    shutil.copyfile(next((shards / "shards").glob("*.tar")), alone)
    bare = AVDataModule(str(alone), batch_size=2, num_workers=0)
    assert bare.source.root is None and bare.hparams["train_split"] is None
    assert bare.table(None).num_samples == 6  # shard_size 6


def test_broken_manifest_or_missing_shard_names_the_file(shards, tmp_path, capsys):
    """The cause itself, without the validation wrapper of the data module's class path."""
    data = tmp_path / "data"
    shutil.copytree(shards, data)
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text("{oops")
    err = _error(capsys, _pretrain_args(data, tmp_path / "runs"))
    assert err.startswith(f"avssl pretrain: error: bad configuration: {data / 'manifest.json'} ")
    assert "is not valid JSON" in err and "Union" not in err and "Namespace(" not in err
    (data / "manifest.json").write_text(json.dumps(manifest))
    gone = data / manifest["shards"][1]["file"]
    gone.unlink()
    err = _error(capsys, _pretrain_args(data, tmp_path / "runs"))
    assert err.endswith(f"bad configuration: {data / 'manifest.json'} lists missing shard {gone}")
    assert not (tmp_path / "runs").exists()


def test_xkd_gets_its_local_views_from_the_data_module(shards, caplog):
    from avssl.objectives.xkd import XKD
    from avssl.train_checks import link_local_view

    dm = AVDataModule(str(shards), num_frames=8, crop_size=64, audio_frames=128, num_workers=0)
    model = XKD(size="tiny", depth=1, tubelet_size=2, local_views=True, head_out_dim=64)
    with caplog.at_level("INFO"):
        link_local_view(model, dm)
    assert dm.local_view == model.local_view_spec(8, 64, 128)
    assert (dm.local_view.frames, dm.local_view.size, dm.local_view.audio_frames) == (2, 48, 32)
    assert "[data] local views of the training clips: 2 frames at 48 px" in caplog.text
    link_local_view(XKD(size="tiny", depth=1, local_views=False, head_out_dim=64), dm)
    assert dm.local_view is None  # an objective that asks for none gets none
    link_local_view(model, object())  # a data module without request_local_view: nothing


def test_xkd_local_views_with_mismatched_audio_are_refused(shards, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = _pretrain_args(shards, runs, recipe="xkd") + [
        "--data.init_args.audio_mode", "mismatched",
    ]  # fmt: skip
    assert _error(capsys, args).endswith("XKD: local views do not go with audio_mode 'mismatched'")
    assert not runs.exists()


@pytest.mark.parametrize(
    "recipe, objective, why",
    [
        ("avid", "AVContrastive", "its memory NCE needs each clip's memory row"),
    ],
)
def test_val_split_for_an_objective_without_validation_loss_is_refused(
    recipe, objective, why, shards, tmp_path, capsys
):
    runs = tmp_path / "runs"
    args = _pretrain_args(shards, runs, recipe=recipe) + ["--data.init_args.val_split", "test1"]
    err = _error(capsys, args)
    assert f"{objective} has no validation loss ({why}" in err
    assert err.endswith("); drop data.init_args.val_split ('test1')")
    assert not runs.exists()


def test_val_split_needs_a_clip_per_rank(shards):
    from avssl.objectives.xkd import XKD
    from avssl.train_checks import check_validation

    dm = AVDataModule(str(shards), val_split="test1", num_workers=0)  # 3 clips
    model = XKD(size="tiny", depth=1, head_out_dim=64)
    check_validation(model, dm, world=3)  # one each: fine
    with pytest.raises(cli.UserError, match=r"val_split 'test1' has 3 clip\(s\) for 4 ranks"):
        check_validation(model, dm, world=4)
    check_validation(model, AVDataModule(str(shards), num_workers=0), world=4)  # no val_split


@pytest.mark.slow
def test_fit_refuses_a_checkpoint_of_another_recipe_or_objective(shards, tmp_path, capsys):
    """``avssl fit --ckpt_path`` runs as ``make pretrain`` does: LightningCLI would replace the
    configured objective by the checkpoint's and train it under this recipe's name."""
    runs = tmp_path / "runs"
    first = debug_args("mavil", shards, runs, "--trainer.max_steps=1")
    assert cli.main([*first, "--trainer.logger.init_args.version=m"]) == 0
    mavil = runs / "mavil" / "m" / "checkpoints" / "last.ckpt"
    err = _error(capsys, debug_args("vatt", shards, runs, "--ckpt_path", str(mavil)))
    assert err.endswith(
        f"cannot resume {mavil}: it is a checkpoint of recipe mavil (MAViL), this run is recipe "
        "vatt; resume it with RECIPE=mavil"
    )
    own = tmp_path / "mine" / "mavil.yaml"  # a recipe file of that name, another objective
    own.parent.mkdir()
    own.write_text((RECIPES / "vatt.yaml").read_text())
    args = debug_args("mavil", shards, runs, f"--ckpt_path={mavil}")
    args[args.index(str(RECIPES / "mavil.yaml"))] = str(own)
    assert _error(capsys, args).endswith(
        f"cannot resume {mavil}: it is a checkpoint of objective avssl.objectives.mavil.MAViL, "
        "the config's model.class_path is avssl.objectives.contrastive.AVContrastive; resume it "
        "with the config of its own recipe"
    )
    assert _names(runs) == ["mavil"] and _names(runs / "mavil") == ["m"]
    longer = tmp_path / "longer.yaml"  # an overrides file after the recipe: still mavil's run
    longer.write_text("trainer:\n  max_steps: 2\n")
    args = debug_args("mavil", shards, runs, "-c", str(longer), "--ckpt_path", str(mavil))
    assert cli.main(args) == 0  # named after the checkpoint's recipe, not the overrides file
    assert _names(runs) == ["mavil"]
    (resumed,) = set((runs / "mavil").glob("*/checkpoints/last.ckpt")) - {mavil}
    ckpt = torch.load(resumed, weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["avssl"]["recipe"] == "mavil"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_resuming_a_damaged_checkpoint_is_refused(shards, tmp_path, capsys):
    """torch.load does not check the archive's CRCs: damaged bytes would be trained on."""
    from tests.export.export_fakes import flip_member_bytes

    ckpt = tmp_path / "last.ckpt"
    meta = {"objective": "avssl.objectives.mavil.MAViL", "recipe": "mavil"}
    torch.save({"state_dict": {"w": torch.arange(10_000.0)}, "avssl": meta}, ckpt)
    member = flip_member_bytes(ckpt)
    want = (
        f"{ckpt}: damaged checkpoint: archive member {member} does not match its CRC-32 (the file "
        "changed after it was written); use an intact copy or another checkpoint of the run"
    )
    runs = tmp_path / "runs"
    assert _error(capsys, _pretrain_args(shards, runs, "--resume", str(ckpt))).endswith(want)
    args = debug_args("mavil", shards, runs, "--ckpt_path", str(ckpt))
    assert _error(capsys, args).endswith(want)
    assert not runs.exists()
