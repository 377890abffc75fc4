"""make demo: recipe choice and reuse or rebuild of the synthetic shards (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avssl import demo
from avssl.data.synthetic import META_NAME, META_VERSION

CHECK_OPTIONS = demo._check_options


@pytest.fixture(autouse=True)
def _no_option_check(monkeypatch):
    """The option check before a build (a subprocess per run) is tested on its own."""
    monkeypatch.setattr(demo, "_check_options", lambda *args: None)


def test_options_are_checked_before_a_build(monkeypatch):
    """Each run the demo will pretrain gets ``avssl pretrain --check`` first (the continued
    run's checkpoint named by a path, read only when training starts); a failure stops it."""
    calls: list = []
    monkeypatch.setattr(demo, "_avssl", lambda *args, env=None: calls.append(args))
    CHECK_OPTIONS("mavil_stage2", ["--x", "1"], ["--y", "2"])
    assert [c[:4] for c in calls] == [("pretrain", "--recipe", "mavil", "--check")] + [
        ("pretrain", "--recipe", "mavil_stage2", "--check")
    ]
    assert calls[0][-2:] == ("--y", "2") and calls[1][-2:] == ("--x", "1")
    assert "--model.init_args.teacher_ckpt" in calls[1]

    def fail(*args, env=None):
        raise SystemExit("[demo] step failed (exit 2): avssl pretrain --check")

    built: list = []
    monkeypatch.setattr(demo, "_needs_build", lambda data: True)
    monkeypatch.setattr(demo, "_check_options", CHECK_OPTIONS)
    monkeypatch.setattr(demo, "_avssl", fail)
    monkeypatch.setattr(demo, "_prep", lambda data: built.append(data))
    with pytest.raises(SystemExit, match="step failed"):
        demo.main(["--recipe", "mavil", "--", "--model.init_args.mask_ratio_audio=1.0"])
    assert built == []  # nothing was built


def _fake_shards(root: Path, version: int | None) -> Path:
    shards = root / "shards" / "synthetic"
    (shards / "raw").mkdir(parents=True)
    (shards / "manifest.json").write_text("{}")
    if version is not None:
        (shards / "raw" / META_NAME).write_text(json.dumps({"version": version}))
    return shards


@pytest.mark.parametrize("version,rebuilt", [(META_VERSION, False), (None, False), (1, True)])
def test_prep_rebuilds_only_shards_of_an_older_generator(tmp_path, monkeypatch, version, rebuilt):
    shards = _fake_shards(tmp_path, version)
    monkeypatch.setattr(demo, "SHARDS", shards)
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(demo.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Done())
    demo._prep(shards)
    if rebuilt:
        assert not shards.exists()  # the stale folder was removed before data_prep ran
        assert calls and calls[0][1:5] == ["-m", "data_prep", "--dataset", "synthetic"]
    else:
        assert (shards / "manifest.json").is_file() and calls == []


def _fake_results(kind_top1: dict[str, float]) -> dict:
    return {
        "summary": {k: {"top1": v} for k, v in kind_top1.items()},
        "rounds": [{"kind": k, "metrics": {"top1": v}} for k, v in kind_top1.items()],
    }


def _results_by_ending(top1: dict[str, float]):
    """A fake ``_results``: the audio top-1 of the first key the evaluated folder ends with."""

    def fake(folder):
        return _fake_results({"audio": next(v for k, v in top1.items() if str(folder).endswith(k))})

    return fake


def _demo_folder(tmp_path: Path, monkeypatch) -> list[tuple]:
    """A working folder with the project's recipes, no data preparation, and the demo's
    ``avssl`` commands recorded instead of run: returns the list they go to."""
    (tmp_path / "recipes").symlink_to(Path(__file__).resolve().parents[1] / "recipes")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval_out" / "demo").mkdir(parents=True)
    monkeypatch.setattr(demo, "_prep", lambda data: None)
    calls: list[tuple] = []
    monkeypatch.setattr(demo, "_avssl", lambda *args, env=None: calls.append((args, env)))
    return calls


def test_demo_rejects_unknown_recipes_and_those_it_cannot_start(tmp_path, monkeypatch):
    names = demo.demo_recipes()
    assert {"mavil", "avid", "avid_cma", "mavil_stage2"} <= set(names)
    with pytest.raises(SystemExit, match="unknown or unusable recipe 'nope'"):
        demo.main(["--recipe", "nope"])
    # a recipe needing another run's checkpoint that CONTINUES does not fill in is refused
    (tmp_path / "recipes").mkdir()
    for name, ckpt in (("solo", "null"), ("given", "runs/x.ckpt"), ("avid_cma", "null")):
        (tmp_path / "recipes" / f"{name}.yaml").write_text(
            f"model:\n  init_args:\n    teacher_ckpt: {ckpt}\n"
        )
    monkeypatch.chdir(tmp_path)
    # avid_cma's null setting is not the one CONTINUES fills (avid_ckpt): refused as well
    assert demo.demo_recipes() == ["given"]
    with pytest.raises(SystemExit, match="unknown or unusable recipe 'solo'"):
        demo.main(["--recipe", "solo"])


@pytest.mark.parametrize("recipe", sorted(demo.CONTINUES))
def test_demo_of_a_recipe_that_continues_another_runs_both(tmp_path, monkeypatch, recipe):
    # make demo RECIPE=avid_cma SEEDS=2: per seed, the parent recipe's run with that seed, then
    # the recipe from the parent's last checkpoint; ARGS go to the second run only
    calls = _demo_folder(tmp_path, monkeypatch)
    parent, key = demo.CONTINUES[recipe]
    top1 = {"random": 45.0, f"its-{parent}": 40.0, "seed0": 50.0, "seed1": 52.0}
    monkeypatch.setattr(demo, "_results", _results_by_ending(top1))
    extra, first_extra = ["--trainer.max_steps", "7"], ["--data.init_args.batch_size", "8"]
    argv = ["--recipe", recipe, "--seeds", "2", "--parent-args=--data.init_args.batch_size 8"]
    assert demo.main([*argv, "--", *extra]) == 0
    pretrains = [(args, env["AVSSL_RUN_ID"]) for args, env in calls if args[0] == "pretrain"]
    assert [(a[2], run) for a, run in pretrains] == [
        (parent, f"{demo.RUN_ID}-args-seeds2-seed0-for-{recipe}"),
        (recipe, f"{demo.RUN_ID}-args-seeds2-seed0"),
        (parent, f"{demo.RUN_ID}-args-seeds2-seed1-for-{recipe}"),
        (recipe, f"{demo.RUN_ID}-args-seeds2-seed1"),
    ]
    for k in range(2):
        (first, first_run), (second, _) = pretrains[2 * k], pretrains[2 * k + 1]
        assert first[-2:] == second[-2:] == ("--seed_everything", str(k))
        assert not set(extra) & set(first) and second[-4:-2] == tuple(extra)
        assert first[-4:-2] == tuple(first_extra) and not set(first_extra) & set(second)
        assert [c for c in first if c.endswith(".yaml")] == demo.overlays(parent)
        assert [c for c in second if c.endswith(".yaml")] == demo.overlays(recipe)
        given = second[second.index(f"--model.init_args.{key}") + 1]
        assert given == f"runs/{parent}/{first_run}/checkpoints/last.ckpt"
    # both runs of each seed exported and evaluated against the one random-init baseline
    exports = {
        a[a.index("--out") + 1]: a[a.index("--ckpt") + 1] for a, _ in calls if a[0] == "export"
    }
    name, run = f"demo-{recipe}-args-seeds2", f"{demo.RUN_ID}-args-seeds2"
    want = {f"encoders/{name}-random": f"runs/{recipe}/{run}-seed0"}
    for k in range(2):
        want[f"encoders/{name}-seed{k}"] = f"runs/{recipe}/{run}-seed{k}"
        want[f"encoders/{name}-seed{k}-its-{parent}"] = f"runs/{parent}/{run}-seed{k}-for-{recipe}"
    assert exports == {enc: f"{folder}/checkpoints/last.ckpt" for enc, folder in want.items()}
    assert len([a for a, _ in calls if a[0] == "eval"]) == 5
    text = (tmp_path / "eval_out" / "demo" / f"summary-{recipe}-args-seeds2.md").read_text()
    assert f"continues a run of {parent} with" in text
    ours, theirs = text.split(f"the {parent} runs it continued, against the same baseline:")
    assert "| audio | 45.0 | 50.0, 52.0 | +6.0 +- 1.4 |" in ours
    assert "| audio | 45.0 | 40.0, 40.0 | -5.0 +- 0.0 |" in theirs
    assert "with the options `--data.init_args.batch_size 8`" in text


def test_demo_parent_args_only_for_a_recipe_that_continues_a_run():
    with pytest.raises(SystemExit, match="PARENT_ARGS is for a recipe that continues another"):
        demo.main(["--recipe", "vatt", "--parent-args", "--trainer.max_steps 3"])
    with pytest.raises(SystemExit, match="PARENT_ARGS: No closing quotation"):
        demo.main(["--recipe", "avid_cma", "--parent-args", "--x 'open"])


@pytest.mark.parametrize("extra", [[], ["--model.init_args.intra_weight", "1"]])
def test_demo_commands_and_ablation_options(tmp_path, monkeypatch, extra):
    # the demo's four steps without running them: which commands, run ids and output names
    (tmp_path / "recipes").symlink_to(Path(__file__).resolve().parents[1] / "recipes")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval_out" / "demo").mkdir(parents=True)
    calls: list[tuple[tuple[str, ...], dict | None]] = []
    monkeypatch.setattr(demo, "_prep", lambda data: None)
    # a previous demo run of the same name is removed before pretraining (it would make the
    # pretraining stop: a fresh run never writes into another run's checkpoint folder)
    old = tmp_path / "runs" / "vatt" / (f"{demo.RUN_ID}-args" if extra else demo.RUN_ID)
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "last.ckpt").write_bytes(b"old")
    other = tmp_path / "runs" / "vatt" / "other-run"
    other.mkdir()
    old_seen: list[bool] = []

    def fake_avssl(*args, env=None):
        calls.append((args, env))
        old_seen.append(old.exists())

    monkeypatch.setattr(demo, "_avssl", fake_avssl)
    monkeypatch.setattr(
        demo,
        "_results",
        lambda folder: _fake_results({"audio": 60.0 if "random" not in str(folder) else 45.0}),
    )
    argv = ["--recipe", "vatt"] + (["--", *extra] if extra else [])
    assert demo.main(argv) == 0
    assert old_seen and not any(old_seen) and other.is_dir()  # gone before the first command
    pretrain, env = calls[0]
    name = "vatt-args" if extra else "vatt"
    assert pretrain[:5] == ("pretrain", "--recipe", "vatt", "--data", str(demo.SHARDS))
    configs = [a for a in pretrain[6:] if a.endswith(".yaml")]
    assert configs == demo.overlays("vatt")
    # the added options come after every config file, so that they win
    assert pretrain[6:] == (*[a for c in configs for a in ("--config", c)], *extra)
    assert env["AVSSL_RUN_ID"] == (f"{demo.RUN_ID}-args" if extra else demo.RUN_ID)
    exports = [args for args, _ in calls if args[0] == "export"]
    assert [a[a.index("--out") + 1] for a in exports] == [
        f"encoders/demo-{name}",
        f"encoders/demo-{name}-random",
    ]
    assert all(f"runs/vatt/{env['AVSSL_RUN_ID']}/" in a[a.index("--ckpt") + 1] for a in exports)
    summary = (tmp_path / "eval_out" / "demo" / f"summary-{name}.md").read_text()
    assert "| audio | 45.0 | 60.0 | +15.0 | 60.0 |" in summary
    assert ("intra_weight 1" in summary) == bool(extra)
    # an ablation leaves the plain demo's summary alone
    if extra:
        assert not (tmp_path / "eval_out" / "demo" / "summary-vatt.md").exists()


