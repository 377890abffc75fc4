"""The streaming audio-visual DataModule, its train/eval streams and the evaluators' loader.

Reads shard format v1 (DESIGN section 3) and yields :class:`~avssl.data.batch.AVBatch`.
Batches are built inside each DataLoader worker (``batch_size=None`` on the DataLoader):
training yields exactly ``batches_per_epoch`` batches on every rank, split over the workers,
from resampled shards, so DDP never waits on a rank that ran out (DESIGN section 8);
evaluation yields every sample of a split exactly once across ranks and workers, in
(shard, position) order (see :mod:`avssl.data.shards` and :mod:`avssl.data.streams`).
Corrupt samples are skipped and counted in ``AVBatch.extra["skipped"]`` (per batch) and
``extra["skipped_total"]`` (per rank, set by the DataModule after transfer; the logged
``data/skipped_samples`` sums the ranks', :mod:`avssl.callbacks`). The streams are seeded by
``seed``, by default the run's global seed (``seed_everything``), and a checkpoint keeps the
seed and the training loader's position (``AVDataModule.state_dict``) for a resumed run.
With ``features_on="device"`` (the default ``"auto"`` picks it when training runs on a GPU) the
workers ship waveform windows and uint8 clips, and the fbank, colour jitter and
normalisation are computed after the transfer, on the GPU (see :mod:`avssl.data.batching`).
The loaders are in :mod:`avssl.data.datamodule_loaders`, the checkpoint state and the
batch-transfer hook in :mod:`avssl.data.datamodule_state`; their names are importable here.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from avssl.data.batching import collate
from avssl.data.datamodule_loaders import GPU_WORKER_NICE as GPU_WORKER_NICE
from avssl.data.datamodule_loaders import DataLoadersMixin, make_eval_loader
from avssl.data.datamodule_loaders import default_batches_per_epoch as default_batches_per_epoch
from avssl.data.datamodule_state import DataStateMixin
from avssl.data.decode import ClipSpec
from avssl.data.fbank import REFERENCE_STATS, FbankConfig
from avssl.data.loaders import EpochLoader, TrainLoader, tune_worker_process
from avssl.data.local_view import LocalViewSpec
from avssl.data.sampling import AUDIO_MODES, MODALITIES, build_processor, check_modalities
from avssl.data.shards import SplitTable, resolve, split_table
from avssl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    preset_options,
)

__all__ = [
    "AVDataModule",
    "EpochLoader",
    "TrainLoader",
    "build_processor",
    "collate",
    "data_seed",
    "make_eval_loader",
    "tune_worker_process",
]
FEATURES_ON = ("auto", "loader", "device")
# Each worker of our streams yields its own share (see streams.TrainStream), so Lightning's
# generic caution about ``__len__`` on an IterableDataset does not apply.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


def data_seed(seed: int | None) -> int:
    """The data streams' base seed: ``seed`` when given, else the run's global seed
    (``seed_everything``, which Lightning exports as env ``PL_GLOBAL_SEED``), else 0."""
    if seed is not None:
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class AVDataModule(DataLoadersMixin, DataStateMixin, pl.LightningDataModule):
    """Audio-visual shards -> AVBatch for training and validation (LightningCLI friendly).

    Args:
        data: prepared folder (with ``manifest.json``), tar path, or brace/glob pattern.
        train_split / val_split: split names (``splits/<name>.txt``); None = all samples
            (train) / no validation. ``train_split: "auto"`` (default): the dataset's official
            training split (``train1`` for UCF101 / HMDB51, ``train`` for VGGSound and
            Kinetics-Sounds, the unbalanced or else the balanced AudioSet training segments,
            ``train`` of a folder dataset; :data:`avssl.data.shards.TRAIN_SPLITS`), all
            samples where there is none (ESC-50, shards without a manifest).
        batch_size: per-rank batch size. num_workers: DataLoader workers per rank.
        num_frames / frame_stride / target_fps / crop_size: video clip spec (T frames,
            every ``frame_stride``-th frame or resampled at ``target_fps``; H = W = crop).
        video_mean / video_std: normalisation (ImageNet by default).
        audio_frames / audio_seconds: fbank length Ta (``audio_seconds`` wins if given).
        num_mel_bins / fbank_norm / fbank_mean / fbank_std: fbank settings; mean/std default
            to the folder's ``stats.json``, else to the AudioSet statistics of the reference
            ``fbank_norm`` follows (:data:`avssl.data.fbank.REFERENCE_STATS`; a warning says
            which).
        clips_per_video: K clips per sample in training (adds a K axis when > 1);
            val_clips: K in validation (None: ``clips_per_video``, the K the objective trains
            on; CrissCross needs 2).
        audio_mode: "aligned" | "random" | "mismatched" (then ``mismatch_prob`` of samples).
        train_preset / eval_preset: transform presets ("train", "mae", "videomae", "eval", "none");
            augment: overrides of the training preset's options (validation takes
            ``eval_preset`` as it is; see ``avssl.data.transforms.PRESETS``;
            names and values checked here, ``preset_options``). On the command line one
            entry at a time: ``--data.init_args.augment.hue 0.1`` keeps the recipe's others.
        batches_per_epoch: batches per epoch on every rank (default: ceil(split size /
            (batch_size * world size))). seed: base seed of the training and validation
            streams (mixed with epoch, rank, worker, and the step in an epoch a run resumed in
            the middle of, see ``TrainLoader``); None (default): the run's global seed
            (``seed_everything``; :func:`data_seed`). ``hparams.seed`` and checkpoints
            (``state_dict``) keep the seed used; a resumed run takes its checkpoint's unless
            ``seed`` is given.
        features_on: where training and validation batches get their last, per-pixel and
            per-frame steps (fbank + SpecAugment, colour jitter + normalisation): "loader"
            (the workers), "device" (after the transfer to the training device, from the
            waveform windows and uint8 clips the workers ship; the same values and random
            draws), or "auto" ("device" when the trainer runs on a GPU, else "loader").
        pin_memory: page-locked batches, for asynchronous copies to the GPU (None: when the
            trainer runs on a GPU).
        repeated_sampling: R training batch entries from each decoded sample (MAE-ST's repeated
            sampling, https://arxiv.org/abs/2205.09113): each entry has its own clip times,
            audio windows and augmentation, but the video is opened and the audio decoded once
            for all R. ``batch_size`` counts entries (a batch of 16 with R = 4 holds 4 samples)
            and so does an epoch. For objectives without negatives (masked reconstruction,
            XKD); with batch or memory-bank negatives the R entries of a sample share its key
            and are not each other's negatives (so each compares fewer), and
            ``audio_mode: mismatched`` refuses R > 1.
        keyframe_starts: training clips start on the keyframe at or before each random start
            (shards keep one at least every second), so nothing before the keyframe is
            decoded and a one-frame clip decodes one frame: CAV-MAE's sampling of one of the
            frames extracted at 1 fps (Gong et al. 2023, https://arxiv.org/abs/2210.07839),
            from the shards' keyframes. Fewer distinct start times per video; validation and
            evaluation clips are unchanged. Default off.
        modalities: what training and validation batches carry, ``["audio", "video"]``
            (default), ``["video"]`` or ``["audio"]``: the other member is neither decoded nor
            shipped (an empty ``[B, 1, 0, F]`` / ``[B, C, T, 0, 0]`` tensor, mask False), for
            single-modality objectives such as a VideoMAE or AudioMAE step. The audio-visual
            objectives refuse a run without both (``avssl pretrain`` says so at start).
        worker_nice: how much lower the loader workers' scheduling priority is than the
            training process's (0..19, ``os.nice``; 0 = the same; None: ``GPU_WORKER_NICE``
            when the trainer runs on a GPU, else 0). With as many busy workers as cores, the
            process that launches the GPU's kernels otherwise waits for a core: on one H200
            with 16 workers on 16 cores, niceness 10 took the loader-fed CAV-MAE step from
            474 to 688 samples/s (``bench/results/h200-2026-11-28-fed.md``).
    """

    def __init__(
        self,
        data: str,
        train_split: str | None = "auto",
        val_split: str | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        num_frames: int = 8,
        frame_stride: int | None = None,
        target_fps: float | None = None,
        crop_size: int = 112,
        video_mean: list[float] | None = None,
        video_std: list[float] | None = None,
        audio_frames: int = 1024,
        audio_seconds: float | None = None,
        num_mel_bins: int = 128,
        fbank_norm: str = "audiomae",
        fbank_mean: float | None = None,
        fbank_std: float | None = None,
        clips_per_video: int = 1,
        val_clips: int | None = None,
        audio_mode: str = "aligned",
        mismatch_prob: float = 0.5,
        train_preset: str = "train",
        eval_preset: str = "eval",
        augment: dict[str, Any] | None = None,
        batches_per_epoch: int | None = None,
        seed: int | None = None,
        pin_memory: bool | None = None,
        features_on: str = "auto",
        repeated_sampling: int = 1,
        keyframe_starts: bool = False,
        modalities: list[str] | None = None,
        worker_nice: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        for name, preset in (("train_preset", train_preset), ("eval_preset", eval_preset)):
            if preset not in PRESETS:
                raise ValueError(f"{name} must be one of {list(PRESETS)}, got {preset!r}")
        if augment is not None and not isinstance(augment, dict):
            raise ValueError(f"augment must be a mapping of preset options, got {augment!r}")
        preset_options(train_preset, augment)  # unknown keys and bad values fail here, early
        if audio_mode not in AUDIO_MODES:
            raise ValueError(f"audio_mode must be one of {AUDIO_MODES}, got {audio_mode!r}")
        if features_on not in FEATURES_ON:
            raise ValueError(f"features_on must be one of {FEATURES_ON}, got {features_on!r}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")
        if worker_nice is not None and not 0 <= worker_nice <= 19:
            raise ValueError(f"worker_nice must be in 0..19, got {worker_nice}")
        if repeated_sampling < 1:
            raise ValueError(f"repeated_sampling must be >= 1, got {repeated_sampling}")
        if repeated_sampling > 1 and audio_mode == "mismatched":
            raise ValueError("repeated_sampling > 1 does not go with audio_mode 'mismatched'")
        self.modalities = check_modalities(
            MODALITIES if modalities is None else modalities, audio_mode
        )
        ClipSpec(num_frames, frame_stride, target_fps)  # validates the clip spec
        self.source = resolve(data)  # missing paths fail here, at start
        if train_split == "auto":
            self.hparams["train_split"] = self.source.auto_train_split()
            which = self.hparams["train_split"] or "every sample"
            rank_zero_info(f"[data] train_split auto: {which} of {data}")
        self._seed_given = seed is not None
        self.hparams["seed"] = data_seed(seed)  # recorded as used (hparams, checkpoints)
        self.hp: Any = self.hparams  # AttributeDict of the constructor arguments
        self.fbank = self._fbank_config()
        self.local_view: LocalViewSpec | None = None  # request_local_view
        self.skipped_total = 0
        self._tables: dict[str | None, SplitTable] = {}
        self._train_loader: TrainLoader | None = None
        self._restored: tuple[int, int, int] | None = None  # load_state_dict's position

    def _fbank_config(self) -> FbankConfig:
        stats = self.source.stats() or {}
        norm = self.hp.fbank_norm
        ref, ref_mean, ref_std = REFERENCE_STATS.get(norm, REFERENCE_STATS["audiomae"])
        given = self.hp.fbank_mean is not None and self.hp.fbank_std is not None
        if not stats and not given and norm in REFERENCE_STATS:
            warnings.warn(
                f"no stats.json for {self.hp.data}: fbank_norm {norm!r} takes {ref}'s AudioSet "
                f"fbank stats (mean {ref_mean}, std {ref_std})",
                stacklevel=3,
            )
        if stats.get("num_mel_bins", self.hp.num_mel_bins) != self.hp.num_mel_bins:
            warnings.warn(
                f"stats.json has {stats['num_mel_bins']} mel bins, the loader uses "
                f"{self.hp.num_mel_bins}: normalisation stats may be off",
                stacklevel=3,
            )
        defaults = FbankConfig()
        shift_ms = float(stats.get("frame_shift_ms", defaults.frame_shift_ms))
        if self.hp.audio_seconds is not None:
            self.hp.audio_frames = max(1, round(self.hp.audio_seconds * 1000.0 / shift_ms))
        mean = self.hp.fbank_mean if self.hp.fbank_mean is not None else stats.get("fbank_mean")
        std = self.hp.fbank_std if self.hp.fbank_std is not None else stats.get("fbank_std")
        return FbankConfig(
            sample_rate=int(stats.get("sample_rate", defaults.sample_rate)),
            num_mel_bins=self.hp.num_mel_bins,
            frame_shift_ms=shift_ms,
            target_frames=self.hp.audio_frames,
            mean=ref_mean if mean is None else float(mean),
            std=ref_std if std is None else float(std),
            norm=norm,
        )

    def preprocessing(self) -> dict:
        """The json-serialisable preprocessing dict stored in checkpoints and bundles."""
        return {
            "num_frames": self.hp.num_frames,
            "frame_stride": self.hp.frame_stride,
            "target_fps": self.hp.target_fps,
            "crop_size": self.hp.crop_size,
            "video_mean": list(self.hp.video_mean or IMAGENET_MEAN),
            "video_std": list(self.hp.video_std or IMAGENET_STD),
            "fbank": self.fbank.to_dict(),
        }

    def training_data(self) -> dict:
        """What pretraining read (kept in checkpoints and bundles): the data, its dataset and
        the training split (None: every sample), so that an evaluation can tell when its test
        clips were seen, unlabelled, in pretraining."""
        return {
            "path": str(self.hp.data),
            "dataset": self.source.manifest.get("dataset"),
            "split": self.hp.train_split,
        }

    def table(self, split: str | None) -> SplitTable:
        """The samples of ``split`` per shard (cached)."""
        if split not in self._tables:
            self._tables[split] = split_table(self.source, split)
        return self._tables[split]

    def request_local_view(self, spec: LocalViewSpec | None) -> None:
        """Training and validation batches carry a local view of each clip as ``AVBatch.local``
        (None: none),
        as an objective asks (XKD; :mod:`avssl.data.local_view`). One-line ``ValueError`` for a
        view the clips cannot give."""
        if spec is not None:
            spec.check(self.hp.num_frames, self.hp.audio_frames)
            if self.hp.audio_mode == "mismatched":
                raise ValueError("local views do not go with audio_mode 'mismatched'")
        self.local_view = spec

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.table(self.hp.train_split)
        if self.hp.val_split is not None and stage in (None, "fit", "validate"):
            self.table(self.hp.val_split)
