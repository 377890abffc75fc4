"""Options and printed lines of ``bench/step.py``: parsing and checking the command line, the
header, each configuration's rows and the bf16 peak that MFU is measured against.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

_BENCH = str(Path(__file__).resolve().parent)  # bench/ is no package: its modules import
if _BENCH not in sys.path:  # one another by name, however the first of them was loaded
    sys.path.append(_BENCH)

from step_models import shapes  # noqa: E402

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
SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math", "flex")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
# modes that replay CUDA graphs: each step must be marked as a new one (the last step's graph
# outputs are then free to be overwritten)
GRAPH_MODES = ("reduce-overhead", "max-autotune")


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


def parse_args(argv: list[str] | None, description: str | None = None) -> argparse.Namespace:
    """The options of ``argv`` with their defaults filled in; ``description`` heads ``--help``."""
    p = argparse.ArgumentParser(description=description)
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
