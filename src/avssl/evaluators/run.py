"""``avssl eval --protocol P --encoder E --data D [--out O]`` (``make eval``).

Loads the protocol (``evaluation/<P>.yaml``) and the encoder bundle (or training checkpoint),
checks that they fit the data, extracts (or reads from the cache) the features of every sample
the protocol's splits name, runs the classifier of each round, and writes ``results.json``,
``results.md`` and plots into ``O`` (default ``eval_out/<protocol>/<encoder name>/``).
``--protocol a,b,c`` runs several protocols with one encoder (``O/<protocol>`` each with
``--out``); ``--set KEY=VALUE`` changes protocol settings for the run (``protocols.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from avssl.cli import UserError
from avssl.evaluators.protocols import Protocol, load_protocol, protocols_for, search_dirs


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="avssl eval", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--protocol",
        default="",
        help="protocol name (evaluation/<name>.yaml) or path; several joined by commas",
    )
    ap.add_argument("--encoder", default="", help="encoder bundle folder or training checkpoint")
    ap.add_argument("--data", default="", help="prepared dataset folder (default: the protocol's)")
    ap.add_argument("--out", default="", help="output folder (default eval_out/<protocol>/<enc>)")
    ap.add_argument("--device", default="", help="torch device (default: cuda when available)")
    ap.add_argument("--batch-size", type=int, default=16, help="samples per extraction batch")
    ap.add_argument("--num-workers", type=int, default=2, help="loader worker processes")
    ap.add_argument("--cache-dir", default="eval_out/cache", help="feature cache folder")
    ap.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one protocol setting (dotted key, YAML value), e.g. "
        "classifier.lambdas=[0.001] or clips_per_video=1; repeatable; results go to "
        "eval_out/<protocol>-set/<enc> unless --out",
    )
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0:
        raise UserError("--batch-size must be >= 1 and --num-workers >= 0")
    return args


def encoder_name(path: str) -> str:
    """The name results are filed under (``eval_out/<protocol>/<name>/``).

    A bundle folder (or its ``config.json``) gives the folder's name. A checkpoint of a run,
    ``<recipe>/<run id>/checkpoints/<stem>.ckpt``, gives ``<recipe>-<run id>_<stem>`` (e.g.
    ``xdc-20261128-0930_last``), so the checkpoints of two runs never share a folder; any other
    checkpoint gives ``<parent folder>_<stem>``.
    """
    p = Path(path).expanduser().resolve()
    if p.is_file() and p.name == "config.json":
        p = p.parent
    if p.is_dir():
        return p.name
    if p.parent.name == "checkpoints" and p.parent.parent.name:
        run = p.parent.parent
        prefix = f"{run.parent.name}-{run.name}" if run.parent.name else run.name
        return f"{prefix}_{p.stem}"
    return f"{p.parent.name}_{p.stem}"


def open_data(p: Protocol, data: str):
    """The data source; its dataset must be the protocol's."""
    from avssl.data.shards import resolve

    if not data:
        raise UserError(f"no --data given and protocol {p.name} names no default data folder")
    try:
        source = resolve(data)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"--data {data}: {err} (prepare it with make prep)") from None
    found = source.manifest.get("dataset")
    if found is not None and found != p.dataset:
        fitting = protocols_for(str(found))
        hint = (
            f"protocols for {found}: {', '.join(fitting)}"
            if fitting
            else f"no protocol in {' or '.join(str(d) for d in search_dirs())} is for {found!r}"
            " (write one, or give EVAL a protocol YAML path)"
        )
        raise UserError(
            f"protocol {p.name} is for dataset {p.dataset!r} but {data} holds {found!r}; "
            f"{hint}; or give other data"
        )
    return source


def split_keys(source, p: Protocol) -> dict[str, list[str]]:
    """Keys of every split the protocol names; keys absent from the shards are an error.

    A split the data source resolves to "every sample" (``all``) gets every key of the shards,
    in shard order. A split without ``splits/<name>.txt`` is a ``UserError`` that lists the
    splits the data has.
    """
    from avssl.data.shards import shard_keys

    names = list(dict.fromkeys(n for s in p.splits for n in [*s.train, s.test]))
    every = [k for s in source.shards for k in shard_keys(s)]
    keys = {}
    for name in names:
        try:
            listed = source.split_keys(name)
        except FileNotFoundError as err:
            if source.root is None:  # bare shards: no splits/ folder, only "every sample"
                raise UserError(
                    f"protocol {p.name} names split {name!r}, but its data are shards without "
                    "manifest.json and splits/; give the prepared folder, or use split 'all'"
                ) from None
            raise UserError(f"protocol {p.name}: {err}") from None
        keys[name] = list(every) if listed is None else listed
    present = set(every)
    for name, ks in keys.items():
        path = Path(source.root or ".") / "splits" / f"{name}.txt"
        missing = [k for k in ks if k not in present]
        if missing:
            raise UserError(
                f"{path} names {len(missing)} key(s) absent from the shards: {_some(missing)}"
            )
        _check_split(path, ks)
    for pair in p.splits:
        _disjoint_train(pair, keys)
    return keys


def _some(keys: list[str], n: int = 10) -> str:
    return f"{', '.join(keys[:n])}{' ...' if len(keys) > n else ''}"


def _check_split(path: Path, keys: list[str]) -> None:
    """A split must list something, and each sample once: a key listed twice would be a
    second row, counted twice in the metrics (and in cross-modal retrieval a pair whose twin
    ties with it, so both rank second)."""
    if not keys:
        raise UserError(f"{path} lists no sample")
    twice = [k for k, n in Counter(keys).items() if n > 1]
    if twice:
        raise UserError(f"{path} lists {len(twice)} key(s) more than once: {_some(twice)}")


