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
import importlib.util
import itertools
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from avssl.data.batch import MODALITIES_COMPLETE, AVBatch
from avssl.losses.contrastive import info_nce
from avssl.losses.reconstruction import masked_mse
from avssl.models import AudioViT, VideoViT
from avssl.models.decoder import JointDecoder, TransformerDecoder
from avssl.models.fusion import JointFusion
from avssl.models.layers import compile_blocks, set_flex_attention, set_fused_attention
from avssl.models.masking import random_masking, tube_masking, videomae_keep
from avssl.models.vit import ViTEncoder

# dense bf16 FLOP/s from the datasheets, by a part of the device's name; the first match wins,
# so the PCIe and NVL parts (lower clocks and power) come before their SXM names
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}
REFERENCE = {  # DESIGN section 7, one H200: (samples/s best, GFLOP/sample)
    "cavmae": (917.0, 238.0),
    "videomae": (371.0, 205.0),
}


@dataclass
class Shape:
    """Inputs of one configuration; ``fast_batch``/``base_batch`` are the GPU defaults."""

    audio: tuple[int, int] = (1024, 128)
    frames: int = 16
    img: int = 224
    fast_batch: int = 128
    base_batch: int = 48
    extra: dict[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] = ("audio", "video")  # what --data loads for the step


def shapes(size: str) -> dict[str, Shape]:
    """Reference inputs, or small ones at ``--size tiny`` (CPU smoke runs)."""
    if size == "tiny":
        return {
            "cavmae": Shape((64, 128), 1, 32, 2, 2, {"dec_dim": 64}),
            "videomae": Shape((64, 128), 4, 64, 2, 2, {"dec_dim": 64}, ("video",)),
            "mavil": Shape((64, 128), 4, 64, 2, 2),
        }
    return {
        "cavmae": Shape((1024, 128), 1, 224, 128, 48, {"dec_dim": 512}),
        "videomae": Shape((1024, 128), 16, 224, 64, 32, {"dec_dim": 384}, ("video",)),
        "mavil": Shape((1024, 128), 8, 224, 64, 32),
    }


