"""bench/step.py: runs on CPU at tiny size (no timing asserted); FLOPs at the reference shapes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "step.py"

# runs the script as __main__ and then reports whether heavy optional packages were imported
HARNESS = """
import runpy, sys
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
rc = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exit_:
    rc = exit_.code or 0
print("HEAVY_IMPORTS", sorted({"av", "webdataset", "faiss"} & set(sys.modules)))
sys.exit(rc)
"""


def _load_step_module():
    spec = importlib.util.spec_from_file_location("avssl_bench_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def _run_script(args: list[str]) -> subprocess.CompletedProcess:
    """Runs bench/step.py under HARNESS in a fresh interpreter; fails the test on exit != 0."""
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _rows(out: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] in ("baseline", "fast") and parts[2].isdigit():
            rows[(parts[0], parts[1])] = parts[2:]
    return rows


def test_step_bench_runs_on_cpu_at_tiny_size() -> None:
    args = ["--device", "cpu", "--size", "tiny", "--steps", "2", "--warmup", "1", "--threads", "1"]
    proc = _run_script(args)
    out = proc.stdout
    rows = _rows(out)
    for cfg in ("cavmae", "videomae"):
        for variant in ("baseline", "fast"):
            batch, sps, gflop = rows[(cfg, variant)][:3]
            assert int(batch) == 2 and float(sps) > 0 and float(gflop) > 0
        assert f"{cfg:9s} fast / baseline =" in out
    assert ("mavil", "fast") in rows or "mavil     baseline  skipped" in out
    assert "HEAVY_IMPORTS []" in out  # no PyAV / webdataset / faiss without --data
    assert "reference best" not in out  # the reference figures belong to the base shapes


def test_step_bench_rejects_bad_options(tmp_path: Path) -> None:
    step = _load_step_module()
    with pytest.raises(SystemExit, match="unknown config 'nope'"):
        step.main(["--device", "cpu", "--size", "tiny", "--configs", "nope"])
    with pytest.raises(SystemExit, match="no such prepared dataset"):
        step.main(["--device", "cpu", "--size", "tiny", "--data", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="--sdpa flex needs --device cuda and --compile"):
        step.main(["--device", "cpu", "--size", "tiny", "--sdpa", "flex", "--compile", "blocks"])
    with pytest.raises(SystemExit, match="--without-audio must be >= 0"):
        step.main(["--device", "cpu", "--configs", "mavil", "--without-audio", "-1"])
    with pytest.raises(SystemExit, match="applies to the mavil config only"):
        step.main(["--device", "cpu", "--configs", "cavmae", "--without-audio", "1"])


def test_step_bench_runs_mavils_masked_fusion(monkeypatch) -> None:
    """``--without-audio 1``: the timed MAViL batches hold a clip without audio, so the joint
    layers get the clips' flags (a key mask); without it they get none."""
    from avssl.models.fusion import JointFusion

    seen: list[bool] = []
    forward = JointFusion.forward

    def spy(self, audio, video, audio_ok=None, video_ok=None):
        seen.append(audio_ok is not None and not bool(audio_ok.all()))
        return forward(self, audio, video, audio_ok, video_ok)

    monkeypatch.setattr(JointFusion, "forward", spy)
    step = _load_step_module()
    batch = step.random_batch(step.shapes("tiny")["mavil"], 3, torch.device("cpu"), 1)
    assert batch.audio_mask.tolist() == [False, True, True] and not batch.audio[0].any()
    base = ["--device", "cpu", "--size", "tiny", "--configs", "mavil", "--variants", "fast"]
    base += ["--steps", "1", "--warmup", "1", "--batch", "3", "--threads", "1"]
    assert step.main([*base, "--without-audio", "1"]) == 0
    assert sum(seen) >= 2  # warm-up and timed step (the FLOP count's batch has every clip)
    seen.clear()
    assert step.main(base) == 0
    assert seen and not any(seen)


