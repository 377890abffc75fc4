"""``avssl eval`` end to end on the synthetic shards: the 3-split protocol, reports, the cache,
and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from avssl import cli
from avssl.evaluators import _extract, tasks
from avssl.evaluators import cache as cache_mod
from avssl.evaluators.features import FeatureSet, extract_features
from avssl.evaluators.holdout import video_groups
from avssl.evaluators.linear_probe import fit_predict
from avssl.evaluators.protocols import parse_protocol
from avssl.evaluators.retrieval import cross_modal, recall_at_k
from avssl.evaluators.run import main
from avssl.export import load_encoder
from tests.evaluators.conftest import tiny_prep, write_tiny_bundle

pytestmark = pytest.mark.slow
EVALUATION = Path(__file__).resolve().parents[2] / "evaluation"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feature_cache")


def _args(protocol, bundle, data, out, cache_dir):
    return [
        "--protocol",
        protocol,
        "--encoder",
        str(bundle),
        "--data",
        str(data),
        "--out",
        str(out),
        "--cache-dir",
        str(cache_dir),
        "--num-workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    ]


def test_three_split_linear_protocol(synthetic_data, tiny_bundle, cache_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args("synthetic_linear", tiny_bundle, synthetic_data, out, cache_dir)) == 0
    res = json.loads((out / "results.json").read_text())
    rounds = res["rounds"]
    assert [(r["kind"], r["split"]) for r in rounds] == [
        (k, f"split{i}") for k in ("audio", "video", "joint") for i in (1, 2, 3)
    ]
    # one training clip of the set has no audio: left out of the audio and joint rounds
    want_train = {"audio": 8, "video": 9, "joint": 8}
    assert all(r["n_train"] == want_train[r["kind"]] and r["n_test"] == 3 for r in rounds)
    assert all(r["n_missing_modality"]["train"] == 9 - want_train[r["kind"]] for r in rounds)
    for kind in ("audio", "video", "joint"):
        top1 = [r["metrics"]["top1"] for r in rounds if r["kind"] == kind]
        assert res["summary"][kind]["top1"] == pytest.approx(sum(top1) / 3)
    # an independent recomputation of one round from the cached features
    bundle = load_encoder(tiny_bundle)
    keys = {
        n: (synthetic_data / "splits" / f"{n}.txt").read_text().split() for n in ("train2", "test2")
    }
    fs = extract_features(
        bundle,
        str(synthetic_data),
        keys["train2"] + keys["test2"],
        ("video",),
        num_clips=2,
        cache_dir=cache_dir,
        progress=False,
        device="cpu",
    )
    tr, te = fs.select(keys["train2"]), fs.select(keys["test2"])
    groups = video_groups(tr.keys)  # the synthetic set names its clips as UCF101 does
    assert groups is not None and rounds[4]["val_groups"] == len(set(groups.tolist()))
    scores = fit_predict(
        tr.get("video"), tr.labels, te.get("video"), num_classes=3, device="cpu", groups=groups
    )
    top1 = 100 * (scores.argmax(1) == te.labels).double().mean().item()
    assert rounds[4]["metrics"]["top1"] == pytest.approx(top1)
    md = (out / "results.md").read_text()
    assert "**mean of 3**" in md and "train1 -> test1" in md and "Chosen lambda" in md
    assert "whole video groups held out" in md
    assert "L2-normalised audio and video" in md  # the joint features are explained
    assert "audio/split1: 1 train and 0 test sample(s) lack the audio modality and are left" in md
    assert "joint/split1: 1 train and 0 test sample(s) lack audio or video and are left" in md
    for name in ("confusion_joint.png", "per_class_accuracy_video.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "| video | split3 |" in capsys.readouterr().out


def test_cache_is_reused(synthetic_data, tiny_bundle, cache_dir, tmp_path, monkeypatch):
    bundle = load_encoder(tiny_bundle)
    keys = (synthetic_data / "splits" / "test1.txt").read_text().split()
    calls = []
    bundle.video.register_forward_hook(lambda *a: calls.append(1))

    def extract(b):
        kw = dict(num_clips=2, cache_dir=tmp_path / "c", progress=False, device="cpu")
        return extract_features(b, str(synthetic_data), keys, ("video",), **kw)

    first = extract(bundle)
    assert len(calls) > 0
    calls.clear()
    second = extract(bundle)
    assert calls == [] and torch.equal(first.get("video"), second.get("video"))
    assert first.keys == keys and first.get("video").shape == (3, 192)
    # other weights -> another cache entry, extracted afresh
    other = load_encoder(write_tiny_bundle(tmp_path / "other", seed=1))
    other.video.register_forward_hook(lambda *a: calls.append(1))
    extract(other)
    assert len(calls) > 0
    # same weights, other feature code (an updated avssl) -> extracted afresh
    calls.clear()
    monkeypatch.setattr(cache_mod, "code_identity", lambda: "another version of the code")
    again = extract(bundle)
    assert len(calls) > 0 and torch.equal(again.get("video"), first.get("video"))
    monkeypatch.undo()
    # a second `avssl eval` of the same encoder never runs the encoders
    monkeypatch.setattr(_extract, "run_encoders", lambda *a, **k: pytest.fail("re-extracted"))
    args = _args("synthetic_knn", tiny_bundle, synthetic_data, tmp_path / "o", cache_dir)
    assert main(args) == 0  # features cached by the linear protocol above (same K = 2)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert {"k20_top1", "k200_top5"} <= set(res["rounds"][0]["metrics"])


def _cached(synthetic_data, tiny_bundle, cache_dir, split: str, modalities: tuple):
    """The features of ``split`` from the cache the protocols filled (no encoder run)."""
    keys = (synthetic_data / "splits" / f"{split}.txt").read_text().split()
    kw = dict(num_clips=2, cache_dir=cache_dir, progress=False, device="cpu")
    return extract_features(load_encoder(tiny_bundle), str(synthetic_data), keys, modalities, **kw)


def test_retrieval_protocols(synthetic_data, tiny_bundle, cache_dir, tmp_path):
    """Both retrieval protocols report what the metric functions give on the cached features:
    class retrieval of test1 queries in train1, cross-modal retrieval of test1's pairs in order."""
    results = {}
    for name in ("synthetic_retrieval", "synthetic_av_retrieval"):
        assert main(_args(name, tiny_bundle, synthetic_data, tmp_path / name, cache_dir)) == 0
        (results[name],) = json.loads((tmp_path / name / "results.json").read_text())["rounds"]
    r = results["synthetic_retrieval"]
    assert (r["kind"], r["n_train"], r["n_test"]) == ("video", 9, 3)
    tr = _cached(synthetic_data, tiny_bundle, cache_dir, "train1", ("video",))
    te = _cached(synthetic_data, tiny_bundle, cache_dir, "test1", ("video",))
    want = recall_at_k(te.get("video"), te.labels, tr.get("video"), tr.labels, (1, 5, 10, 20, 50))
    assert r["metrics"] == pytest.approx(want)
    r = results["synthetic_av_retrieval"]
    assert (r["n_items"], r["n_without_both"]) == (3, 0)
    te = _cached(synthetic_data, tiny_bundle, cache_dir, "test1", ("audio", "video"))
    want = cross_modal(te.get("audio"), te.get("video"), (1, 5, 10))
    assert r["metrics"] == pytest.approx(want)
    assert set(want) >= {"a2v_R@1", "v2a_R@1", "a2v_medr", "v2a_medr"}
    # the same features with the pairs broken give other ranks: the pairing is what is scored
    shifted = cross_modal(te.get("audio"), te.get("video").roll(1, 0), (1, 5, 10))
    assert shifted != pytest.approx(want)


def test_cross_modal_retrieval_scores_the_shared_space(synthetic_data, cache_dir, tmp_path):
    """A bundle with projection heads is scored in their space: each clip's embedding through
    its modality's head, then the clip mean; the report names the space. Without heads the
    report says the backbone was scored and that chance is expected."""
    bundle_dir = write_tiny_bundle(tmp_path / "heads", heads=16, seed=5)
    out = tmp_path / "out"
    assert main(_args("synthetic_av_retrieval", bundle_dir, synthetic_data, out, cache_dir)) == 0
    (r,) = json.loads((out / "results.json").read_text())["rounds"]
    assert r["space"].startswith("shared: the bundle's projection heads into the test NCE space")
    bundle = load_encoder(bundle_dir)
    te = _cached(synthetic_data, bundle_dir, cache_dir, "test1", ("audio", "video"))
    a, v = (bundle.project(m, te.get(m, per_clip=True)).mean(dim=1) for m in ("audio", "video"))
    assert a.shape == (3, 16)
    want = cross_modal(a, v, (1, 5, 10))
    assert r["metrics"] == pytest.approx(want)
    assert "Embeddings scored: shared" in (out / "results.md").read_text()
    # the backbone features of the same bundle give other ranks: the heads are what is scored
    assert cross_modal(te.get("audio"), te.get("video"), (1, 5, 10)) != pytest.approx(want)
    # a bundle with a video -> audio space of its own scores that direction there
    both = write_tiny_bundle(tmp_path / "v2a", heads=16, seed=5, v2a=True)
    out2 = tmp_path / "o2"
    assert main(_args("synthetic_av_retrieval", both, synthetic_data, out2, cache_dir)) == 0
    (r,) = json.loads((out2 / "results.json").read_text())["rounds"]
    assert "video -> audio in its test NCE back space" in r["space"]
    bundle = load_encoder(both)
    te = _cached(synthetic_data, both, cache_dir, "test1", ("audio", "video"))
    a2v, v2a = (
        cross_modal(
            *(
                bundle.project(m, te.get(m, per_clip=True), d).mean(dim=1)
                for m in ("audio", "video")
            ),
            (1, 5, 10),
        )  # fmt: skip
        for d in ("a2v", "v2a")
    )
    assert r["metrics"] == pytest.approx({**a2v, **{k: x for k, x in v2a.items() if "v2a" in k}})
    plain = tmp_path / "plain"
    assert main(_args("synthetic_av_retrieval", write_tiny_bundle(tmp_path / "p", seed=5),
                      synthetic_data, plain, cache_dir)) == 0  # fmt: skip
    (r,) = json.loads((plain / "results.json").read_text())["rounds"]
    assert r["space"].startswith("backbone") and "near chance" in r["space"]