def test_demo_on_other_shards_names_its_run_and_checks_them(tmp_path, monkeypatch):
    # make demo DATA=shards/synthetic_plain: every step reads those shards, the run, encoders
    # and summary carry the folder's name, and the default demo's outputs are left alone
    (tmp_path / "recipes").symlink_to(Path(__file__).resolve().parents[1] / "recipes")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval_out" / "demo").mkdir(parents=True)
    plain = tmp_path / "shards" / "synthetic_plain"
    with pytest.raises(SystemExit, match="no prepared shards.*make prep DATASET=synthetic"):
        demo.main(["--recipe", "xdc", "--data", str(plain)])
    (plain / "splits").mkdir(parents=True)
    (plain / "manifest.json").write_text("{}")
    with pytest.raises(SystemExit, match="no train1/test1 splits"):
        demo.main(["--recipe", "xdc", "--data", str(plain)])
    (plain / "splits" / "test1.txt").write_text("k\n")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(demo, "_avssl", lambda *args, env=None: calls.append((*args, env)))
    monkeypatch.setattr(demo, "_results", lambda folder: _fake_results({"video": 20.0}))
    assert demo.main(["--recipe", "xdc", "--data", str(plain)]) == 0
    pretrain, *rest = calls
    assert pretrain[:5] == ("pretrain", "--recipe", "xdc", "--data", str(plain))
    assert pretrain[-1]["AVSSL_RUN_ID"] == f"{demo.RUN_ID}@synthetic_plain"
    evals = [c for c in rest if c[0] == "eval"]
    assert len(evals) == 2 and all(c[c.index("--data") + 1] == str(plain) for c in evals)
    assert [c[c.index("--out") + 1] for c in rest if c[0] == "export"] == [
        "encoders/demo-xdc@synthetic_plain",
        "encoders/demo-xdc@synthetic_plain-random",
    ]
    summary = tmp_path / "eval_out" / "demo" / "summary-xdc@synthetic_plain.md"
    assert f"shards: `{plain}`" in summary.read_text()
    assert not (tmp_path / "eval_out" / "demo" / "summary-xdc.md").exists()


