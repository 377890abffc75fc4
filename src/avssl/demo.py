"""``make demo``: the whole path on the embedded synthetic dataset, on a laptop-sized budget.

1. build the synthetic dataset (10 classes x 40 clips) and shard it (``shards/synthetic``);
2. pretrain an objective at ``tiny`` size (``recipes/<recipe>.yaml`` + ``recipes/demo.yaml``
   + ``recipes/demo/<recipe>.yaml`` where it exists); MAViL unless ``--recipe`` (``make demo
   RECIPE=vatt``) names another;
3. export the trained encoders, and the same architecture at random initialisation;
4. evaluate both with the ``synthetic_linear`` protocol (3 official-style splits) and print a
   table: the learning check of the pretraining (trained minus random).

Options after ``--`` (``make demo RECIPE=vatt ARGS="--model.init_args.intra_weight 1"``) go to
the pretraining command after the demo's configs, for ablations at the demo's budget; such a run
is named ``<recipe>-args`` (run folder, encoders, ``eval_out/demo/summary-<recipe>-args.md``,
which records the options) and leaves the plain demo's results alone.

``--data <folder>`` (``make demo RECIPE=vatt DATA=shards/synthetic_plain``) runs the same check
on other prepared synthetic shards, e.g. the control set ``make prep DATASET=synthetic
OUT=shards/synthetic_plain PREP_ARGS="--visual-nuisance plain"``; the run is then named
``<recipe>@<folder name>`` (``-args`` after it with options).

``--seeds N`` (``make demo SEEDS=3``) pretrains N times with ``--seed_everything 0..N-1``
(runs ``<run id>-seed<k>``), evaluates each against the one random-init baseline and reports
every seed's top-1 with the gains' mean, sample standard deviation and minimum, named
``<recipe>...-seeds<N>``: one run of the check moves by several points with the seed alone.

A recipe that continues another recipe's run (:data:`CONTINUES`: ``avid_cma`` after ``avid``,
``mavil_stage2`` after ``mavil``) first pretrains that recipe with the demo's settings (and the
same seed) into ``runs/<parent>/<run id>-for-<recipe>/``, then the recipe itself from that run's
last checkpoint, for the demo's budget each; the options after ``--`` go to the second run only,
``--parent-args="<options>"`` (``make demo PARENT_ARGS=...``) to the first.

Every step is the user-facing command (``avssl pretrain|export|eval``) run as a subprocess, so
the demo exercises exactly what a researcher types.

The recipes and config files are in :mod:`avssl.demo_configs`, the result tables in
:mod:`avssl.demo_tables`; their names are importable here.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from avssl.demo_configs import CONTINUES, demo_recipes, overlays
from avssl.demo_configs import _merge as _merge
from avssl.demo_configs import demo_config as demo_config
from avssl.demo_tables import _seeds_table, _table

SHARDS = Path("shards/synthetic")
RUN_ID = os.environ.get("AVSSL_DEMO_RUN", "demo")
PROTOCOL = "synthetic_linear"


def _avssl(*args: str, env: dict | None = None, tag: str = "[demo]") -> None:
    cmd = [sys.executable, "-m", "avssl.cli", *args]
    print(f"{tag} $ avssl {' '.join(args)}", flush=True)
    result = subprocess.run(cmd, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"{tag} step failed (exit {result.returncode}): avssl {' '.join(args)}")


def _generator_version(shards: Path) -> int | None:
    """Version of the synthetic generator that wrote ``shards/raw`` (None: not known)."""
    from avssl.data.synthetic import META_NAME

    try:
        return json.loads((shards / "raw" / META_NAME).read_text()).get("version")
    except (OSError, ValueError):
        return None


def _configs(recipe: str) -> list[str]:
    """``--config`` options of the files the demo adds after the recipe."""
    return [arg for path in overlays(recipe) for arg in ("--config", path)]


def _check_options(recipe: str, extra: list[str], parent_extra: list[str]) -> None:
    """``avssl pretrain --check`` of every run the demo will pretrain, before the synthetic set
    is built: a bad option then costs seconds, not the build (the continued run's checkpoint
    is named by the path it will have; the objectives read it only when training starts)."""
    runs = [(recipe, list(extra))]
    if recipe in CONTINUES:
        parent, key = CONTINUES[recipe]
        later = str(Path("runs") / parent / "demo-check" / "checkpoints" / "last.ckpt")
        runs = [(parent, list(parent_extra)), (recipe, [f"--model.init_args.{key}", later, *extra])]
    for name, options in runs:
        _avssl("pretrain", "--recipe", name, "--check", "--", *_configs(name), *options)


def _needs_build(data: Path) -> bool:
    """The demo will build (or rebuild) the synthetic set in :func:`_prep`."""
    if data != SHARDS or not (SHARDS / "manifest.json").is_file():
        return data == SHARDS
    from avssl.data.synthetic import META_VERSION

    version = _generator_version(SHARDS)
    return version is not None and version != META_VERSION


def _prep(data: Path) -> None:
    if data != SHARDS:  # the user's own synthetic shards: used as they are
        if not (data / "manifest.json").is_file():
            raise SystemExit(
                f"[demo] {data} holds no prepared shards (no manifest.json): make prep "
                f"DATASET=synthetic OUT={data} [PREP_ARGS=...] first"
            )
        if not (data / "splits" / "test1.txt").is_file():
            raise SystemExit(
                f"[demo] {data} has no train1/test1 splits: the demo's protocol needs the "
                "synthetic dataset's three splits"
            )
        print(f"[demo] 1/4 using the prepared shards in {data}", flush=True)
        return
    if not _needs_build(data):
        print(f"[demo] 1/4 synthetic shards already in {SHARDS}", flush=True)
        return
    if (SHARDS / "manifest.json").is_file():  # an older generator's clips
        from avssl.data.synthetic import META_VERSION

        version = _generator_version(SHARDS)
        print(
            f"[demo] 1/4 {SHARDS} holds clips of synthetic generator version {version} "
            f"(now {META_VERSION}): rebuilding it",
            flush=True,
        )
        shutil.rmtree(SHARDS)
    print(f"[demo] 1/4 building the synthetic dataset into {SHARDS}", flush=True)
    cmd = [sys.executable, "-m", "data_prep", "--dataset", "synthetic", "--out", str(SHARDS)]
    cmd += ["--workers", str(os.cpu_count() or 1)]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit("[demo] data preparation failed")


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _pretrain(recipe: str, data: Path, run_id: str, extra: list[str]) -> Path:
    """Pretrains into ``runs/<recipe>/<run_id>/`` (replacing a previous demo run of that id);
    returns its last checkpoint."""
    configs = _configs(recipe)
    run_dir = Path("runs") / recipe / run_id
    if run_dir.exists():  # the demo owns this run id; pretraining refuses a used folder
        print(f"[demo]     removing the previous demo run {run_dir}/", flush=True)
        shutil.rmtree(run_dir)
    _avssl(
        "pretrain", "--recipe", recipe, "--data", str(data), "--", *configs, *extra,
        # one torch thread: on 2 cores, 2 threads beside a loader worker oversubscribe
        env={"AVSSL_RUN_ID": run_id, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )  # fmt: skip
    return run_dir / "checkpoints" / "last.ckpt"


def _evaluate(enc: str, data: Path) -> dict:
    out = Path("eval_out/demo") / enc
    _avssl("eval", "--protocol", PROTOCOL, "--encoder", f"encoders/{enc}",
           "--data", str(data), "--out", str(out))  # fmt: skip
    return _results(out)


def _parser() -> argparse.ArgumentParser:
    """The demo's options before ``--`` (``make demo RECIPE= DATA= SEEDS= PARENT_ARGS=``)."""
    ap = argparse.ArgumentParser(
        description="make demo: pretrain, export, evaluate (synthetic)",
        epilog="options after -- are added to the pretraining command (ablations)",
    )
    ap.add_argument("--recipe", default="mavil", help="recipe name in recipes/ (default: mavil)")
    ap.add_argument(
        "--data", default="", help=f"prepared synthetic shards (default: {SHARDS}, built if absent)"
    )
    ap.add_argument(
        "--seeds",
        default="1",
        help="pretrain with seeds 0..N-1 (--seed_everything) and report the gains' mean and "
        "spread (default 1: the recipe's seed, 0)",
    )
    ap.add_argument(
        "--parent-args",
        default="",
        help="pretraining options of the run a recipe continues (avid_cma: its avid run; "
        "mavil_stage2: its stage-1 mavil run), as one string",
    )
    return ap