def test_cross_modal_max_items_draws_a_seeded_subset(monkeypatch):
    """``max_items``: that many pairs with both modalities, drawn with the protocol's seed (the
    same rows for the same seed), kept in split order and still paired."""
    n, d = 20, 4
    audio = torch.randn(n, 1, d)
    masks = {"audio": torch.ones(n, dtype=torch.bool), "video": torch.ones(n, dtype=torch.bool)}
    masks["video"][3] = False  # item 3 lacks video: never drawn, counted
    fs = FeatureSet([f"k{i}" for i in range(n)], torch.zeros(n, dtype=torch.long),
                    {"audio": audio, "video": audio + 1}, masks)  # fmt: skip
    seen = []
    monkeypatch.setattr(tasks, "cross_modal", lambda a, v, ks, v2a=None: seen.append((a, v)) or {})

    def draw(seed: int, cap: int | None = 5) -> list[int]:
        raw = yaml.safe_load((EVALUATION / "synthetic_av_retrieval.yaml").read_text())
        raw["classifier"].update(max_items=cap, seed=seed)
        out = tasks._cross_modal(parse_protocol(raw), fs)
        a, v = seen.pop()
        assert torch.equal(v, a + 1)  # pairs stay pairs
        rows = [int(torch.nonzero((audio[:, 0] == x).all(1))[0]) for x in a]
        assert out["n_items"] == len(rows) and out["n_without_both"] == 1
        return rows

    assert draw(0, None) == [i for i in range(n) if i != 3]  # null: every pair, in order
    first = draw(0)
    assert len(first) == 5 and 3 not in first and first == sorted(first)
    assert draw(0) == first
    assert draw(1) != first


