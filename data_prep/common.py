"""What every source adapter shares: the plan of items, keys, split lists and file look-ups.

An adapter turns a dataset's official index/split files into a :class:`Plan`: one
:class:`Item` per source video (stored once in the shards), split memberships as key lists,
and failures for files that are listed but missing on disk.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avssl.cli import UserError
from data_prep.files import (
    AUDIO_EXTS,
    MEDIA_EXTS,
    VIDEO_EXTS,
    Walk,
    index_media,
    rel_to,
    resolve,
    walk_files,
)

__all__ = [
    "AUDIO_EXTS",
    "MEDIA_EXTS",
    "VIDEO_EXTS",
    "Walk",
    "index_media",
    "rel_to",
    "resolve",
    "walk_files",
]


@dataclass
class Context:
    """What the user asked for: paths, workers and dataset-specific options (None = not given)."""

    dataset: str
    root: Path | None
    splits: Path | None
    out: Path
    workers: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def need_root(self) -> Path:
        if self.root is None:
            raise UserError(f"dataset {self.dataset} needs ROOT (--root), the folder of its clips")
        if not self.root.is_dir():
            raise UserError(f"ROOT {self.root} does not exist or is not a folder")
        return self.root


@dataclass
class Item:
    """One source file to convert. ``label`` is -1 when unknown, a list when multilabel."""

    key: str
    path: Path
    label: int | list[int] = -1
    label_name: str | list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """An adapter's output: items in a stable order, splits as key lists, early failures.

    ``looked_for`` says what the adapter searched (named when it found no clip at all).
    """

    dataset: str
    classes: list[str]
    multilabel: bool = False
    items: list[Item] = field(default_factory=list)
    splits: dict[str, list[str]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    want_video: bool = True
    require_video: bool = True
    notes: list[str] = field(default_factory=list)
    looked_for: str = ""
    relabelled: list[tuple[str, Any, Any]] = field(default_factory=list)  # key, kept, other
    _by_key: dict[str, Item] = field(default_factory=dict, repr=False)
    _missing: dict[str, str] = field(default_factory=dict, repr=False)  # key -> path listed
    _members: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def add(
        self,
        rel: str,
        path: Path | None,
        split_names: list[str] | tuple = (),
        listed_in: str = "",
        **fields: Any,
    ) -> str | None:
        """Adds (or re-uses) the item for ``rel`` and appends its key to ``split_names``.

        A ``path`` of None (or a file that does not exist) is recorded once in ``failures``
        with ``listed_in`` in the reason and left out of the splits, as is another file whose
        key is taken. A clip listed again with another label keeps its first one (counted in
        ``relabelled``). Returns the key or None.
        """
        key = make_key(self.dataset, rel)
        shown = str(path) if path is not None else rel
        for name in split_names:
            self.splits.setdefault(name, [])
        item = self._by_key.get(key)
        taken = item.path if item is not None else self._missing.get(key)
        if taken is not None and path is not None and shown != str(taken):
            reason = f"same key as {taken} (keys drop the extension and map '.' to '_')"
            self.failures.append({"key": key, "path": shown, "reason": reason})
            return None
        if key in self._missing:  # listed again, reported once
            return None
        if item is None:
            if path is None or not path.is_file():
                self._missing[key] = shown
                where = f" (listed in {listed_in})" if listed_in else ""
                self.failures.append(
                    {"key": key, "path": shown, "reason": f"missing on disk{where}"}
                )
                return None
            item = Item(key=key, path=path, **fields)
            self._by_key[key] = item
            self.items.append(item)
        elif "label" in fields and fields["label"] != item.label:
            self.relabelled.append((key, item.label_name, fields.get("label_name")))
        for name in split_names:
            if (name, key) not in self._members:  # a duplicate line adds nothing
                self._members.add((name, key))
                self.splits[name].append(key)
        return key


def make_key(dataset: str, rel: str) -> str:
    """``<dataset>/<relative path without extension>`` with "." -> "_" (WebDataset keys)."""
    rel = rel.replace("\\", "/").strip("/")
    stem, ext = os.path.splitext(rel)
    if ext.lower() not in MEDIA_EXTS:
        stem = rel
    return f"{dataset}/{stem}".replace(".", "_")


def read_text(path: Path) -> str:
    """A UTF-8 text file (a byte-order mark tolerated); one-line error when it is not text."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; tolerates CRLF endings and a UTF-8 byte-order mark."""
    return [line for _, line in numbered_lines(path)]


def need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    return path


def find_dir(candidates: list[Path | None], what: str, hint: str) -> Path:
    """The first existing folder among ``candidates``, else a UserError with ``hint``."""
    for cand in candidates:
        if cand is not None and cand.is_dir():
            return cand
    shown = ", ".join(str(c) for c in candidates if c is not None)
    raise UserError(f"{what} not found (looked in {shown}); {hint}")


def numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of the non-empty lines; CRLF and a BOM tolerated."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def csv_rows(
    path: Path, columns: tuple[str, ...], required: tuple[str, ...] = ()
) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each row of a CSV file with a header line.

    Lines with nothing but blanks and commas are skipped. Values are not stripped.

    Raises:
        UserError: ``path:line``: a header without one of ``columns``, a row with fewer or more
            fields than the header, or an empty value in one of the ``required`` columns.
    """
    reader = csv.DictReader(io.StringIO(read_text(path)))
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    if header and missing:
        raise UserError(
            f"{path}: expected columns {','.join(columns)} (missing {','.join(missing)})"
        )
    rows = []
    for row in reader:
        n = reader.line_num
        values = [v for k, v in row.items() if k is not None and v is not None]
        extra = row.get(None) or []  # fields beyond the header
        if not any(str(v).strip() for v in [*values, *extra]):
            continue
        if extra or None in row.values():
            raise UserError(
                f"{path}:{n}: expected {len(header)} fields ({','.join(header)}), got "
                f"{len(values) + len(extra)}"
            )
        blank = [c for c in required if not row[c].strip()]
        if blank:
            raise UserError(f"{path}:{n}: {blank[0]} is empty")
        rows.append((n, row))
    return rows


def best_pattern(
    rows: Sequence[Any],
    fields: Callable[[Any], dict],
    known: Sequence[str],
    index: dict[str, Path],
    limit: int = 5000,
) -> str | None:
    """The file-name pattern of ``known`` that names the most files of ``index`` (ties: the
    first), None when none names any. Scores up to ``limit`` rows spread evenly over ``rows``,
    then all of them when those match nothing (a user may hold the clips of one list only)."""
    step = max(1, len(rows) // limit)
    for sample in (rows[::step], rows) if step > 1 else (rows,):
        scores = [sum(p.format(**fields(r)) in index for r in sample) for p in known]
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        if scores[best]:
            return known[best]
    return None
