"""``avssl eval`` on a ``DATASET=folder`` dataset: the folder protocols, the split ``all``,
unknown splits, the dataset check's suggestion, and the encoder name of run checkpoints."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from avssl.data.shards import resolve
from avssl.evaluators.features import extract_features
from avssl.evaluators.knn import knn_predict
from avssl.evaluators.protocols import load_protocol, protocols_for
from avssl.evaluators.retrieval import cross_modal
from avssl.evaluators.run import encoder_name, main, split_keys
from avssl.export import load_encoder
from tests.data_prep.prep_helpers import write_clip
from tests.evaluators.test_run import _args, _eval_error

pytestmark = pytest.mark.slow
CLASSES = ("birds", "cars", "dogs")


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> Path:
    """3 class folders x 4 generated clips (sizes, rates and lengths vary) prepared as shards."""
    import data_prep

    root = tmp_path_factory.mktemp("folder_clips")
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir()
        for i in range(4):
            size = (48 + 16 * c, 40 + 8 * i)
            write_clip(root / cls / f"{cls}{i}.mp4", *size, fps=8 + 2 * i, seconds=1.0 + 0.2 * c)
    out = root.parent / "folder_shards"
    data_prep.prepare_dataset(
        "folder", root, out=out, layout="classes", progress=False, log=lambda m: None
    )
    return out


def _keys(data: Path, split: str) -> list[str]:
    return (data / "splits" / f"{split}.txt").read_text().split()


def test_folder_split_is_stratified_and_seeded(folder_data):
    manifest = json.loads((folder_data / "manifest.json").read_text())
    assert manifest["classes"] == list(CLASSES)
    assert manifest["splits"] == {"all": 12, "train": 9, "test": 3}
    test = _keys(folder_data, "test")
    assert sorted(k.split("/")[1] for k in test) == list(CLASSES)  # one per class
    assert set(test).isdisjoint(_keys(folder_data, "train"))


def test_folder_knn_end_to_end(folder_data, tiny_bundle, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(_args("folder_knn", tiny_bundle, folder_data, out, cache)) == 0
    res = json.loads((out / "results.json").read_text())
    rounds = res["rounds"]
    assert [(r["kind"], r["split"]) for r in rounds] == [
        (k, "test") for k in ("audio", "video", "joint")
    ]
    assert all((r["n_train"], r["n_test"]) == (9, 3) for r in rounds)
    # the video round again, by hand, from the cached features
    train, test = _keys(folder_data, "train"), _keys(folder_data, "test")
    fs = extract_features(load_encoder(tiny_bundle), str(folder_data), train + test, ("video",),
                          num_clips=10, cache_dir=cache, progress=False, device="cpu")  # fmt: skip
    tr, te = fs.select(train), fs.select(test)
    scores = knn_predict(tr.get("video"), tr.labels, te.get("video"), 20, 0.07, 3, device="cpu")
    top1 = 100 * (scores.argmax(1) == te.labels).double().mean().item()
    assert rounds[1]["metrics"]["k20_top1"] == pytest.approx(top1)
    assert sorted(te.labels.tolist()) == [0, 1, 2]


def test_split_all_is_every_key_in_shard_order(folder_data, tiny_bundle, tmp_path):
    """``folder_av_retrieval`` scores split ``all``: every sample of the shards, in their order
    (``ShardSource.split_keys("all")`` is None, "no key list")."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert load_protocol("folder_av_retrieval").splits[0].test == "all"
    assert main(_args("folder_av_retrieval", tiny_bundle, folder_data, out, cache)) == 0
    (r,) = json.loads((out / "results.json").read_text())["rounds"]
    assert (r["n_items"], r["n_without_both"]) == (12, 0)
    every = []  # the members' order in the tars, read independently of the sidecars
    for shard in json.loads((folder_data / "manifest.json").read_text())["shards"]:
        with tarfile.open(folder_data / shard["file"]) as tar:
            names = [m.name.split(".", 1)[0] for m in tar.getmembers()]
        every += list(dict.fromkeys(names))
    source = resolve(str(folder_data))
    assert split_keys(source, load_protocol("folder_av_retrieval")) == {"all": every}
    assert sorted(every) == sorted(_keys(folder_data, "all")) and len(every) == 12
    fs = extract_features(load_encoder(tiny_bundle), str(folder_data), every, ("audio", "video"),
                          num_clips=1, cache_dir=cache, progress=False, device="cpu")  # fmt: skip
    assert r["metrics"] == pytest.approx(cross_modal(fs.get("audio"), fs.get("video"), (1, 5, 10)))


def test_unknown_split_is_a_one_line_error(folder_data, tiny_bundle, tmp_path, capsys):
    path = tmp_path / "val_knn.yaml"
    path.write_text(
        "name: val_knn\ndataset: folder\nmodality: video\n"
        "splits: [{name: v, train: train, test: val}]\nclassifier: {type: knn}\n"
    )
    err = _eval_error(capsys, _args(str(path), tiny_bundle, folder_data, tmp_path / "o", tmp_path))
    assert err.startswith("avssl eval: error: protocol val_knn: split file not found")
    assert "val.txt" in err and "['all', 'test', 'train']" in err
    bare = tmp_path / "bare"  # a shard without its prepared folder: no splits to name
    bare.mkdir()
    (bare / "shard-000000.tar").write_bytes((folder_data / "shards/shard-000000.tar").read_bytes())
    err = _eval_error(capsys, _args("folder_knn", tiny_bundle, bare, tmp_path / "o", tmp_path))
    assert "names split 'train', but its data are shards without manifest.json" in err


def test_wrong_dataset_names_the_protocols_that_fit(folder_data, tiny_bundle, tmp_path, capsys):
    assert protocols_for("folder") == ["folder_av_retrieval", "folder_knn", "folder_linear"]
    err = _eval_error(capsys, _args("synthetic_knn", tiny_bundle, folder_data, tmp_path, tmp_path))
    assert "is for dataset 'synthetic'" in err and "holds 'folder'" in err
    assert "protocols for folder: folder_av_retrieval, folder_knn, folder_linear" in err
    manifest = folder_data / "manifest.json"
    other = tmp_path / "other"
    other.mkdir()
    (other / "shards").symlink_to(folder_data / "shards", target_is_directory=True)
    (other / "manifest.json").write_text(
        json.dumps({**json.loads(manifest.read_text()), "dataset": "mine"})
    )
    err = _eval_error(capsys, _args("folder_knn", tiny_bundle, other, tmp_path, tmp_path))
    assert "no protocol in" in err and "is for 'mine'" in err


def test_encoder_name_tells_runs_apart(tmp_path):
    names = []
    for recipe, run in (("xdc", "20261128-0930"), ("avid", "20261128-0930"), ("xdc", "b")):
        ckpt = tmp_path / "runs" / recipe / run / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"x")
        names.append(encoder_name(str(ckpt)))
    assert names == ["xdc-20261128-0930_last", "avid-20261128-0930_last", "xdc-b_last"]
    step = tmp_path / "runs" / "xdc" / "b" / "checkpoints" / "step100.ckpt"
    assert encoder_name(str(step)) == "xdc-b_step100"
    loose = tmp_path / "mine" / "model.ckpt"
    assert encoder_name(str(loose)) == "mine_model"  # not a run's checkpoints folder
    bundle = tmp_path / "encoders" / "mavil"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    assert encoder_name(str(bundle)) == encoder_name(str(bundle / "config.json")) == "mavil"
