"""Joint audio-video fusion layers (MAViL's joint encoder / CAV-MAE's shared layer).

Transformer blocks over the concatenation of the audio and video token sequences, each tagged
with a learned modality embedding; the output is split back into the two parts. MAViL: Huang
et al. 2022, https://arxiv.org/abs/2212.08071; CAV-MAE: Gong et al. 2023,
https://arxiv.org/abs/2210.07839.
"""

from __future__ import annotations

import torch
from torch import nn

from avssl.models.layers import LN_EPS, Block
from avssl.models.utils import init_weights, trunc_normal_

MODALITIES = ("audio", "video")


class JointFusion(nn.Module):
    """Shared transformer layers over audio and video tokens.

    :meth:`forward` fuses the two sequences (joint attention) and returns the audio and video
    parts. :meth:`forward_single` runs the same layers on one modality alone, as CAV-MAE does for
    its contrastive branch (with that modality's own final norm when ``single_norms``).

    Args:
        dim: token width D (both modalities).
        depth: number of joint blocks (1 in CAV-MAE; MAViL uses a few).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width multiple.
        qkv_bias: bias on the qkv projections.
        single_norms: separate final norms for :meth:`forward_single` (CAV-MAE). Off by default
            so that every parameter gets a gradient when only :meth:`forward` is used (DDP).
    """

    def __init__(
        self,
        dim: int,
        depth: int = 1,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        single_norms: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.depth = dim, depth
        self.modality_embed = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(1, 1, dim)) for m in MODALITIES}
        )
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.norm_single = (
            nn.ModuleDict({m: nn.LayerNorm(dim, eps=LN_EPS) for m in MODALITIES})
            if single_norms
            else None
        )
        self.apply(init_weights)
        for p in self.modality_embed.values():
            trunc_normal_(p, std=0.02)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(
        self, audio: torch.Tensor, video: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint attention over both sequences.

        Args:
            audio: ``[B, Na, D]`` audio tokens (visible ones when masked).
            video: ``[B, Nv, D]`` video tokens.

        Returns:
            ``(audio [B, Na, D], video [B, Nv, D])`` after the joint layers and norm.
        """
        a = audio + self.modality_embed["audio"]
        v = video + self.modality_embed["video"]
        x = self._run(torch.cat([a, v], dim=1))  # [B, Na + Nv, D]
        x = self.norm(x)
        return x[:, : a.shape[1]], x[:, a.shape[1] :]

    def forward_single(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """The joint layers on one modality's tokens ``[B, N, D]`` -> ``[B, N, D]``."""
        if modality not in MODALITIES:
            raise ValueError(f"JointFusion: unknown modality {modality!r}")
        x = self._run(x + self.modality_embed[modality])
        return self.norm_single[modality](x) if self.norm_single is not None else self.norm(x)
