"""XDC's clusters: the embedding pass over the clustering subset, k-means per modality, the
installed pseudo-label state (key table, assignments, centroids, epoch of the clustering), the
target lookup by sample key, the nearest-centroid ids of validation clips, and that state in
the checkpoint (``checkpoint["xdc"]``).

XDC: Alwassel et al. 2020, https://arxiv.org/abs/1911.12667; DeepCluster: Caron et al. 2018,
https://arxiv.org/abs/1807.05520. The objective as a whole is told in the docstring of
:mod:`avssl.objectives.xdc`. :class:`XDCClusterMixin` is a part of ``XDC`` (it reads the
attributes that constructor sets); it is not meant to be used on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from avssl.data.batch import AVBatch
from avssl.models.kmeans import assign, kmeans
from avssl.models.vit import AudioViT, VideoViT
from avssl.objectives._mavil_parts import flatten_inputs
from avssl.objectives.base import AVObjective

MODALITIES = ("audio", "video")


class XDCClusterMixin(AVObjective):
    """The k-means pseudo-labels of :class:`~avssl.objectives.xdc.XDC` (paper:
    https://arxiv.org/abs/1911.12667): embedding, clustering, installed state, target lookup."""

    audio_encoder: AudioViT
    video_encoder: VideoViT
    cfg: dict[str, Any]
    cluster_keys: list[str]
    key_row: dict[str, int]
    assignments: dict[str, torch.Tensor]  # modality -> long [N], -1 = missing
    centroids: dict[str, torch.Tensor]  # modality -> [K, D]
    cluster_epoch: int

    def _encoder(self, modality: str) -> nn.Module:
        return self.audio_encoder if modality == "audio" else self.video_encoder

    # ----------------------------------------------------------------- clustering
    @torch.no_grad()
    def embed_batches(self, batches: Iterable[AVBatch], limit: int | None = None) -> dict[str, Any]:
        """Pooled features of each sample (first clip), first occurrence of each key only."""
        was_training = self.training
        self.eval()
        keys: list[str] = []
        seen: set[str] = set()
        feats: dict[str, list[torch.Tensor]] = {m: [] for m in MODALITIES}
        ok: dict[str, list[torch.Tensor]] = {m: [] for m in MODALITIES}
        for batch in batches:
            self.mark_graph_step()  # each batch's features are copied out before the next
            batch = batch.to(self.device)
            audio, video, a_ok, v_ok = flatten_inputs(batch)
            k = len(audio) // len(batch)
            rows = []
            for i, key in enumerate(batch.key):
                if key not in seen and (limit is None or len(keys) < limit):
                    seen.add(key)
                    keys.append(key)
                    rows.append(i * k)  # first clip of sample i
            if rows:
                idx = torch.tensor(rows, device=self.device)
                for m, x, good in (("audio", audio, a_ok), ("video", video, v_ok)):
                    feats[m].append(self._encoder(m)(x[idx]).float().cpu())  # [b, D]
                    ok[m].append(good[idx].bool().cpu())
            if limit is not None and len(keys) >= limit:
                break
        self.train(was_training)
        dim = self.audio_encoder.embed_dim
        return {
            "keys": keys,
            "feats": {m: torch.cat(feats[m] or [torch.zeros(0, dim)]) for m in MODALITIES},
            "ok": {m: torch.cat(ok[m] or [torch.zeros(0, dtype=torch.bool)]) for m in MODALITIES},
        }

    def cluster(self, emb: dict[str, Any], seed: int = 0) -> dict[str, Any]:
        """k-means per modality over the embedded subset; returns the new cluster state."""
        state: dict[str, Any] = {"keys": list(emb["keys"]), "assign": {}, "centroids": {}}
        for m in MODALITIES:
            x, good = emb["feats"][m], emb["ok"][m]
            k = _num_clusters(self.cfg["num_clusters"], int(good.sum()), m)
            if self.cfg["normalize_features"]:
                x = F.normalize(x, dim=-1)
            res = kmeans(x[good], k, self.cfg["kmeans_iters"], seed, self.cfg["kmeans_backend"])
            assign = torch.full((len(x),), -1, dtype=torch.long)
            assign[good] = res.assignments.cpu()
            state["assign"][m], state["centroids"][m] = assign, res.centroids.cpu()
        return state

    def set_cluster_state(self, state: dict[str, Any], epoch: int) -> None:
        """Installs a clustering (key table, assignments, centroids) made at ``epoch``."""
        self.cluster_keys = list(state["keys"])
        self.key_row = {key: i for i, key in enumerate(self.cluster_keys)}
        self.assignments = {m: t.long().cpu() for m, t in state["assign"].items()}
        self.centroids = {m: t.float().cpu() for m, t in state["centroids"].items()}
        self.cluster_epoch = int(epoch)

    def targets(self, keys: list[str], modality: str) -> torch.Tensor:
        """Cluster ids ``[B]`` of ``modality`` for sample keys (-1 when not clustered)."""
        assign = self.assignments.get(modality)
        if assign is None:
            return torch.full((len(keys),), -1, dtype=torch.long)
        rows = [self.key_row.get(k, -1) for k in keys]
        return torch.tensor([int(assign[r]) if r >= 0 else -1 for r in rows], dtype=torch.long)

    def nearest_clusters(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Cluster ids ``[N]`` of features ``x`` ``[N, D]``: the nearest centroid of the
        current clustering of ``modality`` (features L2-normalised first when the clustering's
        were); -1 for every row before the first clustering."""
        centroids = self.centroids.get(modality)
        if centroids is None:
            return torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        x = x.detach().float()
        if self.cfg["normalize_features"]:
            x = F.normalize(x, dim=-1)
        return assign(x, centroids.to(x.device))

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["xdc"] = {
            "keys": list(self.cluster_keys),
            "assign": dict(self.assignments),
            "centroids": dict(self.centroids),
            "epoch": self.cluster_epoch,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("xdc")
        if state and state["keys"]:
            self.set_cluster_state(state, state["epoch"])


def _num_clusters(wanted: int, available: int, modality: str) -> int:
    """``wanted``, or fewer (with a warning) when fewer samples have the modality."""
    if available < 2:
        raise ValueError(
            f"XDC: only {available} clustering samples have {modality}; k-means needs >= 2 "
            "(check model.init_args.cluster_samples and the training split)"
        )
    if available < wanted:
        rank_zero_warn(
            f"XDC: {available} clustering samples have {modality}, fewer than "
            f"num_clusters={wanted}: using {available} clusters this time"
        )
        return available
    return wanted
