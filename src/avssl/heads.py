"""Projection heads in a bundle: the shared audio-video space a contrastive term trained.

Objectives that align audio with video do so after projection heads: VATT's and AVID's NCE
(Akbari et al. 2021, https://arxiv.org/abs/2104.11178; Morgado et al. 2021,
https://arxiv.org/abs/2004.12943) project each modality's mean-pooled encoder output, MAViL's
inter-modal InfoNCE (Huang et al. 2023, https://arxiv.org/abs/2212.08071) one linear layer per
modality on the pooled encoder output. Cross-modal retrieval is meaningful in that space, not
between the backbone outputs, so a bundle may carry the two heads.

Where an objective compares the two directions in different spaces (CrissCross's cross-modal
SimSiam, Sarkar & Etemad 2023, https://arxiv.org/abs/2111.05329: ``-cos(p_a, z_v)`` and
``-cos(p_v, z_a)``, a predictor on the query side only), ``"heads"`` holds the audio -> video
space and ``"heads"["v2a"]`` the video -> audio one, with the same layout and weights
``<modality>_head_v2a.safetensors``. A head whose layers and weights are the first layers of
another head's (CrissCross's projector alone) has no file of its own: its space entry's
``"weights_in"`` names the file (:func:`share_head_weights`; bundle format_version 2).

A head is stored as a plain layer list (``config.json`` ``"heads"``) plus its weights
(``<modality>_head.safetensors``), so that loading needs torch only, not the objective's code::

    [{"layer": "linear", "in": 768, "out": 512, "bias": true},
     {"layer": "batchnorm", "features": 512, "affine": true, "eps": 1e-05},
     {"layer": "relu"}, {"layer": "gelu", "approximate": "none"}]

:func:`describe_head` turns a module into that list (its leaf layers in registration order) and
checks that the rebuilt layer sequence computes what the module computes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from avssl.cli import UserError

MODALITIES = ("audio", "video")

LAYERS = ("linear", "batchnorm", "relu", "gelu")


def _leaf_spec(mod: nn.Module) -> dict[str, Any]:
    if isinstance(mod, nn.Linear):
        return {
            "layer": "linear",
            "in": mod.in_features,
            "out": mod.out_features,
            "bias": mod.bias is not None,
        }
    if isinstance(mod, nn.BatchNorm1d):
        if not mod.track_running_stats:
            raise ValueError("a batch norm without running statistics cannot run on one clip")
        return {"layer": "batchnorm", "features": mod.num_features, "affine": mod.affine,
                "eps": float(mod.eps)}  # fmt: skip
    if isinstance(mod, nn.ReLU):
        return {"layer": "relu"}
    if isinstance(mod, nn.GELU):
        return {"layer": "gelu", "approximate": mod.approximate}
    raise ValueError(f"{type(mod).__name__} is not a layer a bundle head can hold ({LAYERS})")


def build_head(spec: list[dict[str, Any]]) -> nn.Sequential:
    """The ``nn.Sequential`` a layer list describes (weights uninitialised)."""
    if not isinstance(spec, list) or not spec:
        raise ValueError("a head is a non-empty list of layers")
    layers: list[nn.Module] = []
    for entry in spec:
        kind = entry.get("layer") if isinstance(entry, dict) else None
        if kind == "linear":
            layers.append(nn.Linear(int(entry["in"]), int(entry["out"]), bool(entry["bias"])))
        elif kind == "batchnorm":
            feats, affine = int(entry["features"]), bool(entry["affine"])
            layers.append(nn.BatchNorm1d(feats, eps=float(entry["eps"]), affine=affine))
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "gelu":
            layers.append(nn.GELU(approximate=str(entry.get("approximate", "none"))))
        else:
            raise ValueError(f"unknown head layer {entry!r} (known: {', '.join(LAYERS)})")
    return nn.Sequential(*layers)


def head_dims(spec: list[dict[str, Any]]) -> tuple[int, int]:
    """(input width, output width) of a head's layer list."""
    linear = [e for e in spec if e.get("layer") == "linear"]
    if not linear:
        raise ValueError("a head needs at least one linear layer")
    return int(linear[0]["in"]), int(linear[-1]["out"])


