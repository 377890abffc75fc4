"""How far apart an audio-video contrastive model keeps the clips of a batch (issue 6's VATT
analysis).

An NCE between two modalities pays for any spread of one side's embeddings that the other side
does not predict, so when no audio-video correspondence is found the cheapest answer is to map
every clip to nearly the same point: the loss then sits at ln B and the encoder's pooled output
loses what told the clips apart, which a linear probe of the encoder sees. This script measures
that on one training batch of the demo's loader (``recipes/_base.yaml`` + the recipe + the demo
overlays + ``--config`` files): the mean, min and max cosine between the different clips of the
batch, for the pooled encoder outputs and the projected embeddings of each modality, and the
batch's audio-video NCE, for a checkpoint (``--ckpt``: a Lightning checkpoint or one written by
``bench/oracle_video.py``) or the objective at random initialisation (seed 0, as ``export
--random-init``). The model is evaluated in eval mode (batch norm with its running statistics,
no DropToken).

Run: ``python bench/embedding_spread.py [--ckpt runs/vatt/demo/checkpoints/last.ckpt]
[--data shards/synthetic]`` (a few seconds on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

TAG = "[embedding spread]"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="vatt", help="an AVContrastive recipe")
    p.add_argument("--ckpt", default="", help="checkpoint (default: random initialisation)")
    p.add_argument("--data", default="shards/synthetic", help="prepared shards (data_prep)")
    p.add_argument("--config", action="append", default=[], help="a config after the demo's")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.data, "manifest.json")):
        p.exit(1, f"embedding_spread.py: --data {args.data}: no prepared shards (manifest.json)\n")
    if args.ckpt and not os.path.isfile(args.ckpt):
        p.exit(1, f"embedding_spread.py: --ckpt {args.ckpt}: no such file\n")
    for path in args.config:
        if not os.path.isfile(path):
            p.exit(1, f"embedding_spread.py: --config {path}: no such file\n")
    return args


def cosine_spread(x: torch.Tensor) -> tuple[float, float, float]:
    """Mean, min and max cosine between different rows of ``x [B, D]`` (B >= 2)."""
    z = F.normalize(x.float(), dim=-1)
    sim = z @ z.T
    off = sim[~torch.eye(len(z), dtype=torch.bool)]
    return float(off.mean()), float(off.min()), float(off.max())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from avssl.data.datamodule import AVDataModule
    from avssl.demo import demo_config
    from avssl.export_ckpt import rebuild_objective
    from avssl.objectives._mavil_parts import flatten_inputs
    from avssl.objectives.contrastive import AVContrastive, pooled

    cfg = demo_config(args.recipe, args.config)
    if cfg["model"]["class_path"] != f"{AVContrastive.__module__}.{AVContrastive.__name__}":
        print(f"embedding_spread.py: {args.recipe} is not an AVContrastive recipe", file=sys.stderr)
        return 1
    if args.ckpt:  # rebuilt as `avssl export` does
        ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        model, missing = rebuild_objective(ckpt, Path(args.ckpt))
        if missing or not isinstance(model, AVContrastive):
            print(f"embedding_spread.py: {args.ckpt}: not a complete AVContrastive checkpoint",
                  file=sys.stderr)  # fmt: skip
            return 1
    else:
        torch.manual_seed(0)  # the random-init baseline of the demo (export --random-init)
        model = AVContrastive(**cfg["model"]["init_args"]).eval()
    data_args = dict(cfg["data"]["init_args"], data=args.data, num_workers=0)
    dm = AVDataModule(**data_args)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    audio, video, a_ok, v_ok = flatten_inputs(batch)
    keep = (a_ok * v_ok).bool()
    with torch.no_grad():
        pa, pv = pooled(model.audio_encoder, audio, 0.0), pooled(model.video_encoder, video, 0.0)
        za, zv = model.audio_proj(pa), model.video_proj(pv)
    pa, pv, za, zv = pa[keep], pv[keep], za[keep], zv[keep]
    name = args.ckpt or "random initialisation (seed 0)"
    print(f"{TAG} {args.recipe}, {name}: one training batch of {len(za)} clips from {args.data}")
    print(f"{TAG} cosine between different clips: mean / min / max")
    for label, x in (("pooled audio", pa), ("pooled video", pv), ("projected audio", za),
                     ("projected video", zv)):  # fmt: skip
        mean, lo, hi = cosine_spread(x)
        print(f"{TAG}   {label:16s} {mean:.4f} / {lo:.4f} / {hi:.4f}")
    logits = F.normalize(za, dim=-1) @ F.normalize(zv, dim=-1).T / float(model.temperature())
    target = torch.arange(len(za))
    nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    print(f"{TAG} audio-video NCE on this batch {float(nce):.3f} (ln {len(za)} = "
          f"{math.log(len(za)):.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
