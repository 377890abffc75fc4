"""A test helper: records the ``attn_mask`` of every scaled-dot-product attention call."""

from __future__ import annotations

import torch.nn.functional as F


def record_attention_masks(monkeypatch) -> list:
    """Patches ``F.scaled_dot_product_attention`` for the test; returns the list that each
    call's ``attn_mask`` (None when unmasked) is appended to."""
    seen: list = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen
