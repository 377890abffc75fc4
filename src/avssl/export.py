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
objective, so it needs Lightning. ``EncoderBundle``, the format constants and file names, the
config check and reading a bundle folder live in :mod:`avssl.export_bundle` (re-exported here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from avssl.cli import UserError
from avssl.export_bundle import (  # noqa: F401  (re-exported: export_ckpt and tests use them)
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    FORMAT_VERSION_PLAIN,
    MODALITIES,
    EncoderBundle,
    _embed_dim,
    _load_bundle_dir,
    assemble,
    check_config,
    head_file,
    weights_file,
)

__all__ = ["EncoderBundle", "load_encoder", "embed", "export_checkpoint", "main"]


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
