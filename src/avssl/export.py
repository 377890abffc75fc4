"""Frozen encoder bundles: ``avssl export`` (checkpoint -> bundle) and ``avssl.load_encoder``.

A bundle is a folder (DESIGN section 3) holding ``audio_encoder.safetensors``,
``video_encoder.safetensors`` (either may be absent) and ``config.json``, and, when the objective
trained a shared audio-video space, ``audio_head.safetensors`` + ``video_head.safetensors``::

    {"format": "avssl-encoder-bundle", "format_version": 1 (2 with "weights_in", below),
     "audio": encoder config | null, "video": encoder config | null,
     "preprocessing": AVDataModule.preprocessing() layout: frames, fps/stride, crop, video
                      mean/std, "fbank": settings + stats (see avssl.export_preproc),
     "provenance": {"objective", "recipe", "step", "epoch", "avssl_version",
                    "encoder": {"which", "note"}, ...},
     "heads": {"audio": layer list, "video": layer list, "space": term, "dim": P,  (optional;
               "v2a": the same layout}  see avssl.heads: clip embedding [D] -> shared space
                                        [P]; "v2a" (optional): the video -> audio direction's
                                        space where it differs, <modality>_head_v2a.safetensors;
                                        "weights_in": {modality: head key} (format_version 2):
                                        that head's weights are the first layers of the named
                                        head's file, avssl.heads.share_head_weights)}

Nothing in a bundle or a checkpoint is unpickled: checkpoints are read with
``torch.load(weights_only=True)`` and weights with safetensors. Loading a bundle imports torch,
safetensors and ``avssl.models`` only (no Lightning); loading a *training checkpoint* rebuilds the
objective, so it needs Lightning.
"""

from __future__ import annotations

import argparse
import json
import sys
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

