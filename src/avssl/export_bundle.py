"""The encoder bundle in memory and on disk: ``EncoderBundle``, the bundle's format version and
file names, its config check, and reading a bundle folder back into frozen encoders.

The bundle layout (``config.json`` and the weight files) is described in :mod:`avssl.export`,
which re-exports everything here; :mod:`avssl.export_ckpt` writes bundles. Reading a bundle
imports torch, safetensors and ``avssl.models`` only (no Lightning), and unpickles nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avssl.cli import UserError

FORMAT = "avssl-encoder-bundle"
FORMAT_VERSION = 2  # the newest this avssl reads; 2: a head's weights may lie in another's file
FORMAT_VERSION_PLAIN = 1  # written where every file holds its own weights (older avssl reads it)
MODALITIES = ("audio", "video")
CONFIG_FILE = "config.json"


def weights_file(modality: str) -> str:
    """File name of one modality's weights inside a bundle."""
    return f"{modality}_encoder.safetensors"


def head_file(modality: str, direction: str = "a2v") -> str:
    """File name of one modality's projection-head weights inside a bundle (``direction``
    "v2a": the video -> audio space's, where the bundle has one)."""
    from avssl.heads import head_key

    return f"{head_key(modality, direction)}.safetensors"


def _embed_dim(enc: Any) -> int | None:
    return None if enc is None else int(enc.embed_dim)


@dataclass
class EncoderBundle:
    """Frozen encoders with the settings needed to feed them.

    Attributes:
        audio: audio encoder (eval mode, no gradients) or None when the bundle has none.
        video: video encoder (eval mode, no gradients) or None.
        config: the bundle's ``config.json`` content.
        path: where it was loaded from (a bundle folder or a checkpoint), or None.
        heads: ``{"audio": head, "video": head}`` mapping clip embeddings into the shared space
            the objective's audio-video term trained (eval mode), or None (see ``project``).
        heads_v2a: the same for the video -> audio direction where the objective compares it
            in another space (CrissCross: a predictor on the query side), else None.
    """

    audio: nn.Module | None
    video: nn.Module | None
    config: dict
    path: str | None = None
    heads: dict[str, nn.Module] | None = None
    heads_v2a: dict[str, nn.Module] | None = None

    @property
    def preprocessing(self) -> dict:
        """Frames, fps/stride, crop, video mean/std and ``"fbank"`` (``AVDataModule`` layout)."""
        return self.config["preprocessing"]

    @property
    def provenance(self) -> dict:
        """Objective, recipe, step, epoch, versions and which encoder (student/teacher)."""
        return self.config.get("provenance", {})

    @property
    def embed_dim(self) -> dict[str, int | None]:
        """Embedding size D per modality (None where the bundle has no such encoder)."""
        return {m: _embed_dim(e) for m, e in self.encoders().items()}

    @property
    def shared_space(self) -> str | None:
        """The objective term whose space the heads project into, or None without heads."""
        return None if self.heads is None else str(self.config["heads"].get("space", "shared"))

    def encoders(self) -> dict[str, nn.Module | None]:
        """``{"audio": encoder | None, "video": encoder | None}``."""
        return {"audio": self.audio, "video": self.video}

    def no_heads(self) -> UserError:
        """The error for asking a bundle without heads for the shared space."""
        return UserError(
            f"encoder bundle {self.path} has no projection heads: its objective trained no "
            "shared audio-video space (or it was exported before bundles held heads)"
        )

    def project(self, modality: str, x: torch.Tensor, direction: str = "a2v") -> torch.Tensor:
        """Clip embeddings ``[..., D]`` of ``modality`` -> the shared audio-video space
        ``[..., P]`` (the bundle's projection heads). ``direction`` "v2a" picks the space video
        queries are compared with audio in, where the bundle has one (``heads_v2a``); else the
        one space serves both directions.

        Raises:
            UserError: the bundle has no heads (its objective trained no shared space), or
                ``direction`` is neither "a2v" nor "v2a".
        """
        if direction not in ("a2v", "v2a"):
            raise UserError(f"direction must be 'a2v' or 'v2a', got {direction!r}")
        if self.heads is None:
            raise self.no_heads()
        heads = self.heads_v2a if direction == "v2a" and self.heads_v2a else self.heads
        head = heads[modality]
        p = next(head.parameters())
        with torch.inference_mode():
            flat = x.reshape(-1, x.shape[-1]).to(p.device, p.dtype)
            return head(flat).reshape(*x.shape[:-1], -1)

    def to(self, device: torch.device | str) -> EncoderBundle:
        """Moves the encoders (and heads) to ``device`` in place and returns the bundle."""
        heads = [*(self.heads or {}).values(), *(self.heads_v2a or {}).values()]
        for mod in [*self.encoders().values(), *heads]:
            if mod is not None:
                mod.to(device)
        return self

    def __repr__(self) -> str:
        prov = self.provenance
        parts = [f"{m}=D{d}" for m, d in self.embed_dim.items() if d is not None]
        which = prov.get("encoder", {}).get("which", "?")
        heads = "" if self.heads is None else f", heads=P{self.config['heads'].get('dim')}"
        heads += "" if self.heads_v2a is None else " (+v2a)"
        return (
            f"EncoderBundle({', '.join(parts)}, objective={prov.get('objective')}, "
            f"which={which}, step={prov.get('step')}{heads}, path={self.path})"
        )