def _eval_error(capsys, argv) -> str:
    assert cli.main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_bad_inputs(synthetic_data, data_copy, tiny_bundle, cache_dir, tmp_path, capsys):
    base = dict(bundle=tiny_bundle, data=synthetic_data, out=tmp_path / "x", cache_dir=cache_dir)
    err = _eval_error(capsys, _args("synthetic_lineer", **base))
    assert "unknown protocol 'synthetic_lineer'" in err and "synthetic_linear" in err
    audio_only = write_tiny_bundle(tmp_path / "audio_only", video=False)
    err = _eval_error(capsys, _args("synthetic_linear", **{**base, "bundle": audio_only}))
    assert "has no video encoder" in err
    odd = write_tiny_bundle(tmp_path / "odd", prep=tiny_prep(crop=40))
    err = _eval_error(capsys, _args("synthetic_retrieval", **{**base, "bundle": odd}))
    assert "divisible by (2, 16)" in err and "(4, 40)" in err
    err = _eval_error(capsys, _args("ucf101_knn", **base))
    assert "for dataset 'ucf101'" in err and "'synthetic'" in err
    fake = [f"synthetic/Nope/v_Nope_g{i:02d}_c01" for i in range(12)]
    with open(data_copy / "splits" / "test1.txt", "a") as fh:
        fh.write("".join(k + "\n" for k in fake))
    err = _eval_error(capsys, _args("synthetic_retrieval", **{**base, "data": data_copy}))
    assert "test1.txt names 12 key(s) absent from the shards" in err
    assert fake[9] in err and fake[10] not in err and err.endswith("...")


def test_train_split_too_small_for_lambda_choice(
    synthetic_data, tiny_bundle, cache_dir, tmp_path, capsys
):
    """3 clips per class and a 10 % validation part: none held out; a one-line error that says
    what to change, not a traceback. One lambda needs no validation part and runs."""
    proto = (
        (EVALUATION / "synthetic_linear.yaml")
        .read_text()
        .replace("val_fraction: 0.2", "val_fraction: 0.1")
    )
    path = tmp_path / "small_val.yaml"
    path.write_text(proto.replace("modality: [audio, video, joint]", "modality: [video]"))
    err = _eval_error(
        capsys, _args(str(path), tiny_bundle, synthetic_data, tmp_path / "o", cache_dir)
    )
    assert err.endswith(
        "video/split1: the training split (9 clips) is too small to hold out a validation part for "
        "choosing lambda (none of its classes has enough clips); give the protocol one lambda "
        '(make eval ARGS="--set classifier.lambdas=[<value>]", or classifier: lambdas: [<value>] '
        "in its file) or more training clips"
    )
    one = path.read_text().replace(
        "lambdas: [1.0e-7, 1.0e-6, 1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2, 1.0e-1, 1.0]",
        "lambdas: [1.0e-4]",
    )
    path.write_text(one)
    assert main(_args(str(path), tiny_bundle, synthetic_data, tmp_path / "o", cache_dir)) == 0
    rounds = json.loads((tmp_path / "o" / "results.json").read_text())["rounds"]
    assert [r["lambda"] for r in rounds] == [1.0e-4] * 3
    # the same from the command line, the protocol's file left as it is
    path.write_text(proto.replace("modality: [audio, video, joint]", "modality: [video]"))
    args = _args(str(path), tiny_bundle, synthetic_data, tmp_path / "s", cache_dir)
    assert main([*args, "--set", "classifier.lambdas=[1.0e-4]"]) == 0
    done = json.loads((tmp_path / "s" / "results.json").read_text())
    assert [r["lambda"] for r in done["rounds"]] == [1.0e-4] * 3
    assert done["protocol"]["overrides"] == ["classifier.lambdas=[1.0e-4]"]
    said = (tmp_path / "s" / "results.md").read_text()
    assert "changed with --set classifier.lambdas=[1.0e-4]" in said