class CavMaeStep(nn.Module):
    """The CAV-MAE step: 11 + 1 layers, joint decoder, mask 0.75, MSE + 0.01 InfoNCE."""

    def __init__(self, size: str, shape: Shape) -> None:
        super().__init__()
        self.audio = AudioViT(size, depth=11, input_size=shape.audio)
        self.video = VideoViT(size, depth=11, tubelet_size=1, num_frames=1, img_size=shape.img)
        d = self.audio.embed_dim
        self.fusion = JointFusion(d, depth=1, num_heads=self.audio.num_heads, single_norms=True)
        dims = {"audio": d, "video": d}
        patch = {"audio": self.audio.patch_dim, "video": self.video.patch_dim}
        grids = {"audio": self.audio.default_grid, "video": self.video.default_grid}
        dec = shape.extra["dec_dim"]
        self.decoder = JointDecoder(dims, patch, dec, 8, dec // 32, grids=grids)

    def forward(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        audio, video = batch.audio, batch.video
        B, dev = audio.shape[0], audio.device
        ga, gv = self.audio.grid_size(audio.shape), self.video.grid_size(video.shape)
        ka, ma, ra = random_masking(B, self.audio.num_tokens(audio.shape), 0.75, dev)
        kv, mv, rv = random_masking(B, self.video.num_tokens(video.shape), 0.75, dev)
        za = self.audio.forward_features(audio, ka)  # [B, Na_keep, D]
        zv = self.video.forward_features(video, kv)  # [B, Nv_keep, D]
        fa, fv = self.fusion(za, zv)
        pred = self.decoder({"audio": (fa, ra, ga), "video": (fv, rv, gv)})
        rec_a = masked_mse(pred["audio"], self.audio.patchify(audio), ma)
        rec_v = masked_mse(pred["video"], self.video.patchify(video), mv)
        ca = self.fusion.forward_single(za, "audio").mean(dim=1)  # [B, D]
        cv = self.fusion.forward_single(zv, "video").mean(dim=1)
        nce = info_nce(ca, cv, temperature=0.05, symmetric=False)
        return {"loss": rec_a + rec_v + 0.01 * nce, "nce": nce}


class VideoMaeStep(nn.Module):
    """The VideoMAE step: tube mask 0.9, decoder 4 x 384, norm-pix MSE on masked tubelets."""

    def __init__(self, size: str, shape: Shape) -> None:
        super().__init__()
        self.video = VideoViT(size, num_frames=shape.frames, img_size=shape.img)
        dec = shape.extra["dec_dim"]
        self.decoder = TransformerDecoder(
            self.video.embed_dim,
            self.video.patch_dim,
            dec,
            4,
            dec // 64,
            grid=self.video.default_grid,
        )

    def forward(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        video = batch.video
        grid = self.video.grid_size(video.shape)
        # VideoMAE's count: 20 of 196 positions visible per slice (MAE's would keep 19)
        s_keep = videomae_keep(grid[1] * grid[2], 0.9)
        keep, mask, restore = tube_masking(video.shape[0], grid, 0.9, video.device, s_keep=s_keep)
        pred = self.decoder(self.video.forward_features(video, keep), restore, grid)
        return {"loss": masked_mse(pred, self.video.patchify(video), mask)}


class ObjectiveStep(nn.Module):
    """Wraps an objective so that ``forward(batch)`` is its ``compute_losses``."""

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        return self.objective.compute_losses(batch)


def build(name: str, size: str, shape: Shape) -> nn.Module | str:
    """The step module of a configuration, or a string saying why it is skipped."""
    if name == "cavmae":
        return CavMaeStep(size, shape)
    if name == "videomae":
        return VideoMaeStep(size, shape)
    if name == "mavil":
        if importlib.util.find_spec("avssl.objectives.mavil") is None:
            return "avssl.objectives.mavil does not exist yet"
        try:
            from avssl.objectives.mavil import MAViL
        except ImportError as err:
            return f"cannot import avssl.objectives.mavil ({err})"
        obj = MAViL(
            size=size,
            audio_frames=shape.audio[0],
            num_mel_bins=shape.audio[1],
            num_frames=shape.frames,
            img_size=shape.img,
            gather_negatives=False,
        )
        return ObjectiveStep(obj)
    raise SystemExit(f"bench/step.py: unknown config {name!r} (cavmae, videomae, mavil)")


def random_batch(shape: Shape, batch: int, device: torch.device, without_audio: int = 0) -> AVBatch:
    """Random inputs; ``without_audio`` clips have no audio (zeros, ``audio_mask`` False, the
    collate's ``modalities_complete`` note False), as the loader gives them."""
    g = torch.Generator(device="cpu").manual_seed(0)
    audio = torch.randn(batch, 1, *shape.audio, generator=g)  # [B, 1, Ta, F]
    video = torch.randn(batch, 3, shape.frames, shape.img, shape.img, generator=g)
    out = AVBatch(video=video, audio=audio, key=[str(i) for i in range(batch)])
    n = min(without_audio, batch)
    if n:
        out.audio[:n] = 0
        out.audio_mask = torch.arange(batch) >= n  # the first n clips are silent
        out.video_mask = torch.ones(batch, dtype=torch.bool)
        out.extra[MODALITIES_COMPLETE] = False
    return out.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: nn.Module, batch: AVBatch) -> float:
    """Model FLOPs per sample of forward + backward (naive attention so that every backend's
    attention matmuls are counted; fp32, no optimizer). Leaves the model on naive attention."""
    set_fused_attention(model, False)
    counter = FlopCounterMode(display=False)
    with counter:
        model(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch)


def compile_stacks(model: nn.Module, **options) -> int:
    """Compiles whole encoders (``forward_features``), fusion layers and decoders: fewer, larger
    graphs than ``compile_blocks`` (inductor can fuse across block boundaries), while masking,
    targets and losses stay eager. Returns the number of modules compiled."""
    count = 0
    for m in model.modules():
        if isinstance(m, ViTEncoder):
            m.forward_features = torch.compile(m.forward_features, dynamic=False, **options)  # type: ignore[method-assign]
            count += 1
        elif isinstance(m, JointFusion):  # its blocks, which forward_single runs too
            m._run = torch.compile(m._run, dynamic=False, **options)  # type: ignore[method-assign]
            count += 1
        elif isinstance(m, (JointDecoder, TransformerDecoder)):
            m.compile(dynamic=False, **options)
            count += 1
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return count


SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math", "flex")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
# modes that replay CUDA graphs: each step must be marked as a new one (the last step's graph
# outputs are then free to be overwritten)
GRAPH_MODES = ("reduce-overhead", "max-autotune")


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


def data_batches(args: argparse.Namespace, shape: Shape, batch: int, device: torch.device):
    """Endless batches from the real loader (only imported with --data)."""
    from avssl.data.batching import features_on_device
    from avssl.data.datamodule import AVDataModule

    dm = AVDataModule(
        data=args.data,
        train_split=args.split,
        batch_size=batch,
        num_workers=args.workers,
        worker_nice=worker_nice(args, device),
        num_frames=shape.frames,
        crop_size=shape.img,
        audio_frames=shape.audio[0],
        num_mel_bins=shape.audio[1],
        # One long epoch: a small split would otherwise end the epoch after a batch or two and
        # every epoch would restart the worker processes, which is not what training sees.
        batches_per_epoch=10**6,
        pin_memory=device.type == "cuda",
        features_on=features_on(args, device),
        repeated_sampling=args.repeats,
        keyframe_starts=args.keyframe_starts,
        modalities=list(shape.modalities),  # VideoMAE's step: no audio decoded or shipped
    )
    dm.setup("fit")
    while True:
        for b in dm.train_dataloader():
            yield features_on_device(b.to(device, non_blocking=True), dm.fbank)


def worker_nice(args: argparse.Namespace, device: torch.device) -> int:
    """The workers' niceness (``--worker-nice``; default: AVDataModule's, 10 on a GPU)."""
    if args.worker_nice is not None:
        return args.worker_nice
    from avssl.data.datamodule import GPU_WORKER_NICE  # only with --data (imports PyAV)

    return GPU_WORKER_NICE if device.type == "cuda" else 0


def features_on(args: argparse.Namespace, device: torch.device) -> str:
    """Where the fed step's batches are finished (``--features``; auto: the device if a GPU)."""
    if args.features != "auto":
        return args.features
    return "device" if device.type == "cuda" else "loader"


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


def peak_flops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak or device.type != "cuda":
        return args.peak
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def report(name: str, results: dict[str, dict], peak: float | None, size: str = "base") -> None:
    for variant, r in results.items():
        if "skip" in r:
            print(f"{name:9s} {variant:9s} skipped: {r['skip']}")
            continue
        flops = r["flops"]
        tflops = flops * r["sps"] / 1e12 if flops else float("nan")
        mfu = f"{100 * flops * r['sps'] / peak:5.1f}%" if (peak and flops) else "  n/a"
        mem = f"{r['mem']:7.1f}" if "mem" in r else "    n/a"
        mem += f" {r['ms']:7.1f}"
        gf = f"{flops / 1e9:9.2f}" if flops else "      n/a"
        line = f"{name:9s} {variant:9s} {r['batch']:5d} {r['sps']:10.1f} {gf} {tflops:8.1f} "
        print(line + f"{mfu:>6s} {mem}")
        if "data_sps" in r:
            print(
                f"{'':9s} {'+data':9s} {r['batch']:5d} {r['data_sps']:10.1f}  GPU waits for data "
                f"{100 * r['wait']:.0f}% of the time (host blocked in next(): "
                f"{100 * r['host_wait']:.0f}%); loader alone {r['loader_sps']:.1f} samples/s; "
                f"{r['workers']} workers" + (f" at nice {r['nice']}" if r["nice"] else "") + "; "
                f"features {'in the loader' if r['features'] == 'loader' else 'on the device'}"
                + (f"; {r['repeats']} entries per decoded sample" if r["repeats"] > 1 else "")
                + ("; clips start on keyframes" if r["keyframes"] else "")
                + ("" if len(r["modalities"]) == 2 else f"; {r['modalities'][0]} only")
                + (
                    "; WAV audio"
                    if r["audio_codec"] == "wav" and "audio" in r["modalities"]
                    else ""
                )
                + (f"; JPEG frames at {r['jpeg_fps']:g} fps" if r["jpeg_fps"] > 0 else "")
            )
    if "fast" in results and "baseline" in results and "sps" in results["baseline"]:
        ratio = results["fast"]["sps"] / results["baseline"]["sps"]
        ref = REFERENCE.get(name) if size == "base" else None  # the reference shapes only
        note = f"; reference best {ref[0]:.0f} samples/s, {ref[1]:.0f} GFLOP" if ref else ""
        print(f"{name:9s} fast / baseline = {ratio:.2f}x{note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--size",
        default=None,
        choices=["tiny", "small", "base", "large"],
        help="encoder size and inputs (default: base, the reference shapes, on a GPU; tiny on "
        "a CPU, where the base shapes take hours and more memory than a laptop has)",
    )
    p.add_argument("--configs", default="cavmae,videomae,mavil")
    p.add_argument("--variants", default="baseline,fast")
    p.add_argument("--batch", type=int, default=None, help="fast-variant batch")
    p.add_argument("--baseline-batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=None, help="default 5 on GPU, 1 on CPU")
    p.add_argument(
        "--compile",
        default="none",
        choices=["none", "blocks", "stacks", "full"],
        help="torch.compile the fast step: every transformer block, every encoder/decoder, "
        "or the whole forward",
    )
    p.add_argument(
        "--sdpa",
        default="auto",
        choices=SDPA_BACKENDS,
        help="fused-attention kernels of the fast step (auto: PyTorch's choice; flex: "
        "FlexAttention, CUDA and --compile only)",
    )
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=COMPILE_MODES,
        help="torch.compile mode (reduce-overhead: each compiled graph replayed as a CUDA "
        "graph, fewer kernel launches from the host; max-autotune*: inductor benchmarks its own "
        "Triton matrix products with fused epilogues against cuBLAS; compiling takes minutes)",
    )
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "none"])
    p.add_argument("--peak", type=float, default=None, help="peak FLOP/s for MFU")
    p.add_argument("--data", default=None, help="prepared shards: feed the fast step from them")
    p.add_argument("--split", default="train1")
    p.add_argument(
        "--features",
        default="auto",
        choices=["auto", "loader", "device"],
        help="with --data: fbank, colour jitter and normalisation in the loader workers or on "
        "the device after the transfer (auto: the device if it is a GPU)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="with --data: repeated sampling, entries per decoded sample (AVDataModule's "
        "repeated_sampling)",
    )
    p.add_argument(
        "--keyframe-starts",
        action="store_true",
        help="with --data: clips start on the keyframe at or before each random start "
        "(AVDataModule's keyframe_starts; for one frame: CAV-MAE's one of the 1-fps frames)",
    )
    p.add_argument(
        "--without-audio",
        type=int,
        default=0,
        help="mavil config: clips of each random batch without audio, which run MAViL's joint "
        "layers with a key mask (0: every clip has both modalities, no mask)",
    )
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: all cores)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="loader workers' niceness above the training process's (AVDataModule.worker_nice;"
        " default: as in training, 10 on a GPU, else 0)",
    )
    args = p.parse_args(argv)
    if args.size is None:
        args.size = "base" if args.device.startswith("cuda") else "tiny"
    if args.warmup is None:
        args.warmup = 5 if args.device.startswith("cuda") else 1
    if args.workers is None:
        args.workers = os.cpu_count() or 1
    return args