def assemble(config: dict, state_dicts: dict[str, dict[str, torch.Tensor]], path: Any = None):
    """Rebuilds encoders from their configs and weights (torch + avssl.models only).

    Args:
        config: bundle config (``config.json`` content).
        state_dicts: modality -> weights for each modality whose config is not None, and
            ``"<modality>_head"`` -> head weights when the config lists heads.
        path: source, for messages and ``EncoderBundle.path``.

    Returns:
        An ``EncoderBundle`` with frozen encoders in eval mode.
    """
    from avssl.models import build_encoder

    encoders: dict[str, nn.Module | None] = {}
    for modality in MODALITIES:
        enc_cfg = config.get(modality)
        if enc_cfg is None:
            encoders[modality] = None
            continue
        try:
            enc = build_encoder(dict(enc_cfg))
            enc.load_state_dict(state_dicts[modality], strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
            first = " ".join(lines[:2]) if lines else type(err).__name__  # "Error(s) in ...:"
            raise UserError(f"{path}: cannot rebuild the {modality} encoder: {first}") from err
        enc.eval().requires_grad_(False)
        encoders[modality] = enc
    path_str = None if path is None else str(path)
    from avssl.heads import assemble_heads

    heads = assemble_heads(config, state_dicts, path)
    v2a = assemble_heads(config, state_dicts, path, "v2a")
    return EncoderBundle(encoders["audio"], encoders["video"], config, path_str, heads, v2a)


def check_config(config: Any, path: Path) -> dict:
    """Validates a bundle config: right format, a version this avssl can read, encoders."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path}: not an avssl encoder bundle (config.json format != {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise UserError(f"{path}: invalid bundle format_version {version!r}")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{path}: bundle format_version {version} is newer than this avssl reads "
            f"({FORMAT_VERSION}); upgrade avssl to load it"
        )
    if all(config.get(m) is None for m in MODALITIES):
        raise UserError(f"{path}: bundle has neither an audio nor a video encoder")
    if not isinstance(config.get("preprocessing"), dict):
        raise UserError(f"{path}: bundle config.json has no 'preprocessing' section")
    if config.get("heads") is not None:
        from avssl.heads import check_heads_config

        check_heads_config(config, path)
    return config


def _load_bundle_dir(folder: Path) -> EncoderBundle:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from avssl.heads import DIRECTIONS, head_entry, head_key, leading_layers, stored_in

    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        from avssl.checkpoint_read import run_checkpoint_in

        found = run_checkpoint_in(folder)  # a run folder: name its checkpoint
        hint = "" if found is None else f"; a run folder: load or export its checkpoint {found}"
        raise UserError(f"{folder}: not an encoder bundle (no {CONFIG_FILE}){hint}")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{cfg_path}: not valid JSON ({err})") from err
    check_config(config, folder)
    files = {m: weights_file(m) for m in MODALITIES if config.get(m) is not None}
    heads = [(m, d) for d in DIRECTIONS if head_entry(config, d) is not None for m in MODALITIES]
    for m, d in heads:
        if stored_in(config, m, d) is None:
            files[head_key(m, d)] = head_file(m, d)
    state_dicts = {}
    for name, file in files.items():
        wpath = folder / file
        if not wpath.is_file():
            modality, _, kind = name.partition("_")  # "", "head" or "head_v2a"
            what = {"head": "head", "head_v2a": "v2a head"}.get(kind, "encoder")
            raise UserError(f"{wpath}: missing (config.json lists a {modality} {what})")
        try:
            state_dicts[name] = load_file(str(wpath), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"{wpath}: not a readable safetensors file ({err})") from err
    for m, d in heads:  # weights stored as another head's first layers (avssl.heads)
        full = stored_in(config, m, d)
        if full is not None:
            state_dicts[head_key(m, d)] = leading_layers(
                state_dicts[full], len(head_entry(config, d)[m])
            )
    return assemble(config, state_dicts, folder)
