"""AVDataModule and the eval loader on synthetic shards: shapes, splitting, determinism, errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from avssl.data.batch import MODALITIES_COMPLETE, AVBatch
from avssl.data.datamodule import GPU_WORKER_NICE, AVDataModule, EpochLoader, make_eval_loader
from avssl.data.decode import open_media
from avssl.data.shards import ShardReader, resolve, split_table


def split_keys(folder, split):
    return [ln for ln in (folder / "splits" / f"{split}.txt").read_text().split() if ln]


def test_train_batch_shapes_and_dtypes(synth, small_args):
    dm = AVDataModule(str(synth), **small_args(batches_per_epoch=2))
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    b = batches[0]
    assert isinstance(b, AVBatch) and len(b) == 2
    assert b.video.shape == (2, 3, 4, 32, 32) and b.video.dtype == torch.float32
    assert b.audio.shape == (2, 1, 128, 128) and b.audio.dtype == torch.float32
    assert b.label.dtype == torch.long and b.label.shape == (2,)
    assert ((b.label >= 0) & (b.label < 3)).all()
    assert b.video_mask.dtype == torch.bool and b.video_mask.all()
    assert b.audio_mismatched is None
    assert b.clip_start.shape == (2,) and b.extra["skipped"] == 0
    assert b.extra[MODALITIES_COMPLETE] is True  # every sample has both: MAViL fuses unmasked
    assert set(b.key) <= set(split_keys(synth, "train1"))
    assert b.video.abs().sum() > 0 and b.audio[b.audio_mask].abs().sum() > 0


def test_train_clips_per_video_adds_k_axis(synth, small_args):
    dm = AVDataModule(str(synth), **small_args(clips_per_video=3, batches_per_epoch=1))
    (b,) = list(dm.train_dataloader())
    assert b.video.shape == (2, 3, 3, 4, 32, 32)
    assert b.audio.shape == (2, 3, 1, 128, 128)
    assert b.clip_start.shape == (2, 3) and b.audio_start.shape == (2, 3)


def test_eval_loader_shapes_keys_labels_order(synth):
    prep = AVDataModule(str(synth), num_frames=4, crop_size=32, audio_frames=64).preprocessing()
    json.dumps(prep)  # the preprocessing dict is json-serialisable (bundles store it)
    batches = list(make_eval_loader(str(synth), "test1", prep, num_clips=2, batch_size=2))
    keys = [k for b in batches for k in b.key]
    table = split_table(resolve(synth), "test1")
    assert keys == [k for _, k in table.ordered()]
    assert sorted(keys) == sorted(split_keys(synth, "test1"))
    b = batches[0]
    assert b.video.shape == (2, 2, 3, 4, 32, 32) and b.audio.shape == (2, 2, 1, 64, 128)
    meta_classes = json.loads((synth / "manifest.json").read_text())["classes"]
    names = [k.split("/")[1] for k in b.key]
    assert b.label.tolist() == [meta_classes.index(n) for n in names]
    starts = b.clip_start[0]
    assert starts[0] == 0 and starts[1] > starts[0]  # uniformly spaced, first at the start


def test_eval_is_deterministic(synth, small_args):
    dm = AVDataModule(str(synth), **small_args(val_clips=2))
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        assert a.key == b.key
        assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)


def test_augment_overrides_the_training_preset_only(synth, small_args):
    """A recipe's ``augment`` (here: gain and hue jitter on every clip) changes the training
    clips, not the validation clips (``eval_preset`` as it is)."""
    aug = {"gain_p": 1.0, "gain_db": 6.0, "hue": 0.5, "jitter_p": 1.0, "crop": "multiscale"}
    plain = AVDataModule(str(synth), **small_args())
    augmented = AVDataModule(str(synth), **small_args(augment=aug))
    val_plain, val_aug = list(plain.val_dataloader()), list(augmented.val_dataloader())
    assert len(val_plain) == len(val_aug) > 0
    for a, b in zip(val_plain, val_aug):
        assert a.key == b.key
        assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    train_plain = next(iter(plain.train_dataloader()))
    train_aug = next(iter(augmented.train_dataloader()))
    assert train_plain.key == train_aug.key  # same samples and times, other pixels and gains
    assert not torch.equal(train_plain.video, train_aug.video)
    assert not torch.equal(train_plain.audio, train_aug.audio)


def test_eval_two_ranks_two_workers_every_sample_once(synth, small_args):
    dm = AVDataModule(str(synth), **small_args(num_workers=2, val_split=None))
    prep = dm.preprocessing()
    seen = []
    for rank in range(2):
        loader = make_eval_loader(
            str(synth), None, prep, batch_size=2, num_workers=2, rank=rank, world_size=2
        )
        seen.extend(k for b in loader for k in b.key)
    all_keys = [k for _, k in split_table(resolve(synth), None).ordered()]
    assert seen == all_keys  # once each, in (shard, position) order, rank after rank
    assert len(set(seen)) == 12


def test_train_same_batch_count_on_every_rank(synth, small_args):
    dm = AVDataModule(str(synth), **small_args(num_workers=2, batch_size=2))
    counts = [len(list(dm.train_dataloader(rank=r, world_size=2))) for r in range(2)]
    assert counts == [3, 3]  # ceil(9 train1 samples / (2 * 2))
    dm = AVDataModule(str(synth), **small_args(num_workers=2, batches_per_epoch=5))
    loaders = [dm.train_dataloader(rank=r, world_size=2) for r in range(2)]
    assert [len(dl) for dl in loaders] == [5, 5]
    assert [len(list(dl)) for dl in loaders] == [5, 5]


def test_train_epochs_and_ranks_draw_different_samples(synth, small_args):
    dm = AVDataModule(str(synth), **small_args(batches_per_epoch=3))
    loader = dm.train_dataloader()
    e0 = [(k, float(s)) for b in loader for k, s in zip(b.key, b.clip_start)]
    e1 = [(k, float(s)) for b in loader for k, s in zip(b.key, b.clip_start)]
    assert e0 != e1
    r0, r1 = ([(k, float(s)) for b in dm.train_dataloader(rank=r, world_size=2)
               for k, s in zip(b.key, b.clip_start)] for r in range(2))  # fmt: skip
    assert r0 != r1 and len(r0) == len(r1)
    # each rank draws its own stream from all the shards, not a subset of its own (the rates:
    # tests/data/test_resampled_keys.py)
    streams = [dm.train_dataloader(rank=r, world_size=2).dataset for r in range(2)]
    drawn = [[next(keys) for _ in range(200)] for keys in (s.key_stream(0) for s in streams)]
    table = streams[0].table
    every = {shard for shard, keys in zip(table.shards, table.keys) if keys}
    assert len(every) >= 2 and all({shard for shard, _ in d} == every for d in drawn)
    assert drawn[0] != drawn[1]


def test_a_resumed_loader_draws_its_epoch_afresh_once(synth, small_args):
    """TrainLoader's state (the global step, in every checkpoint) makes the next epoch's stream
    a different draw from the interrupted one's, so a resume does not replay the batches the
    epoch had already trained; the epochs after it are the uninterrupted run's."""

    def draws(loader) -> list:
        return [(k, float(s)) for b in loader for k, s in zip(b.key, b.clip_start)]

    dm = AVDataModule(str(synth), **small_args(batches_per_epoch=3))
    plain = dm.train_dataloader()
    e0, e1 = draws(plain), draws(plain)
    assert plain.state_dict() == {"global_step": 0}  # no trainer attached: step 0
    resumed = dm.train_dataloader()
    resumed.load_state_dict({"global_step": 2})
    r0, r1 = draws(resumed), draws(resumed)
    assert r0 != e0 and len(r0) == len(e0)  # epoch 0 again, not its first draws again
    assert r1 == e1  # one-shot: the next epoch is the uninterrupted one's
    again = dm.train_dataloader()
    again.load_state_dict({"global_step": 2})
    assert draws(again) == r0  # seeded: the same resume draws the same batches
    other = dm.train_dataloader()
    other.load_state_dict({"global_step": 5})
    assert draws(other) != r0


