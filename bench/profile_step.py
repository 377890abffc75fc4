"""Where the time of one training step goes (issue 8): kernel profile + kernel micro-benchmarks.

1. ``--profile``: runs the fast step of ``bench/step.py`` (same models, options and inputs),
   records a few steps with ``torch.profiler`` and prints the device time per step by kernel
   family (matrix products, attention forward/backward, fused elementwise, optimizer, copies,
   other), the device's busy share of the wall time, and the top kernels.
2. ``--kernels``: times the attention of each SDPA backend (forward + backward) and the bf16
   matrix products at the shapes of the CAV-MAE / VideoMAE steps, with their TFLOP/s, so that the
   profile's shares can be read against what each kernel family reaches alone.

Run: ``python bench/profile_step.py --profile --kernels --configs cavmae --batch 256
--compile blocks`` (``--device cpu --size tiny`` for a smoke run).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention


def _load_step_bench():
    """bench/step.py as a module, loaded from its path (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location(
        "avssl_bench_step", Path(__file__).with_name("step.py")
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  (its dataclasses look it up)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


stepbench = _load_step_bench()

FAMILIES = (  # first match wins; lower-case substrings of kernel names
    # cuDNN's SDPA: ..._sdpa_sm90_flash_bprop_... plus its dq conversion and dO.O helpers
    (
        "attention bwd",
        ("bprop", "flash_bwd", "fmha_bwd", "attention_backward", "dq_to_", "dot_do_o"),
    ),
    ("attention fwd", ("fprop", "flash_fwd", "fmha", "attention", "sdpa", "flash")),
    ("convolution", ("convolve", "conv2d", "conv3d", "convolution")),
    (  # inductor's own Triton matrix products (max-autotune) are templates named ..._mm_...
        "matmul",
        ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul", "addmm", "::mm", "bmm", "_mm_"),
    ),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("fused (triton)", ("triton",)),
    ("norm", ("layer_norm", "layernorm", "norm_")),
    (
        "copy/gather/cat",
        ("copy", "gather", "scatter", "index", "cat", "transpose", "elementwise_kernel_with_index"),
    ),
    ("elementwise/reduce", ("elementwise", "reduce", "vectorized")),
)


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def _self_time_us(evt, cuda: bool) -> float:
    attrs = ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)
    for attr in attrs:
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def profile_step(args: argparse.Namespace, device: torch.device, cfg: str) -> None:
    """Profiles ``args.steps`` fast steps of one configuration and prints the breakdown."""
    from torch.profiler import ProfilerActivity, profile

    shape = stepbench.shapes(args.size)[cfg]
    B = args.batch or shape.fast_batch
    torch.manual_seed(0)
    model = stepbench.build(cfg, args.size, shape)
    if isinstance(model, str):
        print(f"[profile] {cfg}: skipped ({model})")
        return
    model = model.to(device).train()
    torch.set_float32_matmul_precision("high")
    step, _ = stepbench.make_step(model, True, args, device)
    batch = stepbench.random_batch(shape, B, device)
    for _ in range(args.warmup):
        step(batch)
    stepbench.sync(device)
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(batch)
        stepbench.sync(device)
        wall = time.perf_counter() - t0
    kernels = []  # (name, self time us, calls)
    for evt in prof.key_averages():
        is_kernel = str(getattr(evt, "device_type", "")).endswith("CUDA")
        if cuda and not is_kernel:
            continue
        if not cuda and evt.key.startswith(("ProfilerStep", "aten::to", "cudaStream")):
            continue
        kernels.append((evt.key, _self_time_us(evt, cuda), evt.count))
    n = args.steps
    busy = sum(t for _, t, _ in kernels) / 1e3 / n  # ms per step
    per_step = 1e3 * wall / n
    what = "device kernels" if cuda else "CPU operators (self time; nested ops not split)"
    print(
        f"[profile] {cfg} fast, batch {B}, compile {args.compile}, sdpa {args.sdpa}: "
        f"{per_step:.1f} ms/step wall under the profiler, {busy:.1f} ms/step in {what} "
        f"({100 * busy / per_step:.0f}% busy), {B / wall * n:.1f} samples/s"
    )
    fams: dict[str, float] = collections.defaultdict(float)
    for name, t, _ in kernels:
        fams[family(name)] += t / 1e3 / n
    for fam, ms in sorted(fams.items(), key=lambda kv: -kv[1]):
        print(f"[profile]   {fam:20s} {ms:8.2f} ms/step {100 * ms / max(busy, 1e-9):5.1f}%")
    print(f"[profile]   top {args.top} {'kernels' if cuda else 'operators'} (ms/step, calls/step):")
    for name, t, calls in sorted(kernels, key=lambda k: -k[1])[: args.top]:
        short = name if len(name) <= 110 else name[:107] + "..."
        print(f"[profile]   {t / 1e3 / n:8.2f} {calls / n:6.1f}  {short}")
    del model, step, batch, prof
    torch._dynamo.reset()


def _time(fn, device: torch.device, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs (device events on CUDA)."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def attention_kernels(args: argparse.Namespace, device: torch.device) -> None:
    """Forward + backward time of each SDPA backend, and of compiled FlexAttention (CUDA only:
    PyTorch has no FlexAttention backward on CPU), at the steps' attention shapes."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tiny = args.size == "tiny"
    B = 4 if tiny else args.batch or 128
    shapes = {  # name: (heads, tokens, head dim)
        "cavmae decoder": (16, 708, 32),
        "cavmae audio enc": (12, 128, 64),
        "cavmae joint": (12, 177, 64),
        "videomae enc": (12, 160, 64),  # 8 slices x 20 visible positions
        "videomae decoder": (6, 1568, 64),
    }
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    flex = torch.compile(flex_attention, dynamic=False) if device.type == "cuda" else None
    tuned = None  # FlexAttention with inductor's autotuned block sizes (--flex-autotune)
    if flex is not None and args.flex_autotune:
        tuned = torch.compile(flex_attention, dynamic=False, mode="max-autotune-no-cudagraphs")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(
        f"[kernels] attention fwd+bwd, batch {B}, {dtype} (TFLOP/s counts 4*N^2*d*h fwd, 2.5x bwd)"
    )
    for label, (h, n, d) in shapes.items():
        if tiny:
            n = min(n, 64)
        q, k, v = (
            torch.randn(B, h, n, d, device=device, dtype=dtype, requires_grad=True)
            for _ in range(3)
        )
        grad = torch.randn(B, h, n, d, device=device, dtype=dtype)
        flops = 4 * B * h * n * n * d * 3.5  # fwd + bwd (2.5x fwd)
        cells = []
        for name, be in backends.items():
            if name == "math" and not tiny and n > 1000:
                cells.append(f"{name} skipped")
                continue

            def run(be=be, q=q, k=k, v=v, grad=grad) -> None:
                with sdpa_kernel([be]):
                    out = F.scaled_dot_product_attention(q, k, v)
                out.backward(grad)

            try:
                t = _time(run, device, args.reps)
                cells.append(f"{name} {1e3 * t:7.2f} ms {flops / t / 1e12:6.1f} TF/s")
            except RuntimeError as err:
                cells.append(f"{name} n/a ({str(err).splitlines()[0][:40]})")
        if flex is None:
            cells.append("flex n/a (CUDA only)")
        else:

            def run_flex(q=q, k=k, v=v, grad=grad) -> None:
                flex(q, k, v).backward(grad)

            t = _time(run_flex, device, args.reps)
            cells.append(f"flex {1e3 * t:7.2f} ms {flops / t / 1e12:6.1f} TF/s")
        if tuned is not None and label == "cavmae decoder":  # the shape that matters (d 32)

            def run_tuned(q=q, k=k, v=v, grad=grad) -> None:
                tuned(q, k, v).backward(grad)

            t = _time(run_tuned, device, args.reps)
            cells.append(f"flex autotuned {1e3 * t:7.2f} ms {flops / t / 1e12:6.1f} TF/s")
        print(f"[kernels]   {label:17s} h{h} N{n} d{d}: " + " | ".join(cells))


def matmul_kernels(args: argparse.Namespace, device: torch.device) -> None:
    """bf16 matrix-product rates at the steps' linear-layer shapes (forward GEMM only)."""
    tiny = args.size == "tiny"
    B = 4 if tiny else args.batch or 128
    shapes = {  # name: (rows M, in K, out N)
        "audio enc qkv": (B * 128, 768, 2304),
        "audio enc fc1": (B * 128, 768, 3072),
        "audio enc fc2": (B * 128, 3072, 768),
        "video enc qkv": (B * 49, 768, 2304),
        "cavmae dec qkv": (B * 708, 512, 1536),
        "cavmae dec proj": (B * 708, 512, 512),
        "cavmae dec fc1": (B * 708, 512, 2048),
        "cavmae dec fc2": (B * 708, 2048, 512),
        "8192 square": (8192, 8192, 8192),
    }
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"[kernels] matmul x[M,K] @ w[K,N], {dtype}")
    for label, (m, k, n) in shapes.items():
        if tiny:
            m, k, n = min(m, 256), min(k, 256), min(n, 256)
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(k, n, device=device, dtype=dtype)
        t = _time(lambda x=x, w=w: x @ w, device, args.reps)
        rate = 2 * m * k * n / t / 1e12
        print(f"[kernels]   {label:16s} M{m} K{k} N{n}: {1e3 * t:7.3f} ms {rate:6.1f} TF/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", action="store_true", help="profile the fast training step")
    p.add_argument("--kernels", action="store_true", help="attention and matmul micro-benchmarks")
    p.add_argument(
        "--flex-autotune", action="store_true",
        help="with --kernels on CUDA: also FlexAttention with autotuned block sizes at the "
        "CAV-MAE decoder's shape (head dim 32; compiles for a minute or more)",
    )  # fmt: skip
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--reps", type=int, default=20)
    argv = sys.argv[1:] if argv is None else argv
    own, rest = p.parse_known_args(argv)
    if not (own.kernels or own.profile):
        p.error("nothing to do: give --profile and/or --kernels")
    args = stepbench.parse_args(rest)
    configs, _ = stepbench.check_args(args)
    args.steps = min(args.steps, 5)  # the profiler's trace grows with every step
    device = torch.device(args.device)
    stepbench.set_sdpa_backend(args.sdpa)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# profile: {name}, torch {torch.__version__}")
    if own.kernels:
        args.reps = own.reps
        attention_kernels(args, device)
        matmul_kernels(args, device)
    if own.profile:
        args.top = own.top
        for cfg in configs:
            profile_step(args, device, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