@pytest.mark.parametrize(
    "given, want",
    [
        ("classifier.lambdas", "--set 'classifier.lambdas': give KEY=VALUE"),
        ("=3", "--set '=3': give KEY=VALUE"),
        ("classifier..k=3", "give KEY=VALUE"),
        ("classifier.lambdas=[0.1", "VALUE is not YAML"),
        ("metrics.top1=3", "the protocol's 'metrics' is not a mapping"),
        ("clips=3", "unknown key(s) ['clips']"),
        ("classifier.lambdas=[-1]", "classifier.lambdas must be a non-empty list of positive"),
        ("classifier.type=svm", "classifier.type must be one of"),
    ],
)
def test_bad_set_overrides_are_one_line_errors(given, want, tiny_bundle, synthetic_data,
                                               tmp_path, cache_dir, capsys):  # fmt: skip
    args = _args("synthetic_linear", tiny_bundle, synthetic_data, tmp_path / "o", cache_dir)
    err = _eval_error(capsys, [*args, "--set", given])
    assert want in err
    assert not (tmp_path / "o").exists()


def test_set_results_go_beside_the_plain_protocols(
    monkeypatch, tmp_path, tiny_bundle, synthetic_data, cache_dir
):
    from avssl.evaluators.protocols import apply_overrides, load_protocol

    monkeypatch.chdir(tmp_path)
    args = _args("synthetic_knn", tiny_bundle, synthetic_data, "unused", cache_dir)
    at = args.index("--out")
    del args[at : at + 2]  # the default folder
    assert main([*args, "--set", "classifier.k=[3]"]) == 0
    filed = tmp_path / "eval_out" / "synthetic_knn-set" / Path(tiny_bundle).name
    assert (filed / "results.json").is_file()
    assert not (tmp_path / "eval_out" / "synthetic_knn").exists()

    p = load_protocol("synthetic_knn", ["classifier.k=[5]", "clips_per_video=1", "notes=x"])
    assert p.classifier["k"] == [5] and p.clips_per_video == 1
    assert p.overrides == ["classifier.k=[5]", "clips_per_video=1", "notes=x"]
    assert load_protocol("synthetic_knn").overrides == []
    raw = {"classifier": {"type": "knn", "k": [20]}}
    assert apply_overrides(raw, ["classifier.k=[5, 7]"])["classifier"]["k"] == [5, 7]
    assert raw["classifier"]["k"] == [20]  # the loaded mapping is left as it was


def test_test_clips_seen_in_pretraining_are_noted(synthetic_data):
    """An encoder pretrained on the same dataset: each test split that shares clips with its
    pretraining split gets a note with the count (UCF101's train1 holds test2 and test3)."""
    from types import SimpleNamespace

    from avssl.data.shards import resolve
    from avssl.evaluators.evaluate import seen_in_pretraining
    from avssl.evaluators.protocols import load_protocol
    from avssl.evaluators.run import split_keys

    source, p = resolve(synthetic_data), load_protocol("synthetic_linear")
    keys = split_keys(source, p)

    def notes(**train_data) -> list[str]:
        bundle = SimpleNamespace(provenance={"train_data": train_data} if train_data else {})
        return seen_in_pretraining(p, bundle, source, keys)

    train1 = set(keys["train1"])
    overlap = {t: sum(k in train1 for k in keys[t]) for t in ("test1", "test2", "test3")}
    assert overlap["test1"] == 0 and sum(overlap.values()) > 0  # split 1 is held out
    want = [
        f"{t}: {n} of {len(keys[t])} test clips were in the encoder's pretraining data "
        f"(synthetic split train1, unlabelled); results on {t} are not held out from pretraining"
        for t, n in overlap.items()
        if n
    ]
    assert notes(dataset="synthetic", split="train1", path="x") == want
    every = notes(dataset="synthetic", split=None, path="x")  # pretrained on every sample
    assert [n.split(":")[0] for n in every] == ["test1", "test2", "test3"]
    assert notes(dataset="ucf101", split="train1", path="x") == []  # another dataset
    assert notes() == []  # a bundle that does not record it
    assert "not checked" in notes(dataset="synthetic", split="nosuch", path="x")[0]