def describe_head(module: nn.Module) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """A head module as (layer list, weights of the equivalent ``nn.Sequential``).

    Raises:
        ValueError: the module holds a layer a bundle head cannot hold, or its forward is not
            its leaf layers applied in registration order (checked on random input in eval mode).
    """
    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    spec = [_leaf_spec(m) for m in leaves]
    flat = build_head(spec)
    state: dict[str, torch.Tensor] = {}
    for i, leaf in enumerate(leaves):
        state.update({f"{i}.{k}": v.detach().cpu().clone() for k, v in leaf.state_dict().items()})
    flat.load_state_dict(state, strict=True)
    width = head_dims(spec)[0]
    x = torch.randn(4, width, generator=torch.Generator().manual_seed(0))
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            p = next(module.parameters())
            want = module(x.to(p.device, p.dtype)).float().cpu()
            got = flat.eval()(x)
    finally:
        module.train(was_training)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise ValueError(f"{type(module).__name__} is not its layers in order; cannot store it")
    return spec, state


DIRECTIONS = ("a2v", "v2a")


def head_entry(config: dict, direction: str = "a2v") -> Any:
    """The ``"heads"`` entry of a direction's space: ``config["heads"]`` for audio -> video,
    its ``"v2a"`` entry for video -> audio (None where the bundle has none)."""
    heads = config.get("heads")
    if direction == "a2v" or not isinstance(heads, dict):
        return heads
    return heads.get("v2a")


def head_key(modality: str, direction: str = "a2v") -> str:
    """Name of a head's weights in a bundle (``<name>.safetensors``)."""
    return f"{modality}_head" + ("" if direction == "a2v" else f"_{direction}")


def check_heads_config(config: dict, path: Any) -> None:
    """Checks a bundle config's ``"heads"`` (and its ``"v2a"`` entry where there is one): a
    layer list per modality, from each encoder's D to one common P, and where a head's weights
    lie in another head's file, a head that can hold them (raises ``UserError``)."""
    _check_space(config, config["heads"], path, "")
    if isinstance(config["heads"], dict) and config["heads"].get("v2a") is not None:
        _check_space(config, config["heads"]["v2a"], path, "v2a ")
    check_weights_in(config, path)


def _check_space(config: dict, heads: Any, path: Any, name: str) -> None:
    """One space's heads (``name``: "" or "v2a "), as :func:`check_heads_config` says."""
    if not isinstance(heads, dict) or not all(isinstance(heads.get(m), list) for m in MODALITIES):
        key = "heads" + (".v2a" if name else "")
        raise UserError(f"{path}: config.json '{key}' needs an audio and a video layer list")
    dims = {}
    for modality in MODALITIES:
        enc_cfg = config.get(modality)
        if enc_cfg is None:
            raise UserError(
                f"{path}: config.json lists a {modality} head but no {modality} encoder"
            )
        try:
            dims[modality] = head_dims(heads[modality])
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            bad = f"invalid {name}{modality} head in config.json ({err})"
            raise UserError(f"{path}: {bad}") from None
        if dims[modality][0] != enc_cfg.get("embed_dim"):
            raise UserError(
                f"{path}: the {name}{modality} head takes D={dims[modality][0]} but the "
                f"encoder gives D={enc_cfg.get('embed_dim')}"
            )
    if dims["audio"][1] != dims["video"][1]:
        raise UserError(
            f"{path}: the {name}heads project into different widths ({dims['audio'][1]} audio, "
            f"{dims['video'][1]} video)"
        )