def test_default_size_is_the_reference_on_a_gpu_and_tiny_on_a_cpu() -> None:
    """`make bench` runs step.py without options: on a CPU the base shapes need more memory
    than 24 GB (the fp32 CAV-MAE baseline at batch 48 was killed), so the default is tiny."""
    step = _load_step_module()
    assert step.parse_args(["--device", "cpu"]).size == "tiny"
    assert step.parse_args(["--device", "cuda"]).size == "base"
    assert step.parse_args(["--device", "cpu", "--size", "base"]).size == "base"


def test_compile_mode_and_flex_reach_the_fast_step(monkeypatch) -> None:
    """``--compile-mode`` goes to torch.compile of the blocks; ``--sdpa flex`` switches every
    attention layer of the fast step (checked without compiling: compile_blocks is recorded)."""
    step = _load_step_module()
    seen: list[dict] = []
    monkeypatch.setattr(step, "compile_blocks", lambda model, **kw: seen.append(kw) or 0)
    args = step.parse_args(["--device", "cpu", "--size", "tiny", "--compile", "blocks"])
    args.compile_mode, args.sdpa = "max-autotune-no-cudagraphs", "flex"
    model = step.build("videomae", "tiny", step.shapes("tiny")["videomae"])
    step.make_step(model, True, args, torch.device("cpu"))
    assert seen == [{"mode": "max-autotune-no-cudagraphs"}]
    layers = [m for m in model.modules() if hasattr(m, "flex")]
    assert layers and all(m.flex for m in layers)
    args.compile_mode, args.sdpa = "default", "auto"
    step.make_step(model, True, args, torch.device("cpu"))
    assert seen[-1] == {} and not any(m.flex for m in layers)


def test_cuda_graph_modes_mark_every_step(monkeypatch) -> None:
    """With ``--compile-mode reduce-overhead`` (CUDA graphs replayed) each step is marked as a new
    one before its forward, so graph outputs of the last step may be overwritten; the default
    mode marks nothing (checked without compiling: compile_blocks is recorded)."""
    step = _load_step_module()
    seen: list[dict] = []
    marks: list[int] = []
    monkeypatch.setattr(step, "compile_blocks", lambda model, **kw: seen.append(kw) or 0)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    shape = step.shapes("tiny")["videomae"]
    batch = step.random_batch(shape, 2, torch.device("cpu"))
    for mode, expected in (("reduce-overhead", 3), ("default", 0)):
        marks.clear()
        args = step.parse_args(["--device", "cpu", "--size", "tiny", "--compile", "blocks"])
        args.compile_mode = mode
        model = step.build("videomae", "tiny", shape)
        fn, _ = step.make_step(model, True, args, torch.device("cpu"))
        for _ in range(3):
            assert torch.isfinite(fn(batch))
        assert len(marks) == expected, mode
    assert seen == [{"mode": "reduce-overhead"}, {}]


@pytest.mark.parametrize("name,expected", [("cavmae", 238.0), ("videomae", 205.0)])
def test_reference_configs_do_the_reference_work(name: str, expected: float) -> None:
    """FLOPs per sample at the reference shapes (counted on the meta device, no compute)
    match DESIGN section 7: CAV-MAE 238 GFLOP, VideoMAE 205 GFLOP (fwd + bwd)."""
    step = _load_step_module()
    shape = step.shapes("base")[name]
    with torch.device("meta"):
        model = step.build(name, "base", shape)
    model = model.to("meta")  # buffers built on the CPU too
    batch = step.random_batch(shape, 2, torch.device("cpu")).to("meta")
    gflop = step.count_flops(model, batch) / 1e9
    assert gflop == pytest.approx(expected, rel=0.03)