def test_corrupt_sample_is_skipped_and_counted(corrupt_data, small_args):
    dm = AVDataModule(str(corrupt_data), **small_args(train_split=None, val_split=None))
    loader = make_eval_loader(str(corrupt_data), None, dm.preprocessing(), batch_size=2)
    batches = list(loader)
    keys = [k for b in batches for k in b.key]
    skipped = [k for b in batches for k in b.extra["skipped_keys"]]
    all_keys = [k for _, k in split_table(resolve(corrupt_data), None).ordered()]
    assert len(skipped) == 1 and sum(b.extra["skipped"] for b in batches) == 1
    assert skipped[0] == all_keys[6]  # CORRUPT_INDEX in conftest
    assert keys == [k for k in all_keys if k != skipped[0]]  # read to the end
    # training: resampled shards meet the corrupt sample within a few epochs; every epoch
    # still has its full number of full batches
    dm = AVDataModule(str(corrupt_data), **small_args(train_split=None, batches_per_epoch=6))
    loader, met = dm.train_dataloader(), 0
    for _ in range(10):
        train = list(loader)
        assert len(train) == 6 and all(len(b) == 2 for b in train)
        assert skipped[0] not in {k for b in train for k in b.key}
        met += sum(b.extra["skipped"] for b in train)
        if met:
            break
    assert met >= 1


