"""What data_prep reads from a tree and its index files: media extensions, files that are not
media, linked folders, malformed rows, and an OUT whose manifest.json is not a manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prep_helpers import place, write_clip, write_text, write_wav

from avssl.cli import UserError
from data_prep.__main__ import main
from data_prep.audioset import collect as collect_audioset
from data_prep.common import MEDIA_EXTS, Context
from data_prep.esc50 import collect as collect_esc50
from data_prep.folder import collect as collect_folder
from data_prep.hmdb51 import collect as collect_hmdb
from data_prep.kinetics_sounds import collect as collect_ks
from data_prep.ucf101 import collect as collect_ucf
from data_prep.vggsound import collect as collect_vgg

ESC_HEAD = "filename,fold,target,category,esc10,src_file,take\n"
ESC_ROW = "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
AS_HEAD = "# Segments csv\n# num_ytids=1\n# YTID, start_seconds, end_seconds, positive_labels\n"
AS_LABELS = "index,mid,display_name\n0,/m/a,A\n"


def _run(root: Path, out: Path, *extra: str) -> int:
    return main(["--dataset", "folder", "--root", str(root), "--out", str(out), "--no-progress",
                 *extra])  # fmt: skip


def _notes(out: Path) -> list[str]:
    return json.loads((out / "manifest.json").read_text())["notes"]


def test_folder_converts_more_containers_and_notes_the_files_it_skips(tmp_path, capsys):
    """AVCHD .MTS and AIFF are read; .DS_Store, .txt, .json and raw .h264 are counted in one
    note (in the manifest and printed), not failed and not silently dropped."""
    root = tmp_path / "root"
    (root / "c").mkdir(parents=True)
    write_clip(root / "c" / "cam.MTS")
    write_wav(root / "c" / "sound.aiff")
    write_clip(root / "c" / "clip.mp4")
    for name in (".DS_Store", "notes.txt", "meta.json", "raw.h264"):
        (root / "c" / name).write_bytes(b"not a clip")
    out = tmp_path / "out"
    assert _run(root, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["num_samples"], manifest["num_failed"]) == (3, 0)
    note = next(n for n in manifest["notes"] if "not media" in n)
    assert note.startswith("4 file(s) below ROOT skipped as not media by their extension (")
    assert all(f"{kind} 1" in note for kind in (".h264", ".json", ".txt", "hidden")), note
    assert "e.g. c/raw.h264, c/meta.json, c/notes.txt" in note
    assert note in capsys.readouterr().err


def test_no_media_at_all_names_the_files_skipped(tmp_path, capsys):
    root = tmp_path / "root"
    write_text(root / "c" / "readme.txt", "x")
    assert _run(root, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 file(s) below ROOT skipped as not media" in err[0], err


@pytest.mark.parametrize("ext", [".mts", ".m2ts", ".vob", ".aif", ".aiff", ".wma", ".mka"])
def test_ffmpeg_containers_are_media(tmp_path, ext):
    root = tmp_path / "root"
    place(Path(__file__), root / f"clip{ext.upper()}")  # the content is the converter's business
    plan = collect_folder(Context("folder", root, None, tmp_path / "out"))
    assert [(it.key, it.path) for it in plan.items] == [
        ("folder/clip", root / f"clip{ext.upper()}")
    ]


def test_readme_lists_every_media_extension():
    text = (Path(__file__).parents[2] / "data_prep" / "README.md").read_text()
    words = set(text.replace("`", " ").replace(",", " ").split())
    assert [e for e in MEDIA_EXTS if e not in words] == []


needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")


@needs_symlinks
def test_linked_class_folders_are_followed_once(tmp_path, media):
    """A linked class folder is a class; loops, links to a folder above and second links to a
    folder already walked are not walked again, and the note says so."""
    store = tmp_path / "store"
    place(media["av"], store / "classB" / "b.mp4")
    root = tmp_path / "root"
    place(media["av"], root / "classA" / "a.mp4")
    (root / "classB").symlink_to(store / "classB", target_is_directory=True)
    (root / "classA" / "loop").symlink_to(root, target_is_directory=True)
    (root / "classA" / "outside").symlink_to(tmp_path, target_is_directory=True)
    (root / "classB" / "again").symlink_to(root / "classA", target_is_directory=True)
    (root / "classC").symlink_to(root / "classA", target_is_directory=True)
    plan = collect_folder(Context("folder", root, None, tmp_path / "out"))
    assert plan.classes == ["classA", "classB"]
    assert [it.key for it in plan.items] == ["folder/classA/a", "folder/classB/b"]
    assert plan.items[1].path == root / "classB" / "b.mp4"  # the path through the link
    note = next(n for n in plan.notes if "not walked" in n)
    assert note.startswith("4 folder(s) below ROOT not walked: the same folder as one walked")


@needs_symlinks
def test_look_up_by_name_follows_linked_folders(tmp_path, media):
    root = tmp_path / "vgg"
    place(media["av"], tmp_path / "disk2" / "abc_000030.mp4")
    root.mkdir()
    (root / "video").symlink_to(tmp_path / "disk2", target_is_directory=True)
    write_text(root / "vggsound.csv", "abc,30,dog,train\n")
    plan = collect_vgg(Context("vggsound", root, None, tmp_path / "out"))
    assert [it.key for it in plan.items] == ["vggsound/video/abc_000030"] and not plan.failures


def test_short_esc50_row_is_one_line_error_exit_2(tmp_path, capsys):
    root = tmp_path / "esc"
    write_text(root / "meta" / "esc50.csv", ESC_HEAD + ESC_ROW + "1-110389-A-0.wav,1\n")
    argv = ["--dataset", "esc50", "--root", str(root), "--out", str(tmp_path / "out")]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0] == (
        f"data_prep: error: {root / 'meta' / 'esc50.csv'}:3: expected 7 fields "
        "(filename,fold,target,category,esc10,src_file,take), got 2"
    )


def _esc(root: Path, body: str) -> None:
    write_text(root / "meta" / "esc50.csv", ESC_HEAD + body)
    collect_esc50(Context("esc50", root, None, root / "out"))


def _vgg(root: Path, body: str) -> None:
    write_text(root / "vggsound.csv", body)
    collect_vgg(Context("vggsound", root, None, root / "out"))


def _as_labels(root: Path, body: str) -> None:
    write_text(root / "meta" / "class_labels_indices.csv", body)
    write_text(root / "meta" / "eval_segments.csv", AS_HEAD)
    collect_audioset(Context("audioset", root, root / "meta", root / "out"))


def _as_segments(root: Path, body: str) -> None:
    write_text(root / "meta" / "class_labels_indices.csv", AS_LABELS)
    write_text(root / "meta" / "eval_segments.csv", AS_HEAD + body)
    collect_audioset(Context("audioset", root, root / "meta", root / "out"))


def _ks_lists(root: Path, body: str) -> None:
    write_text(root / "lists" / "train.txt", body)
    write_text(root / "lists" / "val.txt", "tickling/b.mp4\n")
    collect_ks(Context("kinetics_sounds", root, root / "lists", root / "out"))


def _ks_csvs(root: Path, body: str) -> None:
    write_text(root / "csvs" / "train.csv", "label,youtube_id,time_start,time_end\n" + body)
    write_text(root / "csvs" / "validate.csv", "label,youtube_id,time_start,time_end\n")
    collect_ks(Context("kinetics_sounds", root, root / "csvs", root / "out"))


def _ucf(root: Path, body: str) -> None:
    write_text(root / "ucfTrainTestlist" / "classInd.txt", body)
    collect_ucf(Context("ucf101", root, None, root / "out"))


def _hmdb(root: Path, body: str) -> None:
    for k in (1, 2, 3):
        write_text(root / "testTrainMulti_7030_splits" / f"ride_test_split{k}.txt", body)
    collect_hmdb(Context("hmdb51", root, None, root / "out"))


@pytest.mark.parametrize(
    "reader, body, message",
    [
        (_esc, ESC_ROW + "1-110389-A-0.wav,1\n", r"esc50.csv:3: expected 7 fields .*, got 2$"),
        (_esc, ESC_ROW + "1-1-A-0.wav,1,0,dog,bark,True,1,A\n", r"esc50.csv:3: .* got 8$"),
        (_esc, "\n" + ESC_ROW + "1-1-A-1.wav,1,1,,False,1,A\n", r"esc50.csv:4: category is empty"),
        (_esc, ",1,0,dog,True,1,A\n", r"esc50.csv:2: filename is empty"),
        (_vgg, ",30,dog,train\n", r"vggsound.csv:1: youtube_id is empty"),
        (_vgg, "abc,30,,train\n", r"vggsound.csv:1: label is empty"),
        (_vgg, "abc,,dog,train\nabd,1,dog,train\n", r"vggsound.csv:1: start_seconds '' is not"),
        (_as_labels, "index,mid,display_name\n0,/m/a\n", r"indices.csv:2: expected 3 fields"),
        (_as_labels, "index,mid,display_name\n\n0,,A\n", r"indices.csv:3: mid is empty"),
        (_as_segments, 'abc, 0.0, 10.0, ""\n', r"eval_segments.csv:4: no label mids"),
        (_as_segments, ' , 0.0, 10.0, "/m/a"\n', r"eval_segments.csv:4: expected 'YTID"),
        (_ks_lists, '["tickling/a.mp4", ""]', r"train.txt: entry 2: expected '<class_folder>/"),
        (_ks_lists, "tickling/a.mp4\n\nabseiling/c.mp4\n", r"train.txt:3: 'abseiling/c.mp4'"),
        (_ks_csvs, "tickling,,10,20\n", r"train.csv:2: youtube_id is empty"),
        (_ks_csvs, "\ntickling,abc\n", r"train.csv:3: expected 4 fields .*, got 2"),
        (_ucf, "1 YoYo\n\n2\n", r"classInd.txt:3: expected '<id> <ClassName>'"),
        (_hmdb, "a.avi 1\n\n\nb.avi 7\n", r"ride_test_split1.txt:4: expected '<video>.avi"),
    ],
)
def test_malformed_rows_are_one_line_errors_naming_file_and_line(tmp_path, reader, body, message):
    with pytest.raises(UserError, match=message) as err:
        reader(tmp_path / "data", body)
    assert "\n" not in str(err.value)


def test_blank_lines_and_comma_only_rows_are_skipped(tmp_path, media):
    root = tmp_path / "esc"
    place(media["wav"], root / "audio" / "1-100032-A-0.wav")
    write_text(root / "meta" / "esc50.csv", ESC_HEAD + "\n" + ESC_ROW + ",,,,,,\n  \n")
    plan = collect_esc50(Context("esc50", root, None, tmp_path / "out"))
    assert [it.key for it in plan.items] == ["esc50/audio/1-100032-A-0"]


@pytest.mark.parametrize("content", ["[1, 2]", "42", "null", '"folder"'])
def test_manifest_that_is_not_an_object_is_replaced(tmp_path, media, content):
    """Taken as a manifest that does not parse is: it names no dataset, so the run goes on and
    writes its own."""
    root = tmp_path / "root"
    place(media["av"], root / "x.mp4")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(content)
    assert _run(root, out) == 0
    assert json.loads((out / "manifest.json").read_text())["dataset"] == "folder"


def test_manifest_of_another_dataset_or_a_folder_is_refused(tmp_path, media, capsys):
    root = tmp_path / "root"
    place(media["av"], root / "x.mp4")
    out = tmp_path / "out"
    write_text(out / "manifest.json", '{"dataset": "ucf101"}')
    assert _run(root, out) == 2
    (out / "manifest.json").unlink()
    (out / "manifest.json").mkdir()
    assert _run(root, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"data_prep: error: OUT {out} already holds dataset 'ucf101'; choose another OUT",
        f"data_prep: error: OUT {out}: manifest.json is not a file; remove it or choose another "
        "OUT",
    ]


def test_kinetics_class_folders_note_the_files_they_skip(tmp_path, media):
    root = tmp_path / "k400"
    place(media["av"], root / "train" / "tickling" / "a.mp4")
    write_text(root / "train" / "tickling" / "a.txt", "caption")
    place(media["av"], root / "val" / "tickling" / "b.mp4")
    plan = collect_ks(Context("kinetics_sounds", root, None, tmp_path / "out"))
    assert [it.key for it in plan.items] == [
        "kinetics_sounds/train/tickling/a",
        "kinetics_sounds/val/tickling/b",
    ]
    assert any(n.startswith("1 file(s) below ROOT skipped as not media") for n in plan.notes)
