"""Losses keep float32 inside bf16 autocast (``bf16-mixed`` training): autocast would otherwise
cast the inputs of their matrix products to bfloat16 whatever ``.float()`` asked for."""

from __future__ import annotations

import pytest
import torch

from avssl.losses.contrastive import info_nce, mil_nce
from avssl.losses.distillation import coral, dino_distill, mean_coral, mmd
from avssl.objectives._mavil_parts import masked_info_nce
from avssl.objectives._memory_bank import memory_nce as _memory_nce
from avssl.objectives.avid_cma import _positive_nce


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _value_and_grad(fn, *inputs, autocast: bool = False):
    """The loss (under bf16 autocast when asked) and its gradients; backward runs outside
    autocast, as Lightning runs it."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fn(*leaves)
    loss.backward()
    return loss.detach(), [x.grad for x in leaves]


def _cases():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    bags = torch.randn(64, 3, 32, generator=g)
    x, y = torch.randn(16, 48, generator=g) * 3, torch.randn(16, 48, generator=g) * 3 + 0.5
    logits = torch.randn(8, 50, generator=g), torch.randn(8, 50, generator=g)
    valid = torch.ones(64)
    bank = torch.nn.functional.normalize(torch.randn(100, 32, generator=g), dim=-1)
    rows, neg = torch.arange(64), torch.randint(64, 100, (64, 20), generator=g)
    pos = torch.randint(0, 100, (64, 4), generator=g)
    return {
        "info_nce": (lambda p, q: info_nce(p, q, 0.05), a, b),
        "mil_nce": (lambda p, q: mil_nce(p, q, 0.07), bags, b),
        "masked_info_nce": (lambda p, q: masked_info_nce(p, q, valid, 0.1), a, b),
        "memory_nce": (lambda p: _memory_nce(p, bank, rows, neg, torch.tensor(0.07), valid), a),
        "positive_nce": (lambda p: _positive_nce(p, bank, pos, neg, torch.tensor(0.07), valid), a),
        "mmd": (mmd, x, y),
        "coral": (coral, x, y),
        "mean_coral": (mean_coral, x, y),
        "dino": (lambda s, t: dino_distill(s, t, torch.zeros(50), 0.1, 0.04), *logits),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_loss_and_gradients_are_float32_under_bf16_autocast(name):
    fn, *inputs = _cases()[name]
    want, want_grads = _value_and_grad(fn, *inputs)
    got, got_grads = _value_and_grad(fn, *inputs, autocast=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g_got, g_want in zip(got_grads, want_grads):
        torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)


def test_mmd_of_a_sample_with_itself_is_zero_under_autocast():
    x = torch.randn(32, 8192) / 8
    with _bf16():
        assert float(mmd(x, x)) == 0.0
        assert float(mmd(x.bfloat16(), x.bfloat16())) == 0.0  # bf16 inputs: same distances


def test_autocast_would_have_changed_the_similarities():
    """The check above can fail: the same product under autocast, undecorated, is bfloat16."""
    a, b = torch.randn(8, 32), torch.randn(8, 32)
    with _bf16():
        assert (a.float() @ b.float().t()).dtype == torch.bfloat16


def test_avid_memory_bank_is_float32_under_autocast():
    from avssl.objectives.contrastive import AVContrastive
    from tests.objectives.batches import make_batch

    torch.manual_seed(0)
    model = AVContrastive(size="tiny", depth=1, proj_dim=16, memory_bank=True, bank_negatives=2)
    model.train()
    with _bf16():
        model.compute_losses(make_batch())
    assert {m: b.dtype for m, b in model.bank.items()} == {
        "audio": torch.float32,
        "video": torch.float32,
    }