def test_missing_paths_are_clear_errors(synth, tmp_path, small_args):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        AVDataModule(str(missing), **small_args())
    with pytest.raises(FileNotFoundError, match="shard-000003"):
        AVDataModule(str(synth / "shards" / "shard-{000000..000005}.tar"), **small_args())
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        AVDataModule(str(tmp_path / "*.tar"), **small_args())
    dm = AVDataModule(str(synth), **small_args(train_split="train9"))
    with pytest.raises(FileNotFoundError, match="train9"):
        dm.setup("fit")


def test_brace_pattern_finds_the_prepared_folder(synth, small_args):
    pattern = str(synth / "shards" / "shard-{000000..000002}.tar")
    dm = AVDataModule(pattern, **small_args(batches_per_epoch=1))
    assert dm.source.root == synth and len(dm.source.shards) == 3
    stats = json.loads((synth / "stats.json").read_text())
    assert dm.preprocessing()["fbank"]["mean"] == pytest.approx(stats["fbank_mean"])
    assert len(list(dm.train_dataloader())) == 1


def test_missing_audio_gives_zeros_and_mask(noaudio_data, small_args):
    dm = AVDataModule(str(noaudio_data), **small_args(batches_per_epoch=2))
    for b in dm.train_dataloader():
        assert not b.audio_mask.any() and b.video_mask.all()
        assert b.extra[MODALITIES_COMPLETE] is False
        assert torch.count_nonzero(b.audio) == 0 and b.video.abs().sum() > 0


def test_audio_only_gives_zero_video_and_mask(audio_only_data, small_args):
    dm = AVDataModule(str(audio_only_data), **small_args(batches_per_epoch=2))
    for b in [*dm.train_dataloader(), *dm.val_dataloader()]:
        assert not b.video_mask.any() and torch.count_nonzero(b.video) == 0
        assert b.video.shape[-3:] == (4, 32, 32)
        assert b.audio[b.audio_mask].abs().sum() > 0


def test_mismatched_audio_comes_from_another_sample(synth, small_args):
    args = small_args(audio_mode="mismatched", mismatch_prob=1.0, batch_size=3)
    mismatched = list(AVDataModule(str(synth), **args).val_dataloader())
    args["audio_mode"] = "aligned"
    aligned = list(AVDataModule(str(synth), **args).val_dataloader())
    for m, a in zip(mismatched, aligned):
        assert m.audio_mismatched.dtype == torch.bool
        if len(m) == 1:
            continue
        assert m.audio_mismatched.all()
        for i in range(len(m)):
            same = [j for j in range(len(a)) if torch.equal(m.audio[i], a.audio[j])]
            assert same and i not in same
    half = AVDataModule(str(synth), **small_args(audio_mode="mismatched", batches_per_epoch=6))
    flags = torch.cat([b.audio_mismatched for b in half.train_dataloader()])
    assert 0 < int(flags.sum()) < len(flags)


def _clip_inside_window(b: AVBatch, span: float, window: float) -> list[bool]:
    return [
        float(a) - 1e-3 <= float(c) and float(c) + span <= float(a) + window + 1e-3
        for a, c, m in zip(b.audio_start, b.clip_start, b.audio_mask)
        if m
    ]


def test_aligned_window_holds_the_clip_random_does_not(synth, small_args):
    span, window = (3 * 2 + 1) / 25, (400 + 127 * 160) / 16000  # 4 frames stride 2, 128 frames
    inside = {}
    for mode in ("aligned", "random"):
        dm = AVDataModule(str(synth), **small_args(audio_mode=mode, batches_per_epoch=5))
        inside[mode] = [
            x for b in dm.train_dataloader() for x in _clip_inside_window(b, span, window)
        ]
    assert len(inside["aligned"]) >= 5 and all(inside["aligned"])
    assert not all(inside["random"])


