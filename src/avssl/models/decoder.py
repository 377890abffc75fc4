"""Light transformer decoders for masked autoencoding.

:class:`TransformerDecoder` is MAE's decoder (He et al. 2022, https://arxiv.org/abs/2111.06377):
linear embedding of the visible encoder tokens into the decoder width, a learned mask token at
every masked position, fixed sin-cos positions from the token grid, pre-norm blocks, a norm and
a linear prediction of each patch. :class:`JointDecoder` decodes several modalities in one
sequence with modality embeddings, as CAV-MAE's decoder (Gong et al. 2023,
https://arxiv.org/abs/2210.07839).
"""

from __future__ import annotations

import torch
from torch import nn

from avssl.models.layers import LN_EPS, Block
from avssl.models.masking import unshuffle
from avssl.models.pos_embed import SinCosPosEmbed
from avssl.models.utils import init_weights

DecoderInput = tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...]]


class DecoderStream(nn.Module):
    """Per-modality input and output of a decoder: embed, mask token, positions, prediction.

    Args:
        in_dim: encoder width.
        patch_dim: values per patch P to predict.
        embed_dim: decoder width.
        grid: default token grid (caches its position table; other grids work too).
    """

    def __init__(
        self, in_dim: int, patch_dim: int, embed_dim: int, grid: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = SinCosPosEmbed(embed_dim, grid)
        self.pred = nn.Linear(embed_dim, patch_dim)

    def tokens(
        self, x: torch.Tensor, ids_restore: torch.Tensor | None, grid: tuple[int, ...]
    ) -> torch.Tensor:
        """Visible encoder tokens ``[B, N_keep, Din]`` -> full decoder sequence ``[B, N, De]``."""
        x = self.embed(x)  # [B, N_keep, De]
        if ids_restore is not None:
            x = unshuffle(x, ids_restore, self.mask_token)  # [B, N, De]
        return x + self.pos_embed(grid)


def _init_decoder(module: nn.Module) -> None:
    module.apply(init_weights)
    for name, p in module.named_parameters():
        if "mask_token" in name or "modality_embed" in name:
            nn.init.normal_(p, std=0.02)


class TransformerDecoder(nn.Module):
    """MAE decoder for one modality (paper: https://arxiv.org/abs/2111.06377).

    Args:
        in_dim: encoder width D.
        patch_dim: values per patch P (e.g. ``encoder.patch_dim``).
        embed_dim: decoder width (512 in MAE / AudioMAE / CAV-MAE, 384 in VideoMAE-B).
        depth: decoder blocks (8 in MAE / CAV-MAE, 4 in VideoMAE).
        num_heads: attention heads (16 in MAE, 6 in VideoMAE-B).
        mlp_ratio: MLP hidden width multiple.
        grid: default token grid (e.g. ``encoder.default_grid``), only for caching.
    """

    def __init__(
        self,
        in_dim: int,
        patch_dim: int,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        grid: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.stream = DecoderStream(in_dim, patch_dim, embed_dim, grid)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        _init_decoder(self)

    def forward(
        self, x: torch.Tensor, ids_restore: torch.Tensor | None, grid: tuple[int, ...]
    ) -> torch.Tensor:
        """Predicts every patch.

        Args:
            x: visible encoder tokens ``[B, N_keep, D]`` in the order of ``keep``.
            ids_restore: ``[B, N]`` from the masker (None when nothing was masked).
            grid: the token grid of the input (``encoder.grid_size(x.shape)``).

        Returns:
            ``[B, N, P]`` predictions in token order (compare with ``encoder.patchify``).
        """
        h = self.stream.tokens(x, ids_restore, grid)  # [B, N, De]
        for blk in self.blocks:
            h = blk(h)
        return self.stream.pred(self.norm(h))  # [B, N, P]


class JointDecoder(nn.Module):
    """One decoder over the concatenated token sequences of several modalities (CAV-MAE).

    Each modality has its own input embedding, mask token, modality embedding and prediction
    head; blocks and final norm are shared. Paper: https://arxiv.org/abs/2210.07839.

    Args:
        in_dims: encoder width per modality, e.g. ``{"audio": 768, "video": 768}``.
        patch_dims: values per patch per modality.
        embed_dim, depth, num_heads, mlp_ratio: decoder settings (CAV-MAE: 512, 8, 16, 4).
        grids: optional default token grid per modality (caching only).
    """

    def __init__(
        self,
        in_dims: dict[str, int],
        patch_dims: dict[str, int],
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        grids: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        super().__init__()
        if set(in_dims) != set(patch_dims):
            raise ValueError(f"JointDecoder: modalities differ: {in_dims} vs {patch_dims}")
        grids = grids or {}
        self.streams = nn.ModuleDict(
            {m: DecoderStream(in_dims[m], patch_dims[m], embed_dim, grids.get(m)) for m in in_dims}
        )
        self.modality_embed = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(1, 1, embed_dim)) for m in in_dims}
        )
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        _init_decoder(self)

    def forward(self, inputs: dict[str, DecoderInput]) -> dict[str, torch.Tensor]:
        """Decodes all modalities jointly.

        Args:
            inputs: modality -> ``(visible tokens [B, N_keep, D], ids_restore [B, N], grid)``.

        Returns:
            modality -> predictions ``[B, N, P]`` in token order.
        """
        names = list(inputs)
        streams: dict[str, DecoderStream] = {m: self.streams[m] for m in names}  # type: ignore[misc]
        seqs = [
            streams[m].tokens(*inputs[m]) + self.modality_embed[m] for m in names
        ]  # each [B, N_m, De]
        lengths = [s.shape[1] for s in seqs]
        h = torch.cat(seqs, dim=1)  # [B, sum N_m, De]
        for blk in self.blocks:
            h = blk(h)
        parts = self.norm(h).split(lengths, dim=1)
        return {m: streams[m].pred(p) for m, p in zip(names, parts)}
