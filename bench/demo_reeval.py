"""Evaluates the stored bundles of ``make demo RECIPE=<name> SEEDS=N`` again, without
retraining: the random-init bundle and each seed's with the demo's protocol, then the demo's
seeds table (for a change of the evaluation code).

    python bench/demo_reeval.py mavil vatt [--seeds 3] [--data shards/synthetic]
    python bench/demo_reeval.py avid_cma --suffix=-its-avid   # the runs AVID-CMA continued

Reads ``encoders/demo-<name>-seeds<N>-{random,seed<k><suffix>}``; writes ``eval_out/demo/`` as
the demo does and prints one table per name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avssl import demo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", help="demo run names (recipe, or recipe-args)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data", default="shards/synthetic")
    ap.add_argument("--suffix", default="", help="after seed<k> in the seeds' bundle names")
    args = ap.parse_args(argv)
    for name in args.names:
        stem = f"demo-{name}-seeds{args.seeds}"
        missing = [
            p
            for p in [f"{stem}-random"]
            + [f"{stem}-seed{k}{args.suffix}" for k in range(args.seeds)]
            if not (Path("encoders") / p).is_dir()
        ]
        if missing:
            print(f"demo_reeval: error: no bundle encoders/{missing[0]}", file=sys.stderr)
            return 2
        data = Path(args.data)
        rand = demo._evaluate(f"{stem}-random", data)
        rows = [demo._evaluate(f"{stem}-seed{k}{args.suffix}", data) for k in range(args.seeds)]
        print(f"## {name}{args.suffix}\n{demo._seeds_table(rand, rows, name)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