def check_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Validates the options; returns (configs, variants)."""
    variants = [v for v in args.variants.split(",") if v]
    configs = [c for c in args.configs.split(",") if c]
    for bad in set(variants) - {"baseline", "fast"}:
        raise SystemExit(f"bench/step.py: unknown variant {bad!r} (baseline, fast)")
    for bad in set(configs) - set(shapes(args.size)):
        raise SystemExit(f"bench/step.py: unknown config {bad!r} ({', '.join(shapes(args.size))})")
    if args.data and "://" not in args.data and "{" not in args.data:
        if not os.path.exists(args.data):
            raise SystemExit(f"bench/step.py: --data {args.data}: no such prepared dataset folder")
    if args.without_audio < 0:
        raise SystemExit(f"bench/step.py: --without-audio must be >= 0, got {args.without_audio}")
    if args.without_audio and "mavil" not in configs:
        raise SystemExit("bench/step.py: --without-audio applies to the mavil config only")
    if args.repeats < 1:
        raise SystemExit(f"bench/step.py: --repeats must be >= 1, got {args.repeats}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench/step.py: --device cuda but no CUDA GPU is visible")
    if args.sdpa == "flex" and (args.compile == "none" or not args.device.startswith("cuda")):
        raise SystemExit(
            "bench/step.py: --sdpa flex needs --device cuda and --compile blocks|stacks|full "
            "(FlexAttention has no backward on CPU and is only fused when compiled)"
        )
    return configs, variants


def print_header(args: argparse.Namespace, device: torch.device, peak: float | None) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"# step benchmark: {name}, torch {torch.__version__}, size {args.size}, "
        f"steps {args.steps} (+{args.warmup} warm-up), compile {args.compile} "
        f"({args.compile_mode}), sdpa {args.sdpa}, "
        f"peak {peak / 1e12 if peak else 'n/a'} TFLOP/s"
    )
    for cfg, s in shapes(args.size).items():
        print(f"#   {cfg}: audio {s.audio}, video {s.frames}x{s.img}x{s.img} {s.extra}")
    print("#   cavmae: one frame -> 1x16x16 tubelet (CAV-MAE's 2-D patches); mavil: MAViL defaults")
    if args.without_audio:
        print(
            f"#   mavil: {args.without_audio} clips per batch without audio (masked joint layers)"
        )
    print(
        f"{'config':9s} {'variant':9s} {'batch':>5s} {'samples/s':>10s} {'GFLOP/smp':>9s} "
        f"{'TFLOP/s':>8s} {'MFU':>6s} {'mem GiB':>7s} {'ms/step':>7s}"
    )


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
