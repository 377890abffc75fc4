"""UCF101 and HMDB51 adapters on fake trees with the real naming traps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prep_helpers import place, read_shards, sample_json, write_text

from avssl.cli import UserError
from data_prep import prepare_dataset
from data_prep.__main__ import main
from data_prep.common import Context
from data_prep.hmdb51 import collect as collect_hmdb
from data_prep.ucf101 import collect as collect_ucf

HSP = "HandstandPushups/v_HandStandPushups"


def make_ucf(root: Path, media: dict, mismatch: bool = False) -> tuple[Path, Path]:
    videos, lists = root / "UCF-101", root / "ucfTrainTestlist"
    for rel in (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        f"{HSP}_g01_c01.avi",
        f"{HSP}_g02_c01.avi",
        "YoYo/v_YoYo_g01_c01.avi",
    ):
        place(media["av"], videos / rel)
    write_text(lists / "classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n", crlf=True)
    train = (
        f"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n{HSP}_g02_c01.avi {3 if mismatch else 2}\n"
    )
    test = f"{HSP}_g01_c01.avi\nYoYo/v_YoYo_g01_c01.avi\n"
    for k in (1, 2):
        write_text(lists / f"trainlist0{k}.txt", train, crlf=True)
        write_text(lists / f"testlist0{k}.txt", test, crlf=True)
    write_text(lists / "trainlist03.txt", f"{HSP}_g01_c01.avi 2\nYoYo/v_YoYo_g01_c01.avi 3\n")
    write_text(
        lists / "testlist03.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nYoYo/v_YoYo_g09_c01.avi\n",
        crlf=True,
    )
    return videos, lists


def test_ucf_plan_traps(tmp_path, media):
    videos, lists = make_ucf(tmp_path / "data", media)
    plan = collect_ucf(Context("ucf101", videos, lists, tmp_path / "out"))
    assert plan.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    by_key = {it.key: it for it in plan.items}
    key = "ucf101/HandstandPushups/v_HandStandPushups_g01_c01"
    assert by_key[key].label == 1 and by_key[key].label_name == "HandstandPushups"
    assert len(plan.items) == 4  # stored once, whatever the number of splits
    assert plan.splits["test1"] == [key, "ucf101/YoYo/v_YoYo_g01_c01"]
    assert plan.splits["train3"][0] == key
    assert [f["key"] for f in plan.failures] == ["ucf101/YoYo/v_YoYo_g09_c01"]
    assert "testlist03.txt" in plan.failures[0]["reason"]


def test_ucf_label_mismatch_is_user_error(tmp_path, media):
    videos, lists = make_ucf(tmp_path / "data", media, mismatch=True)
    with pytest.raises(UserError, match="trainlist01.txt:2: label 3 does not match"):
        collect_ucf(Context("ucf101", videos, lists, tmp_path / "out"))


def test_ucf_end_to_end_splits_and_json(tmp_path, media):
    videos, lists = make_ucf(tmp_path / "data", media)
    out = tmp_path / "out"
    rc = main(
        [
            "--dataset",
            "ucf101",
            "--root",
            str(videos),
            "--splits",
            str(lists),
            "--out",
            str(out),
            "--workers",
            "1",
            "--max-failures",
            "0.5",
            "--no-progress",
        ]
    )
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 4 and manifest["num_failed"] == 1
    assert manifest["splits"] == {
        "train1": 2,
        "test1": 2,
        "train2": 2,
        "test2": 2,
        "train3": 2,
        "test3": 1,
    }
    assert (out / "splits" / "test3.txt").read_text() == (
        "ucf101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01\n"
    )
    samples = read_shards(out)
    meta = sample_json(samples, "ucf101/HandstandPushups/v_HandStandPushups_g02_c01")
    assert meta["id"] == "ucf101/HandstandPushups/v_HandStandPushups_g02_c01"
    assert (meta["label"], meta["label_name"], meta["source"]) == (1, "HandstandPushups", "ucf101")
    assert set(samples[meta["id"]]) == {"mp4", "flac", "json"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_clips"] == 4 and stats["fbank_std"] > 0


def test_ucf_missing_split_file_exit_2(tmp_path, media, capsys):
    videos, lists = make_ucf(tmp_path / "data", media)
    (lists / "testlist02.txt").unlink()
    rc = main(
        [
            "--dataset",
            "ucf101",
            "--root",
            str(videos),
            "--splits",
            str(lists),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("data_prep: error: UCF101 split file not found")
    assert "testlist02.txt" in err[-1]


HMDB = {
    "brush_hair": [
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
        "Brushing_my_hair_brush_hair_h_cm_np1_ri_goo_1.avi",
    ],
    "cartwheel": [
        "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi",
        "Bodenturnen_&_Co_cartwheel_f_cm_np1_ri_med_1.avi",
    ],
}


def make_hmdb(root: Path, media: dict) -> tuple[Path, Path]:
    videos, lists = root / "hmdb51_org", root / "testTrainMulti_7030_splits"
    for cls, names in HMDB.items():
        for name in names:
            place(media["mono"], videos / cls / name)
        for k in (1, 2, 3):
            codes = [(k + i) % 3 for i in range(len(names))]  # 1 train, 2 test, 0 unused
            lines = "".join(f"{n} {c} \n" for n, c in zip(names, codes))
            write_text(lists / f"{cls}_test_split{k}.txt", lines, crlf=k == 2)
    return videos, lists


def test_hmdb_plan_names_and_codes(tmp_path, media):
    videos, lists = make_hmdb(tmp_path, media)
    plan = collect_hmdb(Context("hmdb51", videos, lists, tmp_path / "out"))
    assert plan.classes == ["brush_hair", "cartwheel"]
    assert len(plan.items) == 4 and not plan.failures
    key = "hmdb51/cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0"
    amp = "hmdb51/cartwheel/Bodenturnen_&_Co_cartwheel_f_cm_np1_ri_med_1"
    # split 1: codes (1, 2) -> first name train, second test
    assert plan.splits["train1"] == ["hmdb51/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0", key]
    assert amp in plan.splits["test1"]
    # split 2: codes (2, 0): the second video is unused in split 2
    assert amp not in plan.splits["train2"] + plan.splits["test2"]
    assert {it.key: it.label for it in plan.items}[key] == 1


def test_hmdb_end_to_end_and_missing_split(tmp_path, media):
    videos, lists = make_hmdb(tmp_path, media)
    out = tmp_path / "out"
    manifest = prepare_dataset("hmdb51", videos, lists, out, progress=False)
    assert manifest["num_samples"] == 4 and manifest["classes"] == ["brush_hair", "cartwheel"]
    samples = read_shards(out)
    meta = sample_json(samples, "hmdb51/cartwheel/Bodenturnen_&_Co_cartwheel_f_cm_np1_ri_med_1")
    assert meta["has_audio"] and meta["label_name"] == "cartwheel"
    (lists / "cartwheel_test_split3.txt").unlink()
    with pytest.raises(UserError, match="cartwheel_test_split3.txt"):
        prepare_dataset("hmdb51", videos, lists, tmp_path / "out2", progress=False)
