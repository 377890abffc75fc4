"""bench/profile_step.py: kernel families of real GPU kernel names; a CPU smoke run at tiny size."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "profile_step.py"


@pytest.fixture(scope="module")
def profile_module():
    spec = importlib.util.spec_from_file_location("avssl_bench_profile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, fam",
    [  # kernel names as the profiler reported them on an H200 (torch 2.11, cuDNN SDPA, cuBLAS)
        ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", "attention bwd"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7", "attention fwd"),
        ("void cudnn::fusion::convert_dq_to_16bits<true>(void const*, void*)", "attention bwd"),
        ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<", "attention bwd"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<", "attention fwd"),
        ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
        ("void implicit_convolve_sgemm<__nv_bfloat16, __nv_bfloat16, 1024, 5, 5>", "convolution"),
        ("triton_poi_fused_gelu_gelu_backward_view_4", "fused (triton)"),
        # inductor's templates (FlexAttention; max-autotune matrix products with epilogues)
        ("triton_tem_fused_flex_attention_0", "attention fwd"),
        ("triton_tem_fused_flex_attention_backward_2", "attention bwd"),
        ("triton_tem_fused_mm_0", "matmul"),
        ("triton_tem_fused_addmm_gelu_t_9", "matmul"),
        (
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedOptimizer",
            "optimizer",
        ),
        ("void at::native::vectorized_layer_norm_kernel<float, float>", "norm"),
        ("void at::native::_scatter_gather_elementwise_kernel<128, 4>", "copy/gather/cat"),
        (
            "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float>>",
            "elementwise/reduce",
        ),
        ("Memset (Device)", "other"),
    ],
)
def test_kernel_families(profile_module, name, fam) -> None:
    assert profile_module.family(name) == fam


def test_profile_runs_on_cpu_at_tiny_size() -> None:
    args = ["--profile", "--kernels", "--device", "cpu", "--size", "tiny", "--configs", "cavmae"]
    args += ["--steps", "2", "--warmup", "1", "--threads", "1", "--reps", "2", "--top", "5"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[profile]")]
    head = lines[0]
    assert "cavmae fast, batch 2" in head and "samples/s" in head
    busy = float(head.split(" ms/step in ")[0].split(", ")[-1])
    # the families partition the recorded operators: their times add up to the busy time
    fams = [line.split() for line in lines[1:] if "% " not in line and line.rstrip().endswith("%")]
    total = sum(float(parts[-3]) for parts in fams)
    assert fams and total == pytest.approx(busy, rel=0.02, abs=0.05)
    assert "matmul" in proc.stdout  # the linear layers' products were seen
    assert sum("ms/step" not in line and "top" not in line for line in lines[1:]) == 5  # --top 5
    kernels = [line for line in proc.stdout.splitlines() if line.startswith("[kernels]")]
    assert any("cavmae decoder" in line and "flash" in line and "TF/s" in line for line in kernels)
    assert any("cavmae decoder" in line and "flex n/a (CUDA only)" in line for line in kernels)
    assert any("cavmae dec fc1" in line for line in kernels)


def test_profile_needs_a_task() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "nothing to do" in proc.stderr