def assemble_heads(
    config: dict, state_dicts: dict, path: Any, direction: str = "a2v"
) -> dict[str, nn.Module] | None:
    """``{"audio": head, "video": head}`` in eval mode from a bundle config's ``"heads"`` (or
    its ``"v2a"`` entry) and the ``head_key(modality, direction)`` weights, or None when the
    config has no such heads."""
    entry = head_entry(config, direction)
    if entry is None:
        return None
    heads: dict[str, nn.Module] = {}
    for modality in MODALITIES:
        what = modality if direction == "a2v" else f"{direction} {modality}"
        try:
            head = build_head(entry[modality])
            head.load_state_dict(state_dicts[head_key(modality, direction)], strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
            first = " ".join(lines[:2]) if lines else type(err).__name__
            raise UserError(f"{path}: cannot rebuild the {what} head: {first}") from err
        heads[modality] = head.eval().requires_grad_(False)
    return heads


# --- heads stored inside another head's file -------------------------------------------------
# CrissCross's two spaces hold each projector twice: alone (the key side of one direction) and
# followed by its predictor (the query side of the other). Where a head's layers and weights are
# the leading layers of another head's, the bundle stores them once: the space entry's
# ``"weights_in": {modality: head key}`` names the file whose first layers they are (bundle
# format_version 2; a layer's weights are ``"<index>.<name>"`` in both).


def stored_in(config: dict, modality: str, direction: str = "a2v") -> str | None:
    """The head key whose file holds this head's weights as its first layers, or None where
    the head has a file of its own (or the bundle has no such head)."""
    entry = head_entry(config, direction)
    if not isinstance(entry, dict) or not isinstance(entry.get("weights_in"), dict):
        return None
    return entry["weights_in"].get(modality)


def leading_layers(state: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The weights of the first ``n`` layers of a head's ``state``."""
    index = {k: k.split(".", 1)[0] for k in state}
    return {k: v for k, v in state.items() if index[k].isdigit() and int(index[k]) < n}


def _heads_by_key(config: dict) -> dict[str, tuple[dict, str]]:
    """``head_key`` -> (its space entry, modality) for every head a config lists."""
    out = {}
    for direction in DIRECTIONS:
        entry = head_entry(config, direction)
        if isinstance(entry, dict):
            out.update({head_key(m, direction): (entry, m) for m in MODALITIES if m in entry})
    return out


def share_head_weights(config: dict, state_dicts: dict[str, dict]) -> dict[str, str]:
    """Records in ``config`` (``"weights_in"``) every head whose layers and weights equal the
    leading layers of a longer (or, at equal length, an earlier-listed) stored head; returns
    ``{head key: key of the file holding its weights}`` (empty: every head has its own file)."""
    heads = _heads_by_key(config)
    for entry, _ in heads.values():
        entry.pop("weights_in", None)
    order = sorted(heads, key=lambda k: -len(heads[k][0][heads[k][1]]))  # stable on ties
    stored: list[str] = []
    shared: dict[str, str] = {}
    for key in order:
        entry, modality = heads[key]
        for full in stored:
            full_entry, full_modality = heads[full]
            if _begins_with(full_entry[full_modality], state_dicts[full], entry[modality],
                            state_dicts[key]):  # fmt: skip
                entry.setdefault("weights_in", {})[modality] = shared[key] = full
                break
        else:
            stored.append(key)
    return shared


def _begins_with(spec: list, state: dict, prefix_spec: list, prefix_state: dict) -> bool:
    """Whether a head (layer list, weights) begins with another head's layers and weights."""
    if spec[: len(prefix_spec)] != prefix_spec:
        return False
    lead = leading_layers(state, len(prefix_spec))
    same = lead.keys() == prefix_state.keys()
    return same and all(torch.equal(lead[k], prefix_state[k]) for k in lead)


def check_weights_in(config: dict, path: Any) -> None:
    """Checks every ``"weights_in"`` entry: a head of this bundle with a file of its own whose
    layer list begins with the referring head's (raises ``UserError``)."""
    heads = _heads_by_key(config)
    for direction in DIRECTIONS:
        entry = head_entry(config, direction)
        refs = entry.get("weights_in") if isinstance(entry, dict) else None
        if refs is None:
            continue
        name = "heads" + ("" if direction == "a2v" else f".{direction}")
        if not isinstance(refs, dict) or not set(refs) <= set(MODALITIES):
            raise UserError(f"{path}: config.json '{name}.weights_in' maps audio/video to a head")
        for modality, full in refs.items():
            what = f"{name}.weights_in.{modality}"
            if full not in heads or full == head_key(modality, direction):
                raise UserError(f"{path}: config.json '{what}' names no other head ({full!r})")
            full_entry, full_modality = heads[full]
            full_dir = "a2v" if full_entry is config["heads"] else "v2a"
            if stored_in(config, full_modality, full_dir) is not None:
                raise UserError(
                    f"{path}: config.json '{what}' names {full}, itself stored elsewhere"
                )
            spec = entry[modality]
            if full_entry[full_modality][: len(spec)] != spec:
                raise UserError(
                    f"{path}: config.json '{what}': {full}'s layers do not begin with this head's"
                )