def test_the_videomae_step_keeps_videomaes_visible_tokens() -> None:
    """VideoMAE's tube masking masks int(0.9 * 196) = 176 positions of each slice: 8 slices x 20
    visible = 160 tokens go through the encoder (MAE's count, 19 per slice, did 5 % less work)."""
    step = _load_step_module()
    shape = step.shapes("base")["videomae"]
    with torch.device("meta"):
        model = step.build("videomae", "base", shape)
    model = model.to("meta")
    seen = []
    features = model.video.forward_features

    def record(video, keep):
        seen.append(tuple(keep.shape))
        return features(video, keep)

    model.video.forward_features = record
    model(step.random_batch(shape, 2, torch.device("cpu")).to("meta"))
    assert seen == [(2, 160)]


def test_peak_flops_tell_the_pcie_and_nvl_parts_apart(monkeypatch) -> None:
    step = _load_step_module()
    args = step.parse_args(["--device", "cpu"])
    got = {}
    names = ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
             "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB", "NVIDIA L4"]  # fmt: skip
    for name in names:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda _d, n=name: n)
        got[name] = step.peak_flops(args, torch.device("cuda"))
    assert got == {
        "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
        "NVIDIA H200": 989e12, "NVIDIA H200 NVL": 835e12, "NVIDIA A100-SXM4-80GB": 312e12,
        "NVIDIA L4": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    "features,repeats,keyframes,audio",
    [
        ("loader", 1, False, "flac"),
        ("device", 1, True, "wav"),
        ("device", 2, False, "flac"),
        ("device", 1, False, "jpeg"),
    ],
)
def test_fed_step_runs_from_shards_with_features_either_place(
    features: str, repeats: int, keyframes: bool, audio: str, tmp_path_factory
):
    from tests.test_recipes import build_tiny_shards

    jpeg = audio == "jpeg"  # JPEG frames at 1 fps with WAV audio
    shards = build_tiny_shards(
        tmp_path_factory.getbasetemp(), "wav" if jpeg else audio, 1.0 if jpeg else 0.0
    )
    args = ["--device", "cpu", "--size", "tiny", "--configs", "cavmae", "--variants", "fast",
            "--steps", "2", "--warmup", "1", "--threads", "1", "--workers", "1",
            "--data", str(shards), "--split", "all", "--features", features,
            "--repeats", str(repeats)] + ["--keyframe-starts"] * keyframes  # fmt: skip
    proc = _run_script(args)
    fed = [line for line in proc.stdout.splitlines() if line.split()[:1] == ["+data"]]
    assert len(fed) == 1, proc.stdout
    where = "features in the loader" if features == "loader" else "features on the device"
    if repeats > 1:
        where += f"; {repeats} entries per decoded sample"
    if keyframes:
        where += "; clips start on keyframes"
    if audio in ("wav", "jpeg"):
        where += "; WAV audio"
    if jpeg:
        where += "; JPEG frames at 1 fps"
    assert fed[0].endswith(where) and float(fed[0].split()[2]) > 0, fed[0]


def test_compile_stacks_covers_every_block_of_the_cavmae_step(monkeypatch) -> None:
    """``--compile stacks``: every transformer block runs inside a compiled graph, the shared
    layer's single-modality passes (the contrastive branch) too (before, those ran eagerly)."""
    import collections

    from avssl.models.layers import Block

    step = _load_step_module()
    shape = step.shapes("tiny")["cavmae"]
    model = step.build("cavmae", "tiny", shape)
    names = {id(m): n.split(".")[0] for n, m in model.named_modules()}
    seen: collections.Counter = collections.Counter()
    forward = Block.forward

    def spy(self, x):
        seen[(names[id(self)], torch.compiler.is_compiling())] += 1
        return forward(self, x)

    monkeypatch.setattr(Block, "forward", spy)
    torch._dynamo.reset()
    step.compile_stacks(model, backend="eager")
    model(step.random_batch(shape, 2, torch.device("cpu")))
    torch._dynamo.reset()
    assert seen and all(compiled for _, compiled in seen), dict(seen)
    assert seen[("fusion", True)] == 3  # the joint pass and one pass per modality
