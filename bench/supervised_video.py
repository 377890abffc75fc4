"""How far the video encoder gets *with labels* at a given budget (issue 6's video column).

Trains a ViT video encoder + linear head with cross-entropy on the training split of prepared
shards (the loader's training augmentation, the demo's clip settings by default: 8 frames at
8 fps, 64 px crops, ViT-Ti with 16 px patches and 2-frame tubelets, batch 16, AdamW 3e-4 with a
10-step warm-up; ``--depth`` changes the number of blocks), then prints top-1 on training
batches and on the held-out split. It is the ceiling a self-supervised objective's video
features can hope for at the same budget: if the supervised encoder does not generalise, a
linear probe of pretrained video features will not.

Run: ``python bench/supervised_video.py --data shards/synthetic --steps 200``.
Decoded training batches are cached in memory (``--pool`` of them, cycled), so that several
settings can be compared on the same clips; evaluation is on the whole held-out split.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="shards/synthetic", help="prepared shards (data_prep)")
    p.add_argument("--train-split", default="train1")
    p.add_argument("--test-split", default="test1")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--depth", type=int, default=None, help="blocks (default: the size's)")
    p.add_argument("--img", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--pool", type=int, default=200, help="distinct training batches decoded")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.data, "manifest.json")):
        p.exit(1, f"supervised_video.py: --data {args.data}: no prepared shards (manifest.json)\n")
    for name in ("steps", "batch", "pool", "frames", "img", "patch"):
        if getattr(args, name) < 1:
            p.exit(1, f"supervised_video.py: --{name} must be >= 1\n")
    if args.depth is not None and args.depth < 1:
        p.exit(1, "supervised_video.py: --depth must be >= 1\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from avssl.data.datamodule import AVDataModule
    from avssl.models import VideoViT

    if args.threads:
        torch.set_num_threads(args.threads)
    dm = AVDataModule(
        data=args.data,
        train_split=args.train_split,
        val_split=args.test_split,
        batch_size=args.batch,
        num_workers=args.workers,
        num_frames=args.frames,
        target_fps=args.fps,
        crop_size=args.img,
        audio_frames=256,
    )
    dm.setup("fit")
    t0 = time.perf_counter()
    train: list[tuple[torch.Tensor, torch.Tensor]] = []
    pool = min(args.pool, args.steps)
    while len(train) < pool:  # each pass over the split is a new epoch (new augmentation)
        size = len(train)
        for b in dm.train_dataloader():
            train.append((b.video, b.label))
            if len(train) >= pool:
                break
        if len(train) == size:
            print("supervised_video.py: the training split gave no batches", file=sys.stderr)
            return 1
    test = [(b.video, b.label) for b in dm.val_dataloader()]
    with open(os.path.join(args.data, "splits", f"{args.train_split}.txt")) as f:
        n_train = sum(1 for line in f if line.strip())
    n_test = sum(len(y) for _, y in test)
    classes = int(max(max(y.max() for _, y in train), max(y.max() for _, y in test))) + 1
    print(
        f"[supervised video] {args.data}: {n_train} training clips ({pool} batches of "
        f"{args.batch} decoded), {n_test} held-out clips, {classes} classes, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    torch.manual_seed(args.seed)
    enc = VideoViT(
        args.size, args.patch, num_frames=args.frames, img_size=args.img, depth=args.depth
    )
    head = nn.Linear(enc.embed_dim, classes)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for step in range(args.steps):
        video, label = train[step % len(train)]
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 10)
        loss = F.cross_entropy(head(enc(video)), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    enc.eval()

    @torch.no_grad()
    def top1(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        hits = sum(int((head(enc(v)).argmax(1) == y).sum()) for v, y in batches)
        return 100.0 * hits / sum(len(y) for _, y in batches)

    seen = train[: min(len(train), args.steps, 16)]
    print(
        f"[supervised video] ViT-{args.size[0].upper()}{args.size[1:]} ({len(enc.blocks)} "
        f"blocks) {args.img} px, patch "
        f"{args.patch}, {args.frames} frames, {args.steps} steps of {args.batch}, lr {args.lr:g}: "
        f"last loss {loss.item():.2f}, top-1 on trained batches {top1(seen):.1f} %, on the "
        f"held-out split {top1(test):.1f} % (chance {100 / classes:.1f} %), "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