def _parse(argv: list[str]) -> tuple[str, Path, int, list[str], list[str]]:
    """(recipe, shards, number of seeds, pretraining options after ``--``, options of the run
    it continues); SystemExit with a one-line message for an unknown recipe, a bad seed count
    or ``--parent-args`` for a recipe that continues no run."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args = _parser().parse_args(argv[:cut])
    recipe, data = args.recipe, Path(args.data) if args.data.strip() else SHARDS
    usable = demo_recipes()
    if recipe not in usable:
        raise SystemExit(
            f"[demo] unknown or unusable recipe {recipe!r} (one of: {', '.join(usable)})"
        )
    seeds = int(args.seeds) if args.seeds.strip().isdigit() else 0
    if seeds < 1:
        raise SystemExit(f"[demo] SEEDS must be a whole number >= 1, got {args.seeds!r}")
    try:
        parent_extra = shlex.split(args.parent_args)
    except ValueError as err:
        raise SystemExit(f"[demo] PARENT_ARGS: {err} in {args.parent_args!r}") from None
    if parent_extra and recipe not in CONTINUES:
        raise SystemExit(
            f"[demo] PARENT_ARGS is for a recipe that continues another run "
            f"({', '.join(sorted(CONTINUES))}), not {recipe!r}"
        )
    return recipe, data, seeds, argv[cut + 1 :], parent_extra


def _train_and_export(
    recipe: str,
    data: Path,
    seeds: int,
    extra: list[str],
    name: str,
    run_id: str,
    parent_extra: list[str] | None = None,
) -> tuple[list[str], str, list[str]]:
    """Steps 2 and 3: pretrains once per seed and exports each run and a random-init
    baseline; returns the trained bundles' names, the baseline's, and those of the runs the
    recipe continued (:data:`CONTINUES`; empty for other recipes)."""
    print(f"[demo] 2/4 pretraining {recipe} (tiny) on the synthetic dataset {data}", flush=True)
    if extra:
        print(f"[demo]     with the added options: {' '.join(extra)}", flush=True)
    ckpts, trained, firsts = [], [], []
    for k in range(seeds):  # one seed: the recipe's, under the plain names
        suffix, seed = (f"-seed{k}", ["--seed_everything", str(k)]) if seeds > 1 else ("", [])
        if seeds > 1:
            print(f"[demo]     seed {k} of 0-{seeds - 1}", flush=True)
        start = []
        if recipe in CONTINUES:  # first the run this recipe continues, same settings and seed
            parent, key = CONTINUES[recipe]
            print(f"[demo]     {recipe} continues a run of {parent}: pretraining {parent} first",
                  flush=True)  # fmt: skip
            first = _pretrain(
                parent, data, f"{run_id}{suffix}-for-{recipe}", [*(parent_extra or []), *seed]
            )
            start = [f"--model.init_args.{key}", str(first)]
            firsts.append((first, f"demo-{name}{suffix}-its-{parent}"))
        ckpts.append(_pretrain(recipe, data, f"{run_id}{suffix}", [*start, *extra, *seed]))
        trained.append(f"demo-{name}{suffix}")
    print("[demo] 3/4 exporting the trained encoders and a random-init baseline", flush=True)
    random = f"demo-{name}-random"
    for ckpt, enc in [*zip(ckpts, trained), *firsts]:
        _avssl("export", "--ckpt", str(ckpt), "--out", f"encoders/{enc}")
    # the baseline is seeded (export --random-init): the same weights whatever the run's seed
    _avssl("export", "--ckpt", str(ckpts[0]), "--out", f"encoders/{random}", "--random-init")
    return trained, random, [enc for _, enc in firsts]


def main(argv: list[str] | None = None) -> int:
    recipe, data, seeds, extra, parent_extra = _parse(sys.argv[1:] if argv is None else list(argv))
    # an ablation, another set or several seeds keep the plain demo's results
    on = "" if data == SHARDS else f"@{data.resolve().name}"
    tail = on + ("-args" if extra or parent_extra else "") + (f"-seeds{seeds}" if seeds > 1 else "")
    name, run_id = f"{recipe}{tail}", f"{RUN_ID}{tail}"
    t0 = time.time()
    if _needs_build(data):
        _check_options(recipe, extra, parent_extra)
    _prep(data)
    trained, random, firsts = _train_and_export(
        recipe, data, seeds, extra, name, run_id, parent_extra
    )
    print(f"[demo] 4/4 evaluating them with the {PROTOCOL} protocol", flush=True)
    base = _evaluate(random, data)
    rows = [_evaluate(enc, data) for enc in trained]
    table = _table(base, rows[0], recipe) if seeds == 1 else _seeds_table(base, rows, recipe)
    if extra:
        table = f"pretraining options added to the demo's: `{' '.join(extra)}`\n\n" + table
    if recipe in CONTINUES:  # and what the continued runs had reached, the same baseline
        parent = CONTINUES[recipe][0]
        rows = [_evaluate(enc, data) for enc in firsts]
        first = _table(base, rows[0], parent) if seeds == 1 else _seeds_table(base, rows, parent)
        table += f"\n\nthe {parent} runs it continued, against the same baseline:\n\n" + first
        added = f", with the options `{' '.join(parent_extra)}`" if parent_extra else ""
        table = (f"each {recipe} run continues a run of {parent} with the demo's budget and seed "
                 f"(`runs/{parent}/{run_id}*-for-{recipe}/`){added}\n\n" + table)  # fmt: skip
    if on:
        table = f"shards: `{data}`\n\n" + table
    summary = Path("eval_out/demo") / ("summary.md" if name == "mavil" else f"summary-{name}.md")
    summary.write_text(table + "\n")
    print("\n" + table + "\n")
    runs = f"runs/{recipe}/{run_id}" + ("-seed*" if seeds > 1 else "")
    print(f"[demo] done in {time.time() - t0:.0f} s; results in {summary}, "
          f"checkpoints in {runs}/, encoders in encoders/")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
