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

#: containers FFmpeg reads that hold video (AVCHD .mts/.m2ts, DVD .vob, camcorder .mod/.tod,
#: broadcast .mxf/.dv, ...); raw elementary streams (.h264, .m2v) are left out: no timestamps
VIDEO_EXTS = (
    ".mp4",
    ".avi",
    ".mkv",
    ".webm",
    ".mov",
    ".qt",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".vob",
    ".mod",
    ".tod",
    ".ts",
    ".mts",
    ".m2ts",
    ".m2t",
    ".flv",
    ".f4v",
    ".wmv",
    ".asf",
    ".3gp",
    ".3g2",
    ".ogv",
    ".mxf",
    ".dv",
    ".divx",
)
AUDIO_EXTS = (
    ".wav",
    ".flac",
    ".mp3",
    ".ogg",
    ".oga",
    ".opus",
    ".m4a",
    ".aac",
    ".aif",
    ".aiff",
    ".aifc",
    ".wma",
    ".mka",
    ".ac3",
    ".mp2",
    ".amr",
    ".au",
    ".caf",
    ".wv",
    ".w64",
)
MEDIA_EXTS = VIDEO_EXTS + AUDIO_EXTS


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


def resolve(base: Path, rel: str) -> Path:
    """``base/rel``; when absent, a case-insensitive match or the same stem with a media ext."""
    path = base / rel
    if path.is_file():
        return path
    parent = path.parent
    if not parent.is_dir() and parent.parent.is_dir():  # "tap_dancing" finds "Tap Dancing"
        low = _folder_name(parent.name)
        parent = next((d for d in parent.parent.iterdir() if _folder_name(d.name) == low), parent)
    if not parent.is_dir():
        return path
    want = path.name.lower()
    stem = os.path.splitext(want)[0]
    names = sorted(parent.iterdir(), key=_video_first)
    for cand in names:
        if cand.name.lower() == want:
            return cand
    for cand in names:
        low = cand.name.lower()
        if os.path.splitext(low)[0] == stem and low.endswith(MEDIA_EXTS):
            return cand
    return path


def _folder_name(name: str) -> str:
    return name.lower().replace("_", " ")


def _video_first(path: Path) -> tuple[bool, str]:
    """Sort key: video containers before audio-only files, then by name."""
    return (not path.name.lower().endswith(VIDEO_EXTS), path.name)


@dataclass
class Walk:
    """What :func:`walk_files` found: media files, and what it passed over (none silently)."""

    media: list[Path] = field(default_factory=list)
    not_media: list[Path] = field(default_factory=list)  # an extension not in MEDIA_EXTS
    links_skipped: list[tuple[Path, str]] = field(default_factory=list)  # (folder, real path)
    unreadable: list[str] = field(default_factory=list)  # folders os.walk could not list

    def notes(self, root: Path) -> list[str]:
        """One note per kind of file or folder passed over, with counts and a few examples."""
        notes = []
        if self.not_media:
            by_ext: dict[str, list[Path]] = {}
            for path in self.not_media:
                by_ext.setdefault(_kind(path.name), []).append(path)
            exts = sorted(by_ext, key=lambda e: (-len(by_ext[e]), e))
            counts = ", ".join(f"{e} {len(by_ext[e])}" for e in exts[:6])
            more = ", ..." if len(exts) > 6 else ""
            shown = ", ".join(rel_to(by_ext[e][0], root) for e in exts[:3])
            notes.append(
                f"{len(self.not_media)} file(s) below ROOT skipped as not media by their "
                f"extension ({counts}{more}; e.g. {shown}); media extensions are listed in "
                "data_prep/README.md"
            )
        if self.links_skipped:
            link, real = self.links_skipped[0]
            notes.append(
                f"{len(self.links_skipped)} folder(s) below ROOT not walked: the same folder as "
                "one walked already (reached through a symbolic link) or a link to a folder "
                f"above it (e.g. {rel_to(link, root)} is {real})"
            )
        if self.unreadable:
            notes.append(
                f"{len(self.unreadable)} folder(s) below ROOT could not be read (e.g. "
                f"{self.unreadable[0]})"
            )
        return notes


def _kind(name: str) -> str:
    """A skipped file's kind for the note: its extension, ``hidden`` or ``no extension``."""
    if name.startswith("."):
        return "hidden"
    return os.path.splitext(name)[1].lower() or "no extension"


def walk_files(root: Path) -> Walk:
    """Every file below ``root`` (folders and names sorted), sorted into media and not media.

    Symbolic links to folders are followed, each real folder once: a link to a folder already
    walked (by its real path), or to a folder holding the current one (a loop), is recorded in
    ``links_skipped`` instead. Folders that cannot be listed are recorded in ``unreadable``.
    """
    found = Walk()
    seen = {os.path.realpath(root)}

    def unreadable(err: OSError) -> None:
        found.unreadable.append(f"{err.filename}: {err.strerror or err}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        here = os.path.realpath(dirpath)
        skipped = set()
        # folders themselves claim their real path before links to them in the same folder
        for name in sorted(dirnames, key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d)):
            real = os.path.realpath(os.path.join(dirpath, name))
            if real in seen or os.path.commonpath([real, here]) == real:
                found.links_skipped.append((Path(dirpath) / name, real))
                skipped.add(name)
            else:
                seen.add(real)
        dirnames[:] = [d for d in sorted(dirnames) if d not in skipped]
        for name in sorted(filenames):
            path = Path(dirpath) / name
            (found.media if name.lower().endswith(MEDIA_EXTS) else found.not_media).append(path)
    return found


def index_media(root: Path) -> dict[str, Path]:
    """Maps file stem (and full name) -> path for every media file below ``root``; where a
    stem has several files, a video container wins over an audio-only file (a mirror's
    ``audio/<id>.wav`` beside ``video/<id>.mp4``), then the first in sorted order. Linked
    folders are followed as in :func:`walk_files`."""
    index: dict[str, Path] = {}
    for path in walk_files(root).media:
        name = path.name
        for key in (name, os.path.splitext(name)[0]):
            held = index.get(key)
            if held is None or _video_first(path)[0] < _video_first(held)[0]:
                index[key] = path
    return index


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


def rel_to(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


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