__all__ = ["EncoderBundle", "load_encoder", "embed", "export_checkpoint", "main"]


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


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> EncoderBundle:
    """Loads frozen encoders from a bundle folder (or its config.json) or a training checkpoint.

    A bundle needs only torch and safetensors; a checkpoint (read with ``weights_only=True``)
    rebuilds its objective to pick the encoder the paper evaluates, which imports Lightning.

    Args:
        path: bundle folder, its ``config.json``, or a ``.ckpt`` written by ``avssl fit``.
        device: where to put the encoders.

    Returns:
        ``EncoderBundle`` with ``.audio``/``.video`` in eval mode, ``.config``,
        ``.preprocessing`` and ``.embed_dim``.

    Raises:
        UserError: missing path, not a bundle/avssl checkpoint, newer format, or a file that
            would need pickle to load.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{p}: no such encoder bundle or checkpoint")
    if p.is_file() and p.name == CONFIG_FILE:
        p = p.parent
    if p.is_dir():
        bundle = _load_bundle_dir(p)
    else:
        from avssl.checkpoint_read import read_checkpoint
        from avssl.export_ckpt import bundle_from_checkpoint

        config, state_dicts = bundle_from_checkpoint(read_checkpoint(p), p)
        bundle = assemble(config, state_dicts, p)
    return bundle.to(device)


def embed(
    path_or_bundle: Any, media_file: str | Path, num_clips: int = 1, space: str = "backbone"
) -> dict:
    """Embeds a raw video or audio file with a bundle's own preprocessing; ``space="shared"``
    projects each clip into the bundle's shared audio-video space (its projection heads).

    See ``avssl.export_preproc.embed`` (this wrapper keeps ``avssl.embed`` importable lazily).
    """
    from avssl.export_preproc import embed as _embed

    bundle = path_or_bundle
    if not isinstance(bundle, EncoderBundle):
        bundle = load_encoder(path_or_bundle)
    return _embed(bundle, media_file, num_clips=num_clips, space=space)


def export_checkpoint(
    ckpt_path: str | Path, out: str | Path, onnx: bool = False, random_init: bool = False
) -> list[Path]:
    """Exports the encoders of an avssl training checkpoint to a bundle folder.

    Args:
        ckpt_path: Lightning checkpoint written by ``avssl fit`` / ``avssl pretrain``.
        out: bundle folder to create (files in it are overwritten).
        onnx: also write ``<modality>_encoder.onnx`` (dynamic batch), checked with onnxruntime.
        random_init: export the checkpoint's architecture at random initialisation instead of
            its weights (the baseline of a learning check).

    Returns:
        Paths written.
    """
    return _export(Path(ckpt_path).expanduser(), Path(out).expanduser(), onnx, random_init)[0]


def _export(
    ckpt_path: Path, out: Path, onnx: bool, random_init: bool = False
) -> tuple[list[Path], EncoderBundle]:
    from avssl.checkpoint_read import read_checkpoint
    from avssl.export_ckpt import bundle_from_checkpoint, write_bundle
    from avssl.heads import head_key

    ckpt = read_checkpoint(ckpt_path)
    config, state_dicts = bundle_from_checkpoint(ckpt, ckpt_path, random_init)
    written = write_bundle(out, config, state_dicts)
    bundle = load_encoder(out)  # round trip: proves build_encoder(config) + weights reload
    modules = {m: e for m, e in bundle.encoders().items() if e is not None}
    for direction, heads in (("a2v", bundle.heads), ("v2a", bundle.heads_v2a)):
        modules.update({head_key(m, direction): h for m, h in (heads or {}).items()})
    for name, mod in modules.items():
        reloaded = mod.state_dict()
        for key, value in state_dicts[name].items():
            if not torch.equal(reloaded[key], value):
                raise RuntimeError(f"{out}: {name} weight {key} changed on reload")
    if onnx:
        from avssl.export_onnx import export_onnx

        written += export_onnx(bundle, out)
    return written, bundle


def _describe(path: Path, bundle: EncoderBundle | None = None) -> str:
    n = path.stat().st_size
    size = f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} kB"
    key = path.name.split(".")[0]  # "audio_head_v2a" of .safetensors, .onnx and .onnx.data
    if bundle is not None and bundle.heads is not None and "_head" in key:
        heads = bundle.config["heads"]
        if key.endswith("_head_v2a") and heads.get("v2a") is not None:
            heads = heads["v2a"]
        # only a safetensors file may hold another head's weights (avssl.heads.stored_in)
        also = _also_holds(bundle.config, key) if path.suffix == ".safetensors" else ""
        return (
            f"{path} (projection into the {heads['space']} space, P={heads['dim']}, {size}{also})"
        )
    if bundle is None or not path.name.endswith("_encoder.safetensors"):
        return f"{path} ({size})"
    modality = path.name.split("_")[0]
    cfg = bundle.config[modality]
    arch = f"{cfg.get('modality')} ViT-{cfg.get('size', '?')} depth {cfg.get('depth', '?')}"
    return f"{path} ({modality} encoder: {arch}, D={bundle.embed_dim[modality]}, {size})"


def _also_holds(config: dict, key: str) -> str:
    """ "; also the <direction> <modality> head (its first N layers)" for every head whose
    weights a head file holds (avssl.heads.stored_in), else ""."""
    from avssl.heads import DIRECTIONS, head_entry, stored_in

    out = ""
    for d in DIRECTIONS:
        for m in MODALITIES:
            if stored_in(config, m, d) == key:
                out += f"; also the {d} {m} head (its first {len(head_entry(config, d)[m])} layers)"
    return out


def _previous_bundle(out: Path) -> str:
    """What the bundle already in ``out`` was exported from ("" when there is none)."""
    try:
        prov = json.loads((out / "config.json").read_text()).get("provenance") or {}
    except (OSError, ValueError):
        return ""
    return f"{prov.get('checkpoint', '?')}, recipe {prov.get('recipe')}, step {prov.get('step')}"


def main(argv: list[str] | None = None) -> int:
    """``avssl export --ckpt C --out O [--onnx]``: writes a frozen encoder bundle."""
    parser = argparse.ArgumentParser(
        prog="avssl export", description="Export the frozen encoders of an avssl checkpoint."
    )
    parser.add_argument(
        "--ckpt",
        default="",
        help="training checkpoint (e.g. runs/<recipe>/<run id>/checkpoints/last.ckpt)",
    )
    parser.add_argument("--out", default="", help="bundle folder to write (e.g. encoders/mavil)")
    parser.add_argument("--onnx", action="store_true", help="also export ONNX (dynamic batch)")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="export the checkpoint's architecture at random initialisation (a baseline)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.ckpt:
        raise UserError(
            "--ckpt is required (make export CKPT=runs/<recipe>/<run id>/checkpoints/last.ckpt "
            "OUT=..., the checkpoint avssl pretrain names when it ends)"
        )
    if not args.out:
        raise UserError("--out is required (make export CKPT=... OUT=encoders/<name>)")
    previous = _previous_bundle(Path(args.out).expanduser())
    written, bundle = _export(
        Path(args.ckpt).expanduser(), Path(args.out).expanduser(), args.onnx, args.random_init
    )
    if previous:
        print(f"[export] replaced the bundle that was in {args.out} ({previous})")
    prov = bundle.provenance
    enc = prov.get("encoder", {})
    print(
        f"[export] {prov.get('objective')} (recipe {prov.get('recipe')}, step {prov.get('step')}, "
        f"epoch {prov.get('epoch')}) from {args.ckpt}: exported the {enc.get('which')} encoders"
        + (f": {enc.get('note')}" if enc.get("note") else "")
    )
    for path in written:
        print(f"[export] wrote {_describe(path, bundle)}")
    print(
        "[export] use it: import avssl; enc = avssl.load_encoder("
        f"{str(args.out)!r}); emb = avssl.embed(enc, 'my_clip.mp4')"
    )
    print(
        f"[export] evaluate: make eval EVAL=<protocol> ENCODER={args.out} DATA=<prepared dataset>,"
        " e.g. EVAL=ucf101_linear DATA=shards/ucf101 (make eval without EVAL lists the protocols)"
    )
    return 0
