"""XDC: cross-modal deep clustering (Alwassel et al. 2020, https://arxiv.org/abs/1911.12667).

At the start of every ``recluster_every``-th epoch the current encoders embed a clustering
subset of the training split (the DataModule's deterministic ``eval_loader``: every sample once,
centre crop, the first ``cluster_samples`` of them), k-means clusters each modality
separately (``avssl.models.kmeans``: faiss when available, empty clusters split / reseeded),
and until the next re-clustering the video head learns to predict the *audio* cluster of each
sample and the audio head the *video* cluster (XDC's cross-modal variant), looked up by sample
key; samples outside the subset, or without the other modality, have target -1 and are ignored.
As in DeepCluster (Caron et al. 2018, https://arxiv.org/abs/1807.05520) the classification heads
are re-initialised after each re-clustering, because cluster ids carry no meaning across runs of
k-means. Features are L2-normalised before k-means by default (DeepCluster also PCA-whitens; we
do not). ``within_weight > 0`` adds a second head to each encoder that predicts its *own*
modality's clusters, weighted by ``within_weight``: XDC's multi-head variant MDC at 1 (the paper
compares it with XDC, its choice, and with single-modality deep clustering).

Cluster state (key table, assignments, centroids, epoch of the clustering) is saved in
``checkpoint["xdc"]`` and restored on resume; a resumed run re-clusters only when the interval
says so, counted from the saved clustering. Under DDP every rank embeds its share of the subset,
rank 0 runs k-means on everything, and the result is broadcast. The embedding pass, the k-means,
the cluster state, its target lookup and its checkpoint entry are in
:mod:`avssl.objectives._xdc_clusters`; this module holds the objective, when and how it
re-clusters (gathering, broadcasting, fresh heads) and its loss.

Validation clips (``data.init_args.val_split``) are not in the clustering, so their targets are
the clusters of the nearest centroids of their current features (:meth:`XDC.nearest_clusters`,
the squared-L2 assignment k-means makes): ``val/*_predicts_*`` say how well each head predicts
the other modality's cluster of a held-out clip.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from avssl.data.batch import AVBatch
from avssl.losses.clustering import cluster_cross_entropy
from avssl.objectives._contrastive_heads import projection_head
from avssl.objectives._mavil_parts import build_encoders, flatten_inputs
from avssl.objectives._xdc_clusters import MODALITIES, XDCClusterMixin
from avssl.objectives._xdc_clusters import _num_clusters as _num_clusters
from avssl.objectives.base import AVObjective

OTHER = {"audio": "video", "video": "audio"}


class XDC(XDCClusterMixin, AVObjective):
    """Cross-modal deep clustering objective (paper: https://arxiv.org/abs/1911.12667).

    Args:
        size, depth, patch_size, tubelet_size: encoder architecture.
        audio_frames, num_mel_bins, num_frames, img_size: default input sizes.
        num_clusters: k-means clusters per modality (XDC tunes it per pretraining set).
        cluster_samples: size of the clustering subset (None: the whole training split).
        recluster_every: epochs between re-clusterings (XDC: every epoch).
        kmeans_iters: Lloyd iterations. kmeans_backend: "auto", "faiss" or "torch".
        normalize_features: L2-normalise features before k-means.
        head_hidden_dim: hidden width of the cluster-prediction heads (0: linear, as XDC).
        cluster_batch_size: batch size of the embedding pass (None: the training batch size).
        within_weight: weight of the heads that predict each encoder's own clusters (0: XDC;
            1: MDC, XDC's multi-head variant).
        **kwargs: optimisation settings of :class:`~avssl.objectives.base.AVObjective`.
    """

    def __init__(
        self,
        size: str = "base",
        depth: int | None = None,
        patch_size: int = 16,
        tubelet_size: int = 2,
        audio_frames: int = 1024,
        num_mel_bins: int = 128,
        num_frames: int = 8,
        img_size: int = 224,
        num_clusters: int = 256,
        cluster_samples: int | None = None,
        recluster_every: int = 1,
        kmeans_iters: int = 20,
        kmeans_backend: str = "auto",
        normalize_features: bool = True,
        head_hidden_dim: int = 0,
        cluster_batch_size: int | None = None,
        within_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_clusters < 2 or recluster_every < 1:
            raise ValueError("XDC: num_clusters must be >= 2 and recluster_every >= 1")
        if within_weight < 0:
            raise ValueError(f"XDC: within_weight must be >= 0, got {within_weight}")
        self.cfg = dict(self.hparams)
        self.audio_encoder, self.video_encoder = build_encoders(self.cfg)
        dim = self.audio_encoder.embed_dim
        names = [*MODALITIES, *(f"{m}_self" for m in MODALITIES if within_weight > 0)]
        self.heads = nn.ModuleDict(
            {n: projection_head(dim, head_hidden_dim, num_clusters) for n in names}
        )  # "audio": audio features -> video clusters; "audio_self": -> audio clusters
        self.cluster_keys: list[str] = []
        self.key_row: dict[str, int] = {}
        self.assignments: dict[str, torch.Tensor] = {}  # modality -> long [N], -1 = missing
        self.centroids: dict[str, torch.Tensor] = {}  # modality -> [K, D]
        self.cluster_epoch = -1

    # ----------------------------------------------------------------- re-clustering
    def recluster(self, batches: Iterable[AVBatch], epoch: int = 0) -> None:
        """Embeds, clusters (rank 0), broadcasts, installs, and re-initialises the heads."""
        emb = self.embed_batches(batches, _per_rank_limit(self.cfg["cluster_samples"]))
        whole = _gather_embeddings(emb)  # the whole subset on rank 0, None elsewhere
        state = [self.cluster(whole, seed=epoch) if whole is not None else None]
        if _world() > 1:
            dist.broadcast_object_list(state, src=0)
        assert state[0] is not None
        self.set_cluster_state(state[0], epoch)
        for head in self.heads.values():
            head.apply(_reset)
        if _world() > 1:  # same fresh heads on every rank (DDP does not re-sync weights)
            for p in self.heads.parameters():
                dist.broadcast(p.data, src=0)
        self._forget_head_moments()

    def _forget_head_moments(self) -> None:
        """Drops the optimiser's state (AdamW's moments and step count) of the re-initialised
        heads, as DeepCluster builds a new optimiser for its top layer at every clustering: the
        moments belonged to the last clustering's ids, which the new ones do not follow."""
        trainer = self._trainer
        heads = {id(p) for p in self.heads.parameters()}
        for opt in trainer.optimizers if trainer is not None else []:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in heads:
                        opt.state.pop(p, None)

    def _cluster_source(self) -> Iterable[AVBatch]:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "eval_loader"):
            split = getattr(dm.hparams, "train_split", None)
            return dm.eval_loader(split, num_clips=1, batch_size=self.cfg["cluster_batch_size"])
        loader = self.trainer.train_dataloader  # fallback: the (augmented) training stream
        if loader is None:
            raise RuntimeError("XDC: no datamodule eval_loader and no train_dataloader to cluster")
        return loader

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        if self.cluster_epoch < 0 or epoch - self.cluster_epoch >= self.cfg["recluster_every"]:
            self.recluster(self._cluster_source(), epoch)

    # ----------------------------------------------------------------- loss
    def validation_losses(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        """The training loss with nearest-centroid targets (validation clips have no key in
        the clustering; module docstring)."""
        return self.compute_losses(batch, targets="nearest")

    def compute_losses(self, batch: AVBatch, targets: str = "keys") -> dict[str, torch.Tensor]:
        """XDC's loss; ``targets``: "keys" (the clustered clips' ids, looked up by sample key)
        or "nearest" (:meth:`nearest_clusters` of each clip's features, for validation)."""
        audio, video, a_ok, v_ok = flatten_inputs(batch)
        k = len(audio) // len(batch)
        feats = {"audio": self.audio_encoder(audio), "video": self.video_encoder(video)}  # [B K, D]
        ok = {"audio": a_ok > 0.5, "video": v_ok > 0.5}
        w = self.cfg["within_weight"]
        # each modality's cluster ids [B K]; -1 where the sample has none
        if targets == "nearest":  # a missing input has no features, so no cluster
            ids = {
                m: self.nearest_clusters(feats[m], m).masked_fill(~ok[m], -1) for m in MODALITIES
            }
        else:
            ids = {
                m: self.targets(batch.key, m).repeat_interleave(k).to(self.device)
                for m in MODALITIES
            }
        losses = {}
        for m in MODALITIES:  # head of m predicts the clusters of the other modality (and, MDC,
            # its own): no target where m's input is missing
            aims = [(OTHER[m], m)] + ([(m, f"{m}_self")] if w > 0 else [])
            for of, head in aims:
                target = ids[of].masked_fill(~ok[m], -1)
                losses[f"{m}_predicts_{of}"] = cluster_cross_entropy(
                    self.heads[head](feats[m]), target
                )
                if of != m:
                    losses[f"known_{of}_targets"] = (target >= 0).float().mean()
        total = losses["audio_predicts_video"] + losses["video_predicts_audio"]
        if w > 0:
            total = total + w * (losses["audio_predicts_audio"] + losses["video_predicts_video"])
        losses["loss"] = 0.5 * total
        return losses

    # ----------------------------------------------------------------- export
    def export_encoders(self) -> dict[str, Any]:
        note = "XDC audio/video encoders (cluster-prediction heads not exported)"
        return {
            "audio": self.audio_encoder,
            "video": self.video_encoder,
            "which": "online",
            "note": note,
        }


def _reset(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.reset_parameters()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _per_rank_limit(total: int | None) -> int | None:
    return None if total is None else -(-int(total) // _world())


def _gather_embeddings(emb: dict[str, Any]) -> dict[str, Any] | None:
    """Concatenates every rank's embeddings (rank order) on rank 0, which alone clusters; the
    other ranks get None (they receive the clustering, not every rank's features)."""
    if _world() == 1:
        return emb
    parts: list[Any] | None = [None] * _world() if _rank() == 0 else None
    dist.gather_object(emb, parts, dst=0)
    if parts is None:
        return None
    return {
        "keys": [k for p in parts for k in p["keys"]],
        "feats": {m: torch.cat([p["feats"][m] for p in parts]) for m in MODALITIES},
        "ok": {m: torch.cat([p["ok"][m] for p in parts]) for m in MODALITIES},
    }
