"""What an XKD checkpoint's teachers give their students to learn (issue 6's XKD analysis).

XKD distils each modality's EMA teacher into the other modality's student through the teacher's
centred, sharpened distribution over the head's prototypes (DINO cross-entropy;
https://arxiv.org/abs/2211.13929). If that distribution is close to uniform, the distillation
loss sits at ln K and carries no class information. This script prints, per modality, the mean
entropy of that distribution on held-out clips (eval view, unmasked, as the teacher sees them),
its largest probability and how much each prototype's cosine varies across the clips, for the
checkpoint and for the same architecture at random initialisation.

Run: ``python bench/xkd_teacher.py --ckpt runs/xkd/demo/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="an XKD training checkpoint (last.ckpt)")
    p.add_argument("--data", default="shards/synthetic", help="prepared shards (data_prep)")
    p.add_argument("--split", default="test1")
    p.add_argument("--clips", type=int, default=64, help="held-out clips to use")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-init baseline")
    args = p.parse_args(argv)
    if not os.path.isfile(args.ckpt):
        p.exit(1, f"xkd_teacher.py: --ckpt {args.ckpt}: no such file\n")
    if not os.path.isfile(os.path.join(args.data, "manifest.json")):
        p.exit(1, f"xkd_teacher.py: --data {args.data}: no prepared shards (manifest.json)\n")
    if args.clips < 2:
        p.exit(1, "xkd_teacher.py: --clips must be >= 2\n")
    return args


def teacher_stats(model, batch, modality: str) -> dict[str, float]:
    """Entropy (nats), largest probability and per-prototype spread of one teacher's targets."""
    cfg = model.cfg
    x = batch.audio if modality == "audio" else batch.video
    logits = model._teacher_logits(x, modality)  # [B, K] cosines (standardised: head_norm)
    center = model.center_audio if modality == "audio" else model.center_video
    p = torch.softmax((logits - center) / cfg[f"teacher_temp_{modality}"], dim=-1)
    return {
        "entropy": float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean()),
        "max_prob": float(p.max()),
        "spread": float(logits.std(0).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from avssl.data.datamodule import make_eval_loader
    from avssl.objectives.xkd import XKD

    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    if not str(ckpt.get("avssl", {}).get("objective", "")).endswith(".XKD"):
        print(f"xkd_teacher.py: {args.ckpt} is not an XKD checkpoint", file=sys.stderr)
        return 1
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    trained = XKD(**hp)
    trained.load_state_dict(ckpt["state_dict"])
    torch.manual_seed(args.seed)
    models = {"checkpoint": trained.eval(), "random init": XKD(**hp).eval()}
    loader = make_eval_loader(args.data, args.split, ckpt["avssl"]["data"], batch_size=args.clips)
    batch = next(iter(loader))
    k = trained.cfg["head_out_dim"]
    print(
        f"[xkd teacher] {args.ckpt} (step {ckpt['global_step']}), {len(batch.key)} clips of "
        f"{args.split}; a uniform target has entropy ln {k} = {math.log(k):.3f} nats"
    )
    with torch.no_grad():
        for name, model in models.items():
            for modality in ("audio", "video"):
                s = teacher_stats(model, batch, modality)
                print(
                    f"[xkd teacher] {name:11s} {modality}: entropy {s['entropy']:.3f}, largest "
                    f"probability {s['max_prob']:.1e}, prototype cosine spread {s['spread']:.4f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
