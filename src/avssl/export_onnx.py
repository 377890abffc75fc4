"""ONNX export of bundle encoders (``avssl export --onnx``), checked with onnxruntime.

Each encoder becomes ``<modality>_encoder.onnx``: input ``audio`` ``[B, 1, Ta, F]`` or ``video``
``[B, C, T, H, W]`` (the bundle's preprocessing sizes, batch axis dynamic), output
``embedding`` ``[B, D]`` (mean-pooled). The graph comes from ``torch.export`` (the dynamo
exporter, which lowers ``scaled_dot_product_attention``); the TorchScript exporter is a fallback.
A bundle with projection heads (:mod:`avssl.heads`) also gets ``<modality>_head.onnx``:
input ``embedding`` ``[B, D]`` (the encoder's output), output ``shared`` ``[B, P]``, and
``<modality>_head_v2a.onnx`` where it has heads for the video -> audio direction's space.
Every file is run with onnxruntime at two batch sizes and compared with PyTorch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avssl.cli import UserError

TOLERANCE = 1e-4
CHECK_BATCHES = (1, 3)


def example_input(modality: str, bundle: Any, batch: int, seed: int = 0) -> torch.Tensor:
    """Random input of the bundle's preprocessing size for one modality."""
    prep = bundle.preprocessing
    enc_cfg = bundle.config[modality]
    gen = torch.Generator().manual_seed(seed)
    shape: tuple[int, ...]
    if modality == "audio":
        fb = prep["fbank"]
        shape = (batch, int(enc_cfg.get("in_chans", 1)), fb["target_frames"], fb["num_mel_bins"])
    else:
        crop = int(prep["crop_size"])
        shape = (batch, int(enc_cfg.get("in_chans", 3)), int(prep["num_frames"]), crop, crop)
    return torch.randn(shape, generator=gen)


def _export_one(
    enc: nn.Module, x: torch.Tensor, path: Path, modality: str, out_name: str = "embedding"
) -> str:
    """Writes one ONNX file (input named ``modality``, output ``out_name``); returns the
    exporter used ("dynamo" or "torchscript")."""
    # torch.onnx warns once per missing torchvision op at WARNING level: not our concern
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(
            enc, (x,), str(path), input_names=[modality], output_names=[out_name],
            dynamo=True, dynamic_shapes=({0: batch},), verbose=False, optimize=True,
            external_data=False,  # the weights inside the .onnx file, not also in a .onnx.data
        )  # fmt: skip
        return "dynamo"
    except Exception as err:  # noqa: BLE001 - any exporter failure falls back, then is checked
        print(f"[export] dynamo ONNX export of {modality} failed ({type(err).__name__}); "
              "using the TorchScript exporter")  # fmt: skip
    torch.onnx.export(
        enc, (x,), str(path), input_names=[modality], output_names=[out_name],
        dynamo=False, dynamic_axes={modality: {0: "batch"}, out_name: {0: "batch"}},
        opset_version=17,
    )  # fmt: skip
    return "torchscript"


def _annotate(path: Path, modality: str, bundle: Any) -> None:
    """Stores where the graph came from in the ONNX metadata."""
    import onnx

    model = onnx.load(str(path))
    prov = bundle.provenance
    meta = {
        "avssl_modality": modality,
        "avssl_objective": str(prov.get("objective")),
        "avssl_encoder": str(prov.get("encoder", {}).get("which")),
        "avssl_step": str(prov.get("step")),
        "avssl_preprocessing": "see config.json of the bundle",
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def check_onnx(path: Path, enc: nn.Module, modality: str, bundle: Any) -> float:
    """Runs the ONNX file with onnxruntime at two batch sizes; returns the max abs difference.

    Raises:
        RuntimeError: the outputs differ from PyTorch by more than ``TOLERANCE``.
    """
    return _check(path, enc, lambda b: example_input(modality, bundle, b, seed=b), modality)


def _check(path: Path, mod: nn.Module, make, in_name: str, out_name: str = "embedding") -> float:
    """onnxruntime against PyTorch on ``make(batch)`` for each checked batch size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in CHECK_BATCHES:
        x = make(batch)
        with torch.inference_mode():
            ref = mod(x)  # [B, D]
        (out,) = session.run([out_name], {in_name: x.numpy()})
        if tuple(out.shape) != tuple(ref.shape):
            raise RuntimeError(f"{path}: ONNX output {out.shape} != PyTorch {tuple(ref.shape)}")
        worst = max(worst, float((torch.from_numpy(out) - ref).abs().max()))
    if worst > TOLERANCE:
        raise RuntimeError(f"{path}: ONNX differs from PyTorch by {worst:.3g} > {TOLERANCE}")
    return worst


def export_onnx(bundle: Any, out: Path) -> list[Path]:
    """Writes ``<modality>_encoder.onnx`` for each encoder of ``bundle`` and validates it.

    Args:
        bundle: an ``EncoderBundle`` (encoders on CPU, eval mode).
        out: bundle folder.

    Returns:
        The ONNX files written.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise UserError(
            f"--onnx needs onnx and onnxruntime: pip install 'avssl[onnx]' ({err})"
        ) from None
    written = []
    for modality, enc in bundle.encoders().items():
        target = out / f"{modality}_encoder.onnx"
        if enc is None:
            target.unlink(missing_ok=True)
            continue
        enc = enc.cpu().eval()
        exporter = _export_one(enc, example_input(modality, bundle, 2), target, modality)
        _annotate(target, modality, bundle)
        diff = check_onnx(target, enc, modality, bundle)
        print(
            f"[export] {target.name}: {exporter} exporter, dynamic batch; onnxruntime matches "
            f"PyTorch at batch {CHECK_BATCHES} (max abs diff {diff:.2e} <= {TOLERANCE:g})"
        )
        written.append(target)
    for modality, head in (bundle.heads or {}).items():
        written.append(_export_head(head.cpu().eval(), modality, bundle, out))
    for modality, head in (bundle.heads_v2a or {}).items():
        written.append(_export_head(head.cpu().eval(), modality, bundle, out, "_v2a"))
    return written


def _export_head(head: nn.Module, modality: str, bundle: Any, out: Path, tag: str = "") -> Path:
    """``<modality>_head<tag>.onnx``: clip embedding ``[B, D]`` -> shared space ``[B, P]``."""
    target = out / f"{modality}_head{tag}.onnx"
    dim = int(bundle.embed_dim[modality])

    def make(batch: int) -> torch.Tensor:
        return torch.randn(batch, dim, generator=torch.Generator().manual_seed(batch))

    exporter = _export_one(head, make(2), target, "embedding", out_name="shared")
    _annotate(target, f"{modality} head{tag.replace('_', ' ')}", bundle)
    diff = _check(target, head, make, "embedding", "shared")
    print(f"[export] {target.name}: {exporter} exporter, dynamic batch; onnxruntime matches "
          f"PyTorch (max abs diff {diff:.2e} <= {TOLERANCE:g})")  # fmt: skip
    return target
