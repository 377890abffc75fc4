"""No weight decay on norms, biases, embeddings and learned tokens (DESIGN section 3), checked on
the objective of every recipe at debug size: the matrices in the no-decay group are exactly the
learned tokens and embeddings, and every linear / patch-embedding weight is decayed."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from avssl.objectives.base import param_groups
from tests.test_recipes import NAMES, RECIPES

# learned tokens and embeddings (name parts); pos embeds are fixed sin-cos buffers in avssl
KINDS = ("pos_embed", "cls_token", "mask_token", "modality_embed")
# what each recipe's objective holds of them: decoders' mask tokens, fusion / joint-decoder
# modality embeddings
EXPECTED = {
    "mavil": {"mask_token", "modality_embed"},
    "mavil_stage2": {"mask_token", "modality_embed"},
    "xkd": {"mask_token"},
    "xkd_shared": {"mask_token"},
}


def _init_args(recipe: str) -> tuple[type, dict[str, Any]]:
    """The recipe's objective class and constructor arguments, with debug.yaml's sizes."""
    cfg, debug = (yaml.safe_load((RECIPES / f"{n}.yaml").read_text()) for n in (recipe, "debug"))
    path = cfg["model"]["class_path"]  # (_base.yaml sets no model)
    args = {**(cfg["model"].get("init_args") or {}), **debug["model"]["init_args"]}
    for k in [k for k, v in args.items() if k.endswith("_ckpt") and not v]:
        args[k] = "not-there.ckpt"  # a run to start from: not loaded here (a frozen teacher)
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    accepted = {p for c in cls.__mro__ if "__init__" in vars(c)
                for p in inspect.signature(c.__init__).parameters}  # fmt: skip
    return cls, {k: v for k, v in args.items() if k in accepted}


def _kind(name: str) -> str | None:
    return next((k for k in KINDS if k in name), None)


@pytest.mark.parametrize("recipe", NAMES)
def test_no_decay_matrices_are_the_learned_tokens_and_embeddings(recipe):
    cls, args = _init_args(recipe)
    torch.manual_seed(0)
    model = cls(**args)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    matrices = [names[id(p)] for p in no_decay["params"] if p.ndim >= 2]
    assert all(_kind(n) for n in matrices), matrices  # nothing else escapes weight decay
    assert {_kind(n) for n in matrices} == EXPECTED.get(recipe, set()), matrices
    decayed = {id(p) for p in decay["params"]}
    for n, mod in model.named_modules():  # Linear and patch-embedding weights keep decay
        if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Conv3d)) and mod.weight.requires_grad:
            assert id(mod.weight) in decayed, n
    for n, p in model.named_parameters():  # and every token / embedding is in no-decay
        if p.requires_grad and _kind(n):
            assert id(p) not in decayed, n