def test_default_output_folder(
    synthetic_data, tiny_bundle, cache_dir, tmp_path, monkeypatch, capsys
):
    """Without --out the report goes to eval_out/<protocol>/<encoder name>/ under the cwd."""
    monkeypatch.chdir(tmp_path)
    args = _args("synthetic_knn", tiny_bundle, synthetic_data, "", cache_dir)
    i = args.index("--out")
    assert main(args[:i] + args[i + 2 :]) == 0
    out = tmp_path / "eval_out" / "synthetic_knn" / tiny_bundle.name
    assert json.loads((out / "results.json").read_text())["protocol"]["name"] == "synthetic_knn"
    assert (out / "results.md").is_file()
    # a second report into the same folder says whose it replaces and leaves no stale plot
    (out / "per_class_ap_joint.png").write_bytes(b"a plot of an earlier, multi-label protocol")
    capsys.readouterr()
    assert main(args[:i] + args[i + 2 :]) == 0
    where = Path("eval_out/synthetic_knn") / tiny_bundle.name
    said = f"[eval] replacing the earlier results in {where} (synthetic_knn on {synthetic_data})"
    assert said in capsys.readouterr().out
    assert not (out / "per_class_ap_joint.png").exists()
    # an output path that is a file: one line before any work
    (tmp_path / "file").write_text("x")
    err = _eval_error(
        capsys, _args("synthetic_knn", tiny_bundle, synthetic_data, tmp_path / "file", cache_dir)
    )
    assert err.endswith(f"--out {tmp_path / 'file'}: exists and is not a folder")


def test_mean_scores_protocol_from_a_yaml_path(synthetic_data, tiny_bundle, cache_dir, tmp_path):
    text = (
        "name: my_knn\ndataset: synthetic\nmodality: [video]\nclips_per_video: 2\n"
        "clip_aggregation: mean_scores\nsplits: [{name: s1, train: train1, test: test1}]\n"
        "classifier: {type: knn, k: [3], temperature: 0.1}\nmetrics: [top1]\n"
    )
    path = tmp_path / "my_knn.yaml"
    path.write_text(text)
    out = tmp_path / "o"
    assert main(_args(str(path), tiny_bundle, synthetic_data, out, cache_dir)) == 0
    got = json.loads((out / "results.json").read_text())["rounds"][0]["metrics"]["k3_top1"]
    # the same by hand: each clip's vote shares (votes over their total), averaged over clips
    from avssl.evaluators.knn import knn_predict

    bundle = load_encoder(tiny_bundle)
    split = {
        n: (synthetic_data / "splits" / f"{n}.txt").read_text().split() for n in ("train1", "test1")
    }
    fs = extract_features(
        bundle,
        str(synthetic_data),
        split["train1"] + split["test1"],
        ("video",),
        num_clips=2,
        cache_dir=cache_dir,
        progress=False,
        device="cpu",
    )
    tr, te = fs.select(split["train1"]), fs.select(split["test1"])
    clips = te.get("video", per_clip=True)  # [3, 2, D]
    s = knn_predict(tr.get("video"), tr.labels, clips.reshape(6, -1), 3, 0.1, 3, device="cpu")
    probs = (s.double() / s.double().sum(1, keepdim=True)).reshape(3, 2, 3).mean(1)
    assert got == pytest.approx(100 * (probs.argmax(1) == te.labels).double().mean().item())
    assert (
        "vote shares (each clip's class votes over their total) averaged over clips"
        in (out / "results.md").read_text()
    )


def test_inputs_finished_on_the_device_give_the_same_features(synthetic_data, tiny_bundle):
    """run_encoders with the loader leaving fbank and normalisation to the device (what a GPU
    gets by default) against the loader doing them, here both on the CPU."""
    from avssl.evaluators._extract import run_encoders

    bundle = load_encoder(tiny_bundle)
    keys = (synthetic_data / "splits" / "test1.txt").read_text().split()
    args = (bundle, str(synthetic_data), keys, ("audio", "video"), 2, 4, 0, "cpu", "fp32", False)
    loader, device = run_encoders(*args, on_device=False), run_encoders(*args, on_device=True)
    for m in ("audio", "video"):
        assert loader[m].keys == device[m].keys and torch.equal(loader[m].mask, device[m].mask)
        assert torch.equal(loader[m].labels, device[m].labels) and loader[m].mask.any()
        torch.testing.assert_close(device[m].features, loader[m].features, rtol=1e-4, atol=1e-4)


def test_several_protocols_in_one_run(tiny_bundle, synthetic_data, tmp_path, cache_dir, capsys):
    args = _args("synthetic_knn,synthetic_retrieval", tiny_bundle, synthetic_data,
                 tmp_path / "o", cache_dir)  # fmt: skip
    assert main(args) == 0
    for name in ("synthetic_knn", "synthetic_retrieval"):
        done = json.loads((tmp_path / "o" / name / "results.json").read_text())
        assert done["protocol"]["name"] == name
    assert "[eval] 2 protocols on" in capsys.readouterr().out
    # a bad second protocol stops before the first runs
    args = _args("synthetic_knn,esc50_linear", tiny_bundle, synthetic_data, tmp_path / "p",
                 cache_dir)  # fmt: skip
    err = _eval_error(capsys, args)
    assert "protocol esc50_linear is for dataset 'esc50'" in err
    assert not (tmp_path / "p").exists()
    for given, want in (("synthetic_knn,,synthetic_linear", "an empty name between commas"),
                        ("synthetic_knn,synthetic_knn", "a protocol named twice"),
                        ("synthetic_knn,nope", "unknown protocol 'nope'")):  # fmt: skip
        args = _args(given, tiny_bundle, synthetic_data, tmp_path / "q", cache_dir)
        assert want in _eval_error(capsys, args)


def test_split_files_that_would_count_a_sample_twice(data_copy, capsys):
    """A key listed twice in a split file used to become two rows (counted twice; in
    cross-modal retrieval two identical pairs, each ranked 2nd behind its twin), and a train
    split of several files sharing a key fitted it twice; an empty split file gave NaN."""
    from avssl.data.shards import resolve
    from avssl.evaluators.protocols import load_protocol
    from avssl.evaluators.run import split_keys

    p, splits = load_protocol("synthetic_knn"), data_copy / "splits"
    first = splits.joinpath("test1.txt").read_text().split()[0]
    with open(splits / "test1.txt", "a") as fh:
        fh.write(first + "\r\n")
    with pytest.raises(
        cli.UserError, match=f"test1.txt lists 1 key\\(s\\) more than once: {first}"
    ):
        split_keys(resolve(data_copy), p)
    (splits / "test1.txt").write_text("\n")
    with pytest.raises(cli.UserError, match="test1.txt lists no sample"):
        split_keys(resolve(data_copy), p)
    (splits / "test1.txt").write_text(first + "\n")
    esc = parse_protocol({"name": "e", "dataset": "synthetic", "modality": "audio",
                          "splits": [{"name": "f", "train": ["train1", "test1"], "test": "test2"}],
                          "classifier": {"type": "knn"}})  # fmt: skip
    assert first not in splits.joinpath("train1.txt").read_text().split()
    with open(splits / "train1.txt", "a") as fh:
        fh.write(first + "\n")
    with pytest.raises(
        cli.UserError, match=f"round f: train1 and test1 share 1 key\\(s\\): {first}"
    ):
        split_keys(resolve(data_copy), esc)
