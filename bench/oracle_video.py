"""What VATT's audio encoder learns when its video side knows the class (issue 6's VATT analysis).

VATT (Akbari et al. 2021, https://arxiv.org/abs/2104.11178) teaches each encoder only through the
other modality. At the demo's budget the video ViT does not learn the synthetic shapes (see
``bench/supervised_video.py``), and VATT's audio-video loss stays near ln B. This script asks
whether that is the objective's limit or the video encoder's: it trains the recipe's model at the
demo's settings (``recipes/_base.yaml`` + ``recipes/<recipe>.yaml`` + the demo overlays: the same
sizes, batch, steps, learning rate, warm-up + cosine schedule, DropToken, heads, temperature and
loader) with one change, ``--video oracle``: the video branch is a learned embedding of the clip's
*class label* fed to the video projection head, so the video side carries the class and nothing
else. ``--video vit`` keeps the real video ViT (the control: the objective's own loss).
``--wrong P`` makes the oracle name another class for a fixed fraction P of the clips: how
often the video side must be right.

The trained checkpoint (whose untrained video encoder equals the random-init baseline's: both
start from seed 0) then goes through the demo's own steps: ``avssl export`` (trained and
``--random-init``) and ``avssl eval --protocol synthetic_linear``, and the demo's table is printed.
Only the audio column (and the joint one through it) measures the oracle's effect.

Run: ``python bench/oracle_video.py [--video oracle|vit] [--wrong P] [--steps 200]`` (about 3 min
on 2 CPU cores; results in ``eval_out/oracle/``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

OBJECTIVE = "avssl.objectives.contrastive.AVContrastive"
TAG = "[oracle video]"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="vatt", help="an AVContrastive batch-NCE recipe")
    p.add_argument("--data", default="shards/synthetic", help="prepared shards (data_prep)")
    p.add_argument("--video", default="oracle", choices=["oracle", "vit"])
    p.add_argument(
        "--wrong", type=float, default=0.0, help="oracle: fraction of clips given a wrong class"
    )
    p.add_argument("--steps", type=int, default=None, help="default: the demo's max_steps")
    p.add_argument("--out", default="eval_out/oracle", help="checkpoint, encoders and results")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the demo uses 1)")
    p.add_argument(
        "--config", action="append", default=[], help="a config added after the demo's ones"
    )
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.data, "manifest.json")):
        p.exit(1, f"oracle_video.py: --data {args.data}: no prepared shards (manifest.json)\n")
    if not os.path.isfile(os.path.join("recipes", f"{args.recipe}.yaml")):
        p.exit(1, f"oracle_video.py: --recipe {args.recipe}: no recipes/{args.recipe}.yaml\n")
    for path in args.config:
        if not os.path.isfile(path):
            p.exit(1, f"oracle_video.py: --config {path}: no such file\n")
    if not 0.0 <= args.wrong <= 1.0 or (args.wrong and args.video != "oracle"):
        p.exit(1, "oracle_video.py: --wrong must be in [0, 1], with --video oracle\n")
    if args.steps is not None and args.steps < 1:
        p.exit(1, "oracle_video.py: --steps must be >= 1\n")
    return args


def seen_label(key: str, label: int, wrong: float, num_classes: int) -> int:
    """The class the oracle shows for a clip: its own, or for a fixed ``wrong`` fraction of the
    clips (chosen by key, the same every epoch, as a video encoder that fails on them) another
    class drawn uniformly."""
    rng = random.Random(key)
    if label < 0 or rng.random() >= wrong:
        return label
    return (label + rng.randrange(1, num_classes)) % num_classes


def oracle_losses(model: Any, emb: nn.Embedding, batch: Any, wrong: float = 0.0) -> torch.Tensor:
    """VATT's NCE with the video features replaced by a class embedding (through the video
    projection head); the audio branch is the objective's own (DropToken included)."""
    from avssl.objectives._mavil_parts import flatten_inputs, masked_info_nce
    from avssl.objectives.contrastive import pooled

    audio, _, a_ok, _ = flatten_inputs(batch)
    label = batch.label
    if wrong > 0:
        n = emb.num_embeddings
        label = torch.tensor([seen_label(k, int(y), wrong, n) for k, y in zip(batch.key, label)])
    label = label.repeat_interleave(len(audio) // len(label))  # K clips: [B K]
    za = model.audio_proj(pooled(model.audio_encoder, audio, model.drop_token))
    zv = model.video_proj(emb(label.clamp_min(0)))
    valid = a_ok.float() * (label >= 0).float()  # unlabelled clips (-1) take no part
    return masked_info_nce(za, zv, valid, model.temperature(), False)


def train(model: Any, emb: nn.Embedding | None, loader: Any, steps: int, lr: float,
          wrong: float = 0.0) -> list:  # fmt: skip
    """The objective's optimiser and schedule (AdamW, warm-up + cosine); returns the losses."""
    params_of = None if emb is None else nn.ModuleList([model, emb])
    opt, sched = model.build_optimizer(lr, steps, params_of)
    model.train()
    losses: list[float] = []
    while len(losses) < steps:
        size = len(losses)
        for batch in loader:
            if emb is None:
                loss = model.compute_losses(batch)["loss"]  # the objective's own loss
            else:
                loss = oracle_losses(model, emb, batch, wrong)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if len(losses) >= steps:
                break
        if len(losses) == size:
            raise SystemExit("oracle_video.py: the training split gave no batches")
    return losses


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from avssl.data.datamodule import AVDataModule
    from avssl.demo import demo_config
    from avssl.objectives.contrastive import AVContrastive

    cfg = demo_config(args.recipe, args.config)
    if cfg["model"]["class_path"] != OBJECTIVE or cfg["model"]["init_args"].get("memory_bank"):
        print(f"oracle_video.py: {args.recipe} is not a batch-NCE AVContrastive recipe",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.video == "oracle" and _manifest(args.data).get("multilabel"):
        print(f"oracle_video.py: {args.data} is multi-label; the oracle needs one class per clip",
              file=sys.stderr)  # fmt: skip
        return 1
    torch.set_num_threads(args.threads)
    steps = args.steps or int(cfg["trainer"]["max_steps"])
    data_args = dict(cfg["data"]["init_args"], data=args.data)
    if args.video == "oracle":
        data_args["modalities"] = ["audio"]  # the oracle needs no frames: none are decoded
    dm = AVDataModule(**data_args)
    dm.setup("fit")
    torch.manual_seed(0)  # the random-init export rebuilds the objective from seed 0 too
    model = AVContrastive(**cfg["model"]["init_args"])
    emb = None
    if args.video == "oracle":
        torch.manual_seed(1)
        emb = nn.Embedding(_num_classes(args.data), model.video_encoder.embed_dim)
    name = f"oracle-wrong{args.wrong:g}" if args.wrong else args.video
    lr = model.resolve_lr(dm.hp.batch_size)  # one process, no accumulation
    t0 = time.time()
    losses = train(model, emb, dm.train_dataloader(), steps, lr, args.wrong)
    first, last = _mean(losses[:10]), _mean(losses[-10:])
    print(f"{TAG} {args.recipe}, video {name}: {steps} steps of "
          f"{dm.hp.batch_size} in {time.time() - t0:.0f} s, lr {lr:g}; audio-video NCE mean of "
          f"the first 10 steps {first:.3f}, of the last 10 {last:.3f} (ln {dm.hp.batch_size} = "
          f"{math.log(dm.hp.batch_size):.3f})", flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / f"{name}.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "global_step": steps,
            "avssl": {"objective": OBJECTIVE, "recipe": args.recipe, "data": dm.preprocessing()},
        },
        ckpt,
    )
    table = export_and_probe(ckpt, out, name, args.data, f"{args.recipe} (video {name})")
    print("\n" + table + "\n")
    return 0


def export_and_probe(ckpt: Path, out: Path, name: str, data: str, label: str) -> str:
    """The demo's steps 3 and 4 on ``ckpt``: export it and its random init, probe both with the
    demo's protocol; returns the demo's table (also written to ``out/summary-<name>.md``)."""
    from avssl.demo import PROTOCOL, _avssl, _results, _table

    rows = {}
    for run, extra in (("random", ["--random-init"]), (name, [])):
        enc = out / f"encoders-{run}"
        _avssl("export", "--ckpt", str(ckpt), "--out", str(enc), *extra, tag=TAG)
        _avssl("eval", "--protocol", PROTOCOL, "--encoder", str(enc), "--data", data,
               "--out", str(out / f"eval-{run}"), tag=TAG)  # fmt: skip
        rows[run] = _results(out / f"eval-{run}")
    table = _table(rows["random"], rows[name], label)
    (out / f"summary-{name}.md").write_text(table + "\n")
    return table


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _manifest(data: str) -> dict:
    return json.loads(Path(data, "manifest.json").read_text())


def _num_classes(data: str) -> int:
    return len(_manifest(data)["classes"])


if __name__ == "__main__":
    sys.exit(main())