def test_bad_settings_are_rejected(synth, small_args):
    with pytest.raises(ValueError, match="audio_mode"):
        AVDataModule(str(synth), **small_args(audio_mode="sideways"))
    with pytest.raises(ValueError, match="train_preset"):
        AVDataModule(str(synth), **small_args(train_preset="fancy"))
    with pytest.raises(ValueError, match="frame_stride or target_fps"):
        AVDataModule(str(synth), **small_args(target_fps=5.0))
    for nice in (-1, 20):
        with pytest.raises(ValueError, match="worker_nice must be in 0..19"):
            AVDataModule(str(synth), **small_args(worker_nice=nice))


class _Niceness(torch.utils.data.IterableDataset):
    """Yields the niceness of the process that iterates it (a DataLoader worker)."""

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        yield os.nice(0)


def test_workers_run_at_the_requested_niceness(synth, small_args):
    base = os.nice(0)
    (lowered,) = list(EpochLoader(_Niceness(), worker_nice=3, num_workers=1))
    (same,) = list(EpochLoader(_Niceness(), num_workers=1))
    assert lowered == min(base + 3, 19) and same == base
    # AVDataModule: None means GPU_WORKER_NICE on a GPU trainer, 0 here (no trainer); an
    # explicit value is kept
    assert AVDataModule(str(synth), **small_args()).worker_nice() == 0
    assert AVDataModule(str(synth), **small_args(worker_nice=5)).worker_nice() == 5
    dm = AVDataModule(str(synth), **small_args())
    dm._on_gpu = lambda: True  # as under a trainer on a GPU
    assert dm.worker_nice() == GPU_WORKER_NICE > 0


def test_repeated_sampling_gives_r_entries_per_decoded_sample(synth, small_args):
    """R = 3 entries per decoded sample, batches of 4 (entries that do not fit open the next
    batch), each entry with its own clip time and an aligned window around it; the features
    finished on the device equal the workers' (same draws)."""
    span, window = (3 * 2 + 1) / 25, (400 + 127 * 160) / 16000
    got = {}
    for where in ("loader", "device"):
        args = small_args(batch_size=4, repeated_sampling=3, batches_per_epoch=3)
        dm = AVDataModule(str(synth), **args, features_on=where)
        got[where] = [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]
    batches = got["loader"]
    assert [len(b) for b in batches] == [4, 4, 4]
    keys = [k for b in batches for k in b.key]
    labels = torch.cat([b.label for b in batches]).tolist()
    starts = torch.cat([b.clip_start for b in batches]).tolist()
    runs = [slice(i, i + 3) for i in range(0, 12, 3)]  # 4 samples x 3 entries, in order
    assert all(len(set(keys[r])) == 1 and len(set(labels[r])) == 1 for r in runs), keys
    assert any(len(set(starts[r])) > 1 for r in runs), starts
    assert all(x for b in batches for x in _clip_inside_window(b, span, window))
    for a, b in zip(got["loader"], got["device"]):
        assert a.key == b.key and torch.equal(a.clip_start, b.clip_start)
        torch.testing.assert_close(b.video, a.video, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.audio, a.audio, atol=1e-4, rtol=0)


def test_repeated_sampling_bad_settings(synth, small_args):
    with pytest.raises(ValueError, match="repeated_sampling must be >= 1"):
        AVDataModule(str(synth), **small_args(repeated_sampling=0))
    with pytest.raises(ValueError, match="mismatched"):
        AVDataModule(str(synth), **small_args(repeated_sampling=2, audio_mode="mismatched"))


def test_repeated_sampling_keeps_the_k_axis(synth, small_args):
    args = small_args(batch_size=4, clips_per_video=2, repeated_sampling=2, batches_per_epoch=1)
    (b,) = list(AVDataModule(str(synth), **args).train_dataloader())
    assert b.video.shape == (4, 2, 3, 4, 32, 32) and b.audio.shape == (4, 2, 1, 128, 128)
    assert b.key[0] == b.key[1] and b.key[2] == b.key[3]
    assert b.clip_start.shape == (4, 2)


def _keyframe_times(mp4: bytes) -> set[float]:
    with open_media(mp4) as c:
        s = c.streams.video[0]
        return {round(float(p.pts * p.time_base), 4) for p in c.demux(s) if p.is_keyframe}


