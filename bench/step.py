"""Training-step benchmark at the reference configurations (issue 8, DESIGN section 7).

Configurations (``--configs``):
- ``cavmae``: the CAV-MAE pretraining step (Gong et al. 2023, https://arxiv.org/abs/2210.07839):
  audio 1024x128 + one 224 px frame, ViT with 11 modality-specific + 1 joint layer, a joint
  decoder 8 x 512 over both modalities, mask 0.75 on each, norm-pix MSE + 0.01 x InfoNCE
  (T 0.05, one direction) on the mean-pooled outputs of the joint layer run on each modality.
  The frame uses a 1x16x16 tubelet (= CAV-MAE's 2-D patch embedding, 196 tokens).
- ``videomae``: VideoMAE ViT-B (Tong et al. 2022, https://arxiv.org/abs/2203.12602): 16x224,
  2x16x16 tubelets, tube mask 0.9, decoder 4 x 384 (6 heads), norm-pix MSE.
- ``mavil``: the full MAViL stage-1 step (``avssl.objectives.mavil.MAViL.compute_losses``).

Each runs as ``baseline`` (fp32, naive softmax attention, plain AdamW) and ``fast`` (bf16
autocast, fused SDPA, fused AdamW, optional torch.compile: ``--compile blocks`` compiles every
transformer block, as the objectives' ``compile: blocks`` option does, ``--compile full`` the
whole forward; ``--compile-mode max-autotune-no-cudagraphs`` lets inductor autotune its own
Triton matrix products, which can take elementwise epilogues such as GELU, against cuBLAS;
``--sdpa flex`` runs FlexAttention's generated kernels instead of SDPA); encoders always see
only the visible tokens. Printed: samples/s, model FLOPs per sample (fwd+bwd, FlopCounterMode),
MFU against the bf16 peak, peak memory, time per step, fast/baseline ratio. ``--size tiny``
shrinks the inputs so that it runs in seconds on a CPU (the default there).
Run: ``python bench/step.py [--compile blocks] [--configs videomae] [--batch 256]``.

With ``--data <shards>`` the fast step is also fed by the real loader: printed are the loader's
own rate (batches drawn with no GPU work) and the fed step's rate with the share of time the GPU
waits for data. ``--features`` says where the fbank, colour jitter and normalisation run, as
``AVDataModule(features_on)`` (auto: on the device when it is a GPU, i.e. the workers ship
waveforms and uint8 clips and the fed step includes finishing each batch on the GPU).
``--repeats R`` feeds it with repeated sampling and ``--keyframe-starts`` with clips that start
on keyframes (for the one-frame CAV-MAE shape: one of the shards' keyframes, at least one per
second, as CAV-MAE's frames extracted at 1 fps).

``--without-audio N`` gives N clips of each random ``mavil`` batch no audio, as the loader
marks them, so that MAViL's joint layers run with their key mask (batches whose clips all have
both modalities run without one).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from avssl.data.batch import AVBatch
from avssl.models.layers import compile_blocks, set_flex_attention, set_fused_attention

_BENCH = str(Path(__file__).resolve().parent)  # bench/ is no package: its modules import
if _BENCH not in sys.path:  # one another by name, however the first of them was loaded
    sys.path.append(_BENCH)

from step_data import data_batches, features_on, worker_nice  # noqa: E402
from step_models import (  # noqa: E402
    CavMaeStep,
    ObjectiveStep,
    Shape,
    VideoMaeStep,
    build,
    compile_stacks,
    count_flops,
    random_batch,
    shapes,
)
from step_report import (  # noqa: E402
    COMPILE_MODES,
    GRAPH_MODES,
    PEAK_BF16,
    REFERENCE,
    SDPA_BACKENDS,
    check_args,
    peak_flops,
    print_header,
    report,
)
from step_report import parse_args as _parse_args  # noqa: E402

__all__ = [  # what bench/profile_step.py and the tests use, wherever it is defined
    "COMPILE_MODES", "GRAPH_MODES", "PEAK_BF16", "REFERENCE", "SDPA_BACKENDS", "CavMaeStep",
    "ObjectiveStep", "Shape", "VideoMaeStep", "batch_size", "build", "check_args",
    "compile_blocks", "compile_stacks", "count_flops", "data_batches", "features_on", "main",
    "make_step", "parse_args", "peak_flops", "print_header", "random_batch", "report",
    "run_variant", "set_sdpa_backend", "shapes", "sync", "time_steps", "worker_nice",
]  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_sdpa_backend(name: str) -> None:
    """Restricts fused attention to one kernel family (``auto``: PyTorch's own choice; ``flex``
    leaves SDPA at ``auto``: the model's attention layers are switched to FlexAttention)."""
    b = torch.backends.cuda
    on = name in ("auto", "flex")
    b.enable_flash_sdp(on or name == "flash")
    b.enable_mem_efficient_sdp(on or name == "efficient")
    b.enable_cudnn_sdp(on or name == "cudnn")
    b.enable_math_sdp(on or name == "math")


def make_step(model: nn.Module, fast: bool, args: argparse.Namespace, device: torch.device):
    """Returns ``step(batch) -> loss`` (no host sync inside) and whether bf16 autocast is on."""
    params = [p for p in model.parameters() if p.requires_grad]
    set_flex_attention(model, fast and args.sdpa == "flex")
    if fast and device.type == "cuda":
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True)
    elif fast:
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=False, fused=False)
    use_amp = fast and (args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda"))
    fn = model
    options = {} if args.compile_mode == "default" else {"mode": args.compile_mode}
    if fast and args.compile == "full":
        fn = torch.compile(model, **options)
    elif fast and args.compile == "blocks":
        compile_blocks(model, **options)
    elif fast and args.compile == "stacks":
        compile_stacks(model, **options)

    graphs = fast and args.compile != "none" and args.compile_mode in GRAPH_MODES

    def step(batch: AVBatch) -> torch.Tensor:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = fn(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, use_amp


def time_steps(step, batches, n: int, device: torch.device) -> tuple[float, float]:
    """Runs ``n`` steps; returns (wall seconds, seconds spent waiting for the next batch)."""
    wait = 0.0
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        t1 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t1
        step(batch)
    sync(device)
    return time.perf_counter() - t0, wait


def batch_size(shape: Shape, fast: bool, args: argparse.Namespace) -> int:
    given = args.batch if fast else args.baseline_batch
    return given or (shape.fast_batch if fast else shape.base_batch)


def run_variant(name: str, variant: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Builds a configuration, warms up, times ``args.steps`` steps; returns the figures."""
    shape, fast = shapes(args.size)[name], variant == "fast"
    B = batch_size(shape, fast, args)
    torch.manual_seed(0)
    model = build(name, args.size, shape)
    if isinstance(model, str):
        return {"skip": model}
    model = model.to(device).train()
    flops = count_flops(model, random_batch(shape, min(B, 4), device))
    set_fused_attention(model, fast)
    torch.set_float32_matmul_precision("high" if fast else "highest")
    step, amp = make_step(model, fast, args, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    fixed = random_batch(shape, B, device, args.without_audio if name == "mavil" else 0)
    source = data_batches(args, shape, B, device) if (args.data and fast) else None
    for _ in range(args.warmup):
        step(next(source) if source else fixed)
    wall, _ = time_steps(step, itertools.repeat(fixed), args.steps, device)
    out = {"batch": B, "sps": B * args.steps / wall, "flops": flops, "amp": amp}
    out["ms"] = 1e3 * wall / args.steps
    if device.type == "cuda":
        out["mem"] = torch.cuda.max_memory_allocated(device) / 2**30
    if source is not None:
        # the loader alone: drain what the workers queued meanwhile (prefetch 2 each), then
        # time batches drawn with no GPU work in between
        for _ in range(2 * max(args.workers, 1)):
            next(source)
        n = max(args.steps, args.workers)
        t0 = time.perf_counter()
        for _ in range(n):
            next(source)
        out["loader_sps"] = B * n / (time.perf_counter() - t0)
        fed, wait = time_steps(step, source, args.steps, device)
        out.update(data_sps=B * args.steps / fed, wait=max(0.0, 1 - wall / fed))
        out["host_wait"] = wait / fed
        out["features"] = features_on(args, device)
        out["repeats"] = args.repeats
        out["workers"], out["nice"] = args.workers, worker_nice(args, device)
        out["keyframes"] = args.keyframe_starts
        out["modalities"] = shape.modalities
        manifest = Path(args.data) / "manifest.json"  # a folder (not a shard URL pattern)
        prep = json.loads(manifest.read_text()).get("prep", {}) if manifest.is_file() else {}
        out["audio_codec"] = prep.get("audio_codec", "flac")
        out["jpeg_fps"] = float(prep.get("jpeg_fps") or 0)
    del model, step, fixed, source
    torch._dynamo.reset()  # compiled graphs hold the model
    gc.collect()
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options (``step_report.parse_args``), with this script's first line as ``--help``'s
    description."""
    return _parse_args(argv, __doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs, variants = check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    set_sdpa_backend(args.sdpa)
    peak = peak_flops(args, device)
    print_header(args, device, peak)
    failed = 0
    for cfg in configs:
        results = {}
        for variant in variants:
            try:
                results[variant] = run_variant(cfg, variant, args, device)
            except Exception as err:  # report it and go on with the other configurations
                traceback.print_exc()
                results[variant] = {"skip": f"FAILED: {type(err).__name__}: {err}"}
                failed += 1
            if "skip" in results[variant]:
                break
        report(cfg, results, peak, args.size)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
