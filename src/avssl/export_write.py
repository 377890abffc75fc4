"""Writes an export bundle folder: ``config.json`` and one safetensors file per encoder and per
stored projection head (read back by :func:`avssl.export.load_encoder`). Files of an earlier
export that this bundle does not have (ONNX files, heads, an absent encoder) are removed; a
folder that holds a prepared dataset or checkpoints is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from avssl.cli import UserError
from avssl.export import CONFIG_FILE, FORMAT, FORMAT_VERSION, MODALITIES, head_file, weights_file
from avssl.heads import DIRECTIONS, head_entry, head_key, share_head_weights, stored_in


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_folder(out: Path) -> None:
    """Refuses a bundle folder that is a file, or holds a prepared dataset or checkpoints."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if (out / "manifest.json").is_file() or any(out.glob("*.ckpt")):
        what = "a prepared dataset" if (out / "manifest.json").is_file() else "checkpoints"
        raise UserError(f"{out}: holds {what}; export the bundle into a folder of its own")


def _bundle_files(
    out: Path, config: dict, state_dicts: dict[str, dict]
) -> dict[str, tuple[Path, bool]]:
    """Weights name (a modality or a ``head_key``) -> (its file, whether the bundle has it).

    Removes the ONNX files of an earlier export, and raises ``config``'s format version when a
    head is stored as the first layers of another (:func:`avssl.heads.share_head_weights`).
    """
    files = {}
    for modality in MODALITIES:
        for stale in (f"{modality}_encoder.onnx", f"{modality}_encoder.onnx.data",
                      f"{modality}_head.onnx", f"{modality}_head_v2a.onnx"):  # fmt: skip
            (out / stale).unlink(missing_ok=True)  # rewritten only by --onnx
        files[modality] = (out / weights_file(modality), config.get(modality) is not None)
    if share_head_weights(config, state_dicts):  # a head stored as another's first layers
        config["format_version"] = FORMAT_VERSION
        if isinstance(config.get("provenance"), dict):
            config["provenance"]["format_version"] = FORMAT_VERSION
    for modality in MODALITIES:
        for direction in DIRECTIONS:
            wanted = head_entry(config, direction) is not None
            wanted = wanted and stored_in(config, modality, direction) is None
            files[head_key(modality, direction)] = (out / head_file(modality, direction), wanted)
    return files


def write_bundle(out: Path, config: dict, state_dicts: dict[str, dict]) -> list[Path]:
    """Writes ``config.json`` and one safetensors file per encoder; removes stale files."""
    from safetensors.torch import save_file

    _check_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (target, wanted) in _bundle_files(out, config, state_dicts).items():
        if not wanted:
            target.unlink(missing_ok=True)
            continue
        # clone: safetensors refuses tensors sharing memory (tied weights)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dicts[name].items()}
        tmp = target.with_suffix(".tmp")
        meta = {"format": "pt", "avssl_format": FORMAT, "modality": name.split("_")[0]}
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(target)
        target.chmod(0o666 & ~_umask())  # safetensors writes 0600: others could not load it
        written.append(target)
    cfg_path = out / CONFIG_FILE
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
    written.append(cfg_path)
    return written