def test_keyframe_starts_put_training_clips_on_keyframes(synth, small_args):
    """With keyframe_starts every training clip starts on one of its video's keyframes (also
    with repeated sampling); without, starts fall between keyframes too; validation clips are
    the centred ones either way."""
    reader = ShardReader()
    keyframes = {
        k: _keyframe_times(reader.read(s, k)["mp4"])
        for s, k in split_table(resolve(synth), None).ordered()
    }
    on_key = {}
    for flag in (True, False):
        args = small_args(batch_size=4, repeated_sampling=2, batches_per_epoch=6, val_split="test1")
        dm = AVDataModule(str(synth), **args, keyframe_starts=flag)
        starts = [(k, round(float(t), 4)) for b in dm.train_dataloader()
                  for k, t in zip(b.key, b.clip_start)]  # fmt: skip
        on_key[flag] = [t in keyframes[k] for k, t in starts]
        val = [float(t) for b in dm.val_dataloader() for t in b.clip_start]
        on_key[f"val{flag}"] = val
    assert len(on_key[True]) == 24 and all(on_key[True])
    assert not all(on_key[False])
    assert on_key["valTrue"] == on_key["valFalse"]


@pytest.mark.parametrize("where", ["loader", "device"])
def test_one_modality_is_neither_decoded_nor_shipped(synth, small_args, where, monkeypatch):
    """modalities=["video"]: no FLAC read, an empty audio member with its mask False;
    ["audio"]: no mp4 opened, an empty video member; the loaded member as with both."""
    import avssl.data.sampling as sampling  # noqa: PLC0415

    calls = {"audio": 0, "video": 0}
    real_audio, real_open = sampling.SampleProcessor._recording, sampling.open_media

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(sampling.SampleProcessor, "_recording", counting("audio", real_audio))
    monkeypatch.setattr(sampling, "open_media", counting("video", real_open))
    got = {}
    for mods in (["video"], ["audio"], ["audio", "video"]):
        calls.update(audio=0, video=0)
        args = small_args(batches_per_epoch=2, modalities=mods, features_on=where)
        dm = AVDataModule(str(synth), **args)
        got[tuple(mods)] = [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]
        assert (calls["audio"] > 0) == ("audio" in mods) and (calls["video"] > 0) == (
            "video" in mods
        ), (mods, calls)
    both = got[("audio", "video")]
    for b, full in zip(got[("video",)], both):
        assert b.audio.shape == (2, 1, 0, 128) and not b.audio_mask.any()
        assert b.audio_wave is None and b.video.shape == full.video.shape
        assert b.video_mask.all() and b.video.abs().sum() > 0
    for b, full in zip(got[("audio",)], both):
        assert b.video.shape == (2, 3, 4, 0, 0) and not b.video_mask.any()
        assert b.video_u8 is None and b.audio.shape == full.audio.shape
        assert b.audio[b.audio_mask].abs().sum() > 0


def test_bad_modalities_are_rejected(synth, small_args):
    with pytest.raises(ValueError, match="non-empty subset"):
        AVDataModule(str(synth), **small_args(modalities=["depth"]))
    with pytest.raises(ValueError, match="non-empty subset"):
        AVDataModule(str(synth), **small_args(modalities=[]))
    with pytest.raises(ValueError, match="needs 'audio'"):
        AVDataModule(str(synth), **small_args(modalities=["video"], audio_mode="mismatched"))


def test_windowed_flac_gives_the_same_samples_as_a_whole_decode(synth, small_args):
    """Audio windows shorter than the recording are decoded alone (FlacWindows): the same
    processed samples, random draws included, as cutting them from the whole recording."""
    from avssl.data.sampling import build_processor  # noqa: PLC0415

    reader = ShardReader()
    samples = [reader.read(s, k) for s, k in split_table(resolve(synth), None).ordered()]
    for on_device in (False, True):
        dm = AVDataModule(str(synth), **small_args(clips_per_video=2, audio_frames=40))
        outs = []
        for windows in (True, False):
            proc = build_processor(dm.preprocessing(), "train", 2, "aligned", True,
                                   on_device=on_device)  # fmt: skip
            sizes = [json.loads(s["json"]).get("audio_num_samples", 0) for s in samples]
            assert proc.k * proc.window < min(n for n in sizes if n)  # the windowed path
            proc.audio_windows = windows
            gen = torch.Generator().manual_seed(0)
            outs.append([proc(s, gen) for s in samples])
        for a, b in zip(*outs):
            assert a["audio_start"] == b["audio_start"] and a["clip_start"] == b["clip_start"]
            if a["audio"] is None:
                assert b["audio"] is None
                continue
            pairs = zip(a["audio"], b["audio"]) if on_device else [(a["audio"], b["audio"])]
            assert all(torch.equal(x, y) for x, y in pairs)
