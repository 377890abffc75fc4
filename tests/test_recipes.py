"""Every recipe in recipes/ runs a few steps with debug.yaml sizes on synthetic shards.

One parametrised test: a new ``recipes/<name>.yaml`` is tested without new test code. A recipe
that starts from another run (a null ``*_ckpt`` setting: ``mavil_stage2``'s ``teacher_ckpt``,
``avid_cma``'s ``avid_ckpt``) gets the checkpoint of recipe ``<first word of its name>`` (run
first, or on demand).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from avssl import demo
from avssl.cli import UserError
from avssl.train import NOT_RECIPES, lightning_main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
NAMES = sorted(p.stem for p in RECIPES.glob("*.yaml") if p.stem not in NOT_RECIPES)
DEBUG_STEPS = 4  # recipes/debug.yaml: trainer.max_steps


def build_tiny_shards(base: Path, audio_codec: str = "flac", jpeg_fps: float = 0.0) -> Path:
    """Synthetic shards (3 classes x 4 clips) built once per session under ``base`` (with WAV
    audio or JPEG frames: the same clips, prepared again)."""
    variant = ("" if audio_codec == "flac" else f"_{audio_codec}") + (
        f"_jpeg{jpeg_fps:g}" if jpeg_fps else ""
    )
    out = base / ("avssl_tiny_synthetic" + variant)
    if not (out / "manifest.json").is_file():
        from data_prep import prepare_dataset

        root = base / "avssl_tiny_synthetic" / "raw"
        prepare_dataset(
            "synthetic",
            root=root if root.is_dir() else None,
            out=out,
            audio_codec=audio_codec,
            jpeg_fps=jpeg_fps,
            workers=1,
            num_classes=3,
            clips_per_class=4,
            shard_size=6,
            progress=False,
            log=lambda msg: None,
        )
    return out


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_shards(tmp_path_factory.getbasetemp())


def debug_args(recipe: str, shards: Path, runs: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(RECIPES / "_base.yaml"),
        "--config",
        str(RECIPES / f"{recipe}.yaml"),
        "--config",
        str(RECIPES / "debug.yaml"),
        "--data.init_args.data",
        str(shards),
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def _parent_option(recipe: str) -> str | None:
    """The null ``*_ckpt`` setting of a recipe that starts from another run, or None."""
    cfg = yaml.safe_load((RECIPES / f"{recipe}.yaml").read_text())
    init = ((cfg.get("model") or {}).get("init_args")) or {}
    return next((k for k, v in init.items() if k.endswith("_ckpt") and not v), None)


def _parent(recipe: str) -> str:
    return recipe.split("_")[0]  # mavil_stage2 -> mavil, avid_cma -> avid


_LAST: dict[str, Path] = {}
# last checkpoints other tests reuse (stage-2 teachers, the export tests): copied out of the
# test's own tmp_path, which pytest deletes when the test passes (setup.cfg keeps failed ones only)
_KEEP = {_parent(n) for n in NAMES if _parent_option(n)} | {"mavil"}


def run_recipe(recipe: str, shards: Path, runs: Path) -> Path:
    """Runs the recipe with debug sizes; returns its last checkpoint."""
    extra: list[str] = []
    option = _parent_option(recipe)
    if option:
        parent = _parent(recipe)
        first = _LAST.get(parent) or run_recipe(parent, shards, runs / "parent")
        extra = [f"--model.init_args.{option}", str(first)]
    os.environ.pop("AVSSL_RUN_ID", None)
    assert lightning_main(debug_args(recipe, shards, runs, *extra)) == 0
    found = sorted(runs.glob(f"{recipe}/*/checkpoints/last.ckpt"))
    assert len(found) == 1, found
    if recipe in _KEEP:
        kept = shards.parent / "kept_checkpoints" / recipe / "last.ckpt"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[0], kept)
        _LAST[recipe] = kept
    return found[0]


def assert_trained(ckpt: dict) -> None:
    """Every debug step updated the weights (a step skipped for a non-finite loss still counts
    in ``global_step`` but not in AdamW's step), and the weights are finite."""
    assert ckpt["global_step"] == DEBUG_STEPS
    steps = [float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()]
    assert steps and max(steps) == DEBUG_STEPS
    finite = [torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert all(finite)


@pytest.mark.parametrize("recipe", NAMES)
def test_recipe_runs_with_debug_sizes(recipe, tiny_shards, tmp_path):
    last = run_recipe(recipe, tiny_shards, tmp_path / "runs")
    run_dir = last.parent.parent
    assert (run_dir / "config.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / f"step{2:07d}.ckpt").is_file()  # periodic, every 2 steps
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert_trained(ckpt)
    assert ckpt["avssl"]["recipe"] == recipe
    assert ckpt["avssl"]["objective"].startswith("avssl.objectives.")
    assert ckpt["avssl"]["data"]["crop_size"] == 64  # debug.yaml
    # what pretraining read, for evaluations to tell when their test clips were seen
    assert ckpt["avssl"]["train_data"] == {
        "path": str(tiny_shards), "dataset": "synthetic", "split": "train1"
    }  # fmt: skip
    assert ckpt["hyper_parameters"]["size"] == "tiny"


@pytest.mark.parametrize("recipe", ["mavil", "crisscross", "avc"])
def test_recipe_runs_with_features_finished_on_the_device(recipe, tiny_shards, tmp_path):
    """What a GPU run gets by default (``features_on: auto``), here forced on the CPU: the
    workers ship waveforms and uint8 clips, the DataModule finishes them after the transfer
    (CrissCross: two clips per sample; AVC: mismatched audio from other samples)."""
    runs = tmp_path / "runs"
    os.environ.pop("AVSSL_RUN_ID", None)
    extra = ("--data.init_args.features_on", "device")
    assert lightning_main(debug_args(recipe, tiny_shards, runs, *extra)) == 0
    (last,) = runs.glob(f"{recipe}/*/checkpoints/last.ckpt")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert_trained(ckpt)


def test_xkd_runs_with_repeated_sampling(tiny_shards, tmp_path):
    """``repeated_sampling`` through the command line, with an objective without negatives
    (XKD) and the features finished on the device: 2 entries per decoded sample."""
    runs = tmp_path / "runs"
    os.environ.pop("AVSSL_RUN_ID", None)
    extra = ("--data.init_args.repeated_sampling", "2", "--data.init_args.features_on", "device")
    assert lightning_main(debug_args("xkd", tiny_shards, runs, *extra)) == 0
    (last,) = runs.glob("xkd/*/checkpoints/last.ckpt")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert_trained(ckpt)
    assert ckpt["datamodule_hyper_parameters"]["repeated_sampling"] == 2


DEMO_NAMES = demo.demo_recipes()
ROOT = RECIPES.parent


def _print_config(recipe: str, *overlays: Path, extra: tuple[str, ...] = ()) -> tuple[int, dict]:
    """Resolves recipe + demo overlays with LightningCLI's --print_config (validates every key
    against the objective's and data module's signatures, builds nothing)."""
    args = [
        "fit",
        "--config",
        str(RECIPES / "_base.yaml"),
        "--config",
        str(RECIPES / f"{recipe}.yaml"),
    ]
    for overlay in overlays:
        args += ["--config", str(overlay)]
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            rc = lightning_main([*args, *extra, "--print_config"])
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else 1
    return rc, (yaml.safe_load(buf.getvalue()) if rc == 0 else {})


@pytest.mark.parametrize("recipe", DEMO_NAMES)
def test_demo_overlays_resolve_for_every_recipe(recipe, monkeypatch):
    """`make demo RECIPE=<name>` adds recipes/demo.yaml and recipes/demo/<name>.yaml."""
    monkeypatch.chdir(ROOT)  # the demo runs from the repository root
    assert recipe in demo.demo_recipes()
    rc, cfg = _print_config(recipe, *(ROOT / path for path in demo.overlays(recipe)))
    assert rc == 0
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert cfg["trainer"]["max_steps"] == 200 and data["batch_size"] == 16
    assert model["size"] == "tiny" and model["lr"] == pytest.approx(3e-4)
    assert model["num_frames"] == data["num_frames"]  # the encoder sees the clips it is fed
    if recipe == "avc":
        assert data["num_frames"] == 1  # one frame, as L3-Net
    if recipe == "xdc":
        assert model["num_clusters"] == 32
    if recipe in ("mavil", "xkd", "xkd_shared"):
        assert model["decoder_depth"] == 2  # light decoders (recipes/demo/<recipe>.yaml)
    if recipe.startswith("xkd"):
        assert model["ema_start"] == pytest.approx(0.97)


def test_one_augmentation_option_overrides_a_recipe_without_dropping_the_others():
    """`--data.init_args.augment.KEY VALUE` changes one key of a recipe's `augment` (the value
    read as YAML, so a number stays a number); a whole mapping replaces the recipe's."""
    rc, cfg = _print_config("xkd", extra=("--data.init_args.augment.hue", "0.1"))
    assert rc == 0
    recipe = yaml.safe_load((RECIPES / "xkd.yaml").read_text())["data"]["init_args"]["augment"]
    got = cfg["data"]["init_args"]["augment"]
    assert got == {**recipe, "hue": 0.1} and isinstance(got["hue"], float)
    rc, cfg = _print_config("xkd", extra=("--data.init_args.augment.crop_scale", "[0.3, 1]"))
    assert cfg["data"]["init_args"]["augment"] == {**recipe, "crop_scale": [0.3, 1]}
    rc, cfg = _print_config("xkd", extra=("--data.init_args.augment", "{hue: 0.3}"))
    assert rc == 0 and cfg["data"]["init_args"]["augment"] == {"hue": 0.3}


def test_demo_overlay_with_a_key_the_objective_lacks_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    decoder_depth: 2\n")  # VATT has no decoder
    with pytest.raises(UserError, match="'decoder_depth' is not accepted"):
        _print_config("vatt", RECIPES / "demo.yaml", bad)
