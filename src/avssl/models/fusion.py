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

    def _run(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x) if key_mask is None else blk(x, key_mask)  # the maskless call unchanged
        return x

    def forward(
        self,
        audio: torch.Tensor,
        video: torch.Tensor,
        audio_ok: torch.Tensor | None = None,
        video_ok: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint attention over both sequences.

        A clip without audio (``audio_ok`` False) or without video has placeholder tokens for
        that modality: they are no keys of any query, so the other modality's outputs do not
        depend on them (the placeholders still run as queries, over the present modality's
        tokens; their outputs belong to the missing modality, whose losses exclude the clip).
        A clip with neither modality attends over everything (no loss uses it). The missing
        modality's input tokens are detached, so a clip sends its encoder no gradient through
        these layers for a modality it lacks, whatever the losses do. With both
        masks None there is no attention mask at all (SDPA's flash kernel on a GPU): the
        caller passes None when every clip of the batch has both modalities.

        Args:
            audio: ``[B, Na, D]`` audio tokens (visible ones when masked).
            video: ``[B, Nv, D]`` video tokens.
            audio_ok, video_ok: optional bool or 0/1 float ``[B]``, False where the clip has
                no audio / no video (``AVBatch.audio_mask`` / ``video_mask``); None: present.

        Returns:
            ``(audio [B, Na, D], video [B, Nv, D])`` after the joint layers and norm.
        """
        mask = fusion_key_mask(audio.shape[1], video.shape[1], audio_ok, video_ok, audio.device)
        if audio_ok is not None:  # a missing modality's placeholders pass no gradient back
            audio = torch.where(_present(audio_ok, audio), audio, audio.detach())
        if video_ok is not None:
            video = torch.where(_present(video_ok, video), video, video.detach())
        a = audio + self.modality_embed["audio"]
        v = video + self.modality_embed["video"]
        x = self._run(torch.cat([a, v], dim=1), mask)  # [B, Na + Nv, D]
        x = self.norm(x)
        return x[:, : a.shape[1]], x[:, a.shape[1] :]

    def forward_single(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """The joint layers on one modality's tokens ``[B, N, D]`` -> ``[B, N, D]``."""
        if modality not in MODALITIES:
            raise ValueError(f"JointFusion: unknown modality {modality!r}")
        x = self._run(x + self.modality_embed[modality])
        return self.norm_single[modality](x) if self.norm_single is not None else self.norm(x)


def fusion_key_mask(
    n_audio: int,
    n_video: int,
    audio_ok: torch.Tensor | None,
    video_ok: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Bool ``[B, Na + Nv]`` key mask of :meth:`JointFusion.forward` (True: may be attended),
    or None when both ``*_ok`` are None. Shapes depend only on the token counts (static)."""
    if audio_ok is None and video_ok is None:
        return None
    ref = audio_ok if audio_ok is not None else video_ok
    assert ref is not None
    ones = torch.ones(ref.shape[0], dtype=torch.bool, device=device)
    a_ok = ones if audio_ok is None else audio_ok.to(device) > 0.5  # [B]
    v_ok = ones if video_ok is None else video_ok.to(device) > 0.5
    neither = ~(a_ok | v_ok)  # [B] such a clip keeps every key (a row must have one)
    keys_a = (a_ok | neither)[:, None].expand(-1, n_audio)  # [B, Na]
    keys_v = (v_ok | neither)[:, None].expand(-1, n_video)  # [B, Nv]
    return torch.cat([keys_a, keys_v], dim=1)  # [B, Na + Nv]


def _present(ok: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, 1, 1]`` from a bool or 0/1 float ``[B]`` flag, on the tokens' device."""
    return (ok.to(tokens.device) > 0.5)[:, None, None]
