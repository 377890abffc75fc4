"""Command-line entry point: ``avssl <command> ...``.

Commands:
    fit | validate   LightningCLI over an objective and the AVDataModule (``--config`` files).
    pretrain         ``make pretrain``: recipe + data folder -> a run folder (avssl.train).
    export           checkpoint -> frozen encoder bundle (avssl.export).
    eval             evaluation protocol on an encoder bundle (avssl.evaluators.run).
    prep             dataset -> shards (data_prep; needs the repository checkout).

Each command lives in its own module and is imported only when used, so ``avssl export`` does
not import Lightning and ``avssl --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "fit": ("avssl.train", "lightning_main"),
    "validate": ("avssl.train", "lightning_main"),
    "pretrain": ("avssl.train", "pretrain_main"),
    "export": ("avssl.export", "main"),
    "eval": ("avssl.evaluators.run", "main"),
    "prep": ("data_prep.__main__", "main"),
}


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(
            f"avssl: unknown command {cmd!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr
        )
        return 2
    module, func = COMMANDS[cmd]
    try:
        entry = getattr(importlib.import_module(module), func)
        if module == "avssl.train" and func == "lightning_main":
            rest = [cmd, *rest]
        result = entry(rest)
    except UserError as err:
        print(f"avssl {cmd}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    # ``python -m avssl.cli`` runs this file as ``__main__``; commands raise the UserError of the
    # imported ``avssl.cli`` module, so dispatch through that module, not this copy of it.
    from avssl.cli import main as _main

    sys.exit(_main())
