"""Media files on disk: the extensions taken as media, finding a listed file (case, extension)
and walking a folder (links followed once, everything passed over counted)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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


def rel_to(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name