def _disjoint_train(pair, keys: dict[str, list[str]]) -> None:
    """The train splits of one round (ESC-50: the other four folds) must not share samples,
    which the probe would otherwise fit twice and kNN / retrieval find twice."""
    for i, a in enumerate(pair.train):
        for b in pair.train[i + 1 :]:
            shared = sorted(set(keys[a]) & set(keys[b]))
            if shared:
                raise UserError(
                    f"round {pair.name}: {a} and {b} share {len(shared)} key(s): {_some(shared)}"
                )


def check_bundle(bundle, p: Protocol) -> tuple[str, ...]:
    """The modalities the protocol needs; the bundle must have them and accept their inputs."""
    needed = set()
    for kind in p.kinds:
        needed |= {"audio", "video"} if kind in ("joint", "audio-video") else {kind}
    mods = tuple(m for m in ("audio", "video") if m in needed)
    prep = bundle.preprocessing
    for m in mods:
        enc = bundle.encoders().get(m)
        if enc is None:
            raise UserError(
                f"encoder bundle {bundle.path} has no {m} encoder, but protocol "
                f"{p.name} evaluates {', '.join(p.kinds)} features"
            )
        cfg = bundle.config.get(m) or {}
        patch = int(cfg.get("patch_size", 1))
        if m == "audio":
            fb = prep.get("fbank", {})
            shape = (int(fb.get("target_frames", 0)), int(fb.get("num_mel_bins", 0)))
            need = (patch, patch)
        else:
            shape = (int(prep.get("num_frames", 0)), int(prep.get("crop_size", 0)))
            need = (int(cfg.get("tubelet_size", 1)), patch)
        if any(s <= 0 or s % n for s, n in zip(shape, need)):
            raise UserError(
                f"encoder bundle {bundle.path}: its {m} encoder needs input sizes "
                f"divisible by {need}, its preprocessing gives {shape}"
            )
    return mods


def _clear_previous(out: Path) -> None:
    """Says whose results a new report replaces in ``out`` and removes their files (plots of
    feature kinds the new protocol may not have would otherwise stay beside the new ones)."""
    import json

    previous = out / "results.json"
    if not previous.is_file():
        return
    try:
        old = json.loads(previous.read_text())
        what = f"{old['protocol']['name']} on {old['data']['path']}"
    except (ValueError, KeyError, TypeError):
        what = "unreadable results.json"
    print(f"[eval] replacing the earlier results in {out} ({what})")
    for path in [previous, out / "results.md", *out.glob("*.png")]:
        path.unlink(missing_ok=True)


def protocol_names(given: str) -> list[str]:
    """The protocols ``--protocol`` names: one name or path, or several joined by commas
    (``ucf101_linear,ucf101_knn``); a path to an existing file is one, commas and all."""
    if not given or Path(given).expanduser().is_file() or "," not in given:
        return [given]
    names = [n.strip() for n in given.split(",")]
    if not all(names):
        raise UserError(f"--protocol {given!r}: an empty name between commas")
    if len(set(names)) != len(names):
        raise UserError(f"--protocol {given!r}: a protocol named twice")
    return names


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``avssl eval``; returns 0, raises ``UserError`` on bad input. Several
    protocols (``--protocol a,b``) are all checked against the encoder and the data before
    the first runs; they share the feature cache, and with ``--out`` each reports into
    ``<out>/<protocol>``."""
    from avssl.evaluators.evaluate import evaluate

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    protocols = [load_protocol(n, args.set) for n in protocol_names(args.protocol)]
    if not args.encoder:
        raise UserError("--encoder is required (an encoder bundle folder or a checkpoint)")
    from avssl.export import load_encoder

    bundle = load_encoder(args.encoder)
    name = encoder_name(args.encoder)
    # every check first: a bad second protocol stops before any work
    plans = [_plan(p, args, bundle, name, len(protocols) > 1) for p in protocols]
    from avssl.evaluators.report import to_markdown, write_report

    start = time.time()
    for p, data, source, keys, mods, out in plans:
        t0 = time.time()
        results = evaluate(p, bundle, data, source, keys, mods, name, args)
        _clear_previous(out)
        written = write_report(out, results, p, source.classes)
        print(to_markdown(results, p))
        print(f"[eval] {p.name} on {name} in {time.time() - t0:.0f} s; wrote:")
        for path in written:
            print(f"[eval]   {path}")
    if len(plans) > 1:
        print(f"[eval] {len(plans)} protocols on {name} in {time.time() - start:.0f} s: "
              f"{', '.join(str(plan[-1]) for plan in plans)}")  # fmt: skip
    return 0


def _plan(p: Protocol, args: argparse.Namespace, bundle, name: str, several: bool) -> tuple:
    """(protocol, data folder, data source, split keys, modalities, output folder) of one
    protocol, every check of it against the data and the encoder done; ``several``: one of
    several protocols, which report into ``<--out>/<protocol>``."""
    data = args.data or (p.data or "")
    source = open_data(p, data)
    keys = split_keys(source, p)
    mods = check_bundle(bundle, p)
    filed = p.name + ("-set" if p.overrides else "")  # the plain protocol's results stay
    if args.out:
        out = Path(args.out) / filed if several else Path(args.out)
    else:
        out = Path("eval_out") / filed / name
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    return p, data, source, keys, mods, out