def test_demo_with_several_seeds_reports_each_and_the_spread(tmp_path, monkeypatch):
    # make demo RECIPE=vatt SEEDS=3: three pretrainings with seeds 0, 1, 2 in their own run
    # folders, one random-init baseline, and a table with every seed and the gains' spread
    calls = _demo_folder(tmp_path, monkeypatch)
    top1 = {"random": 40.0, "seed0": 52.0, "seed1": 47.0, "seed2": 45.0}
    monkeypatch.setattr(demo, "_results", _results_by_ending(top1))
    assert demo.main(["--recipe", "vatt", "--seeds", "3"]) == 0
    pretrains = [(args, env) for args, env in calls if args[0] == "pretrain"]
    assert [env["AVSSL_RUN_ID"] for _, env in pretrains] == [
        f"{demo.RUN_ID}-seeds3-seed{k}" for k in range(3)
    ]
    assert [args[-2:] for args, _ in pretrains] == [("--seed_everything", str(k)) for k in range(3)]
    exports = [args for args, _ in calls if args[0] == "export"]
    assert [a[a.index("--out") + 1] for a in exports] == [
        *(f"encoders/demo-vatt-seeds3-seed{k}" for k in range(3)),
        "encoders/demo-vatt-seeds3-random",
    ]
    assert "--random-init" in exports[-1] and "-seeds3-seed0/" in exports[-1][2]
    evals = [args for args, _ in calls if args[0] == "eval"]
    assert len(evals) == 4  # the baseline once, then each seed
    text = (tmp_path / "eval_out" / "demo" / "summary-vatt-seeds3.md").read_text()
    # gains +12, +7, +5: mean +8.0, sample sd sqrt(((4)^2 + 1 + 9) / 2) = 3.6, lowest +5
    assert "| audio | 40.0 | 52.0, 47.0, 45.0 | +8.0 +- 3.6 | +5.0 | +12.0, +7.0, +5.0 |" in text
    assert not (tmp_path / "eval_out" / "demo" / "summary-vatt.md").exists()


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_demo_rejects_bad_seed_counts(bad):
    with pytest.raises(SystemExit, match="SEEDS must be a whole number >= 1"):
        demo.main(["--recipe", "vatt", "--seeds", bad])
