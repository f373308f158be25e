"""Smoke runs of the benchmarks in ``experiments/benchmarks`` (tiny backbones, one repetition): each
script runs end to end and writes JSON with the fields its README row reads. Not a timing test;
the checks that can fail here are the correctness checks the benchmarks carry (the LLaVA peer's
logits, cached vs uncached decoding, the FLOP formula against the flop counter)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


def _script(name: str):
    """Import ``experiments/benchmarks/<name>.py`` (its helpers import as top-level modules)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str, tmp_path: Path, *argv: str) -> dict:
    output = tmp_path / f"{name}.json"
    returned = _script(name).main(["--smoke", "--output", str(output), *argv])
    written = json.loads(output.read_text())
    assert written["command"].startswith(f"python experiments/benchmarks/{name}.py --smoke")
    machine = written["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] == torch.__version__
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    assert written["benchmark"] == returned["benchmark"]
    return written


def test_token_count(tmp_path):
    result = _run("token_count", tmp_path, "--presets", "limber-all,depalm-qp-inner", "--batch-size", "2")
    rows = result["presets"]
    assert set(rows) == {"depalm-qp-l0", "limber-all", "depalm-qp-inner"}
    assert rows["limber-all"]["visual_tokens"] == 17 and rows["depalm-qp-l0"]["visual_tokens"] == 32
    for name in ("limber-all", "depalm-qp-inner"):
        assert rows[name]["seconds_per_sample"] > 0 and rows[name]["ratio_to_reference"] > 0
        assert rows[name]["flops_per_sample"] > 0
    assert rows["depalm-qp-l0"]["ratio_to_reference"] == 1.0
    assert rows["limber-all"]["flops_7b_per_sample"]["llm_sequence"] == 17 + 24
    assert rows["depalm-qp-inner"]["flops_7b_per_sample"] is None  # no prefix: no projection
    assert result["target"]["measured"] == rows["limber-all"]["ratio_to_reference"]
    assert [b["preset"] for b in result["blocks"]] == ["limber-all", "depalm-qp-inner"]


def test_framework_overhead(tmp_path):
    result = _run("framework_overhead", tmp_path)
    config = result["config"]
    intervals = config["repeats"] * (config["steps_per_run"] - config["dropped_intervals"])
    assert len(result["step_seconds"]["lightning"]) == len(result["step_seconds"]["hand"]) == intervals >= 1
    ratio = result["median_step_seconds"]["lightning"] / result["median_step_seconds"]["hand"]
    assert result["ratio_lightning_over_hand"] == pytest.approx(ratio, rel=1e-3)
    assert isinstance(result["target"]["met"], bool)


def test_llava_peer_matches_transformers(tmp_path):
    result = _run("llava_peer", tmp_path)
    assert result["config"]["visual_tokens"] == 16  # 32 px / patch 8, CLS dropped
    assert result["max_abs_logit_difference"] <= 1e-4
    assert result["loss"]["abs_difference"] <= 1e-4
    assert result["trainable_parameters"]["perceptlm"] == result["trainable_parameters"]["transformers_llava"]
    assert result["ratio_perceptlm_over_llava"] > 0


def test_activation_memory_counts_less_with_checkpointing(tmp_path):
    presets = _run("activation_memory", tmp_path)["presets"]
    for row in presets.values():
        assert 0 < row["checkpointed_per_layer"] < row["plain_per_layer"] and row["ratio"] > 2
    assert presets["limber-all"]["plain_per_layer"] > presets["depalm-qp-l0"]["plain_per_layer"]  # 281 vs 57 positions


def test_decoding(tmp_path):
    result = _run("decoding", tmp_path, "--batch-size", "4", "--single-samples", "2", "--max-new-tokens", "4")
    assert 0 < result["tokens"]["uncached_single"] <= 2 * 4 and 0 < result["tokens"]["cached_batch"] <= 4 * 4
    assert result["identical_sequences"] == "2/2"  # the KV cache and left padding change nothing
    assert result["speedup_cached_batch_over_uncached_single"] > 0


def test_memory_runs_each_preset_in_a_fresh_process(tmp_path):
    result = _run("memory", tmp_path, "--presets", "limber-1")
    row = result["presets"]["limber-1"]
    assert row["peak_rss_step"] >= row["rss_before_step"] > 0
    # safetensors: the float32 trainable weights (64 -> 64 Linear + bias) plus a small header
    assert row["trainable_parameters"] == 64 * 64 + 64
    assert 4 * row["trainable_parameters"] <= row["checkpoint_bytes"] <= 4 * row["trainable_parameters"] + 4096


def test_gpu_script_on_cpu_with_a_tiny_config(tmp_path):
    output = tmp_path / "gpu.json"
    result = _script("gpu").main(["--tiny", "--steps", "2", "--batch-size", "2", "--device", "cpu",
                                        "--output", str(output)])
    written = json.loads(output.read_text())
    assert written == json.loads(json.dumps(result, default=str))
    assert len(written["step_seconds"]) == 2 and written["median_step_seconds"] > 0
    assert written["tokens_per_second"] == pytest.approx(2 * written["config"]["llm_sequence"] / written["median_step_seconds"], rel=1e-3)
    flops = written["flops_per_step"]
    # the formula against torch's flop counter (CPU attention kernels may go uncounted)
    assert 0.98 * (flops["total"] - flops["llm"]["attention"]) <= written["flops_counted_step"] <= 1.02 * flops["total"]
    assert written["mfu"] is None and written["peak_bf16_tflops"] is None  # CPU: no peak


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_script_on_a_gpu(tmp_path):
    result = _script("gpu").main(["--steps", "3", "--output", str(tmp_path / "gpu.json")])
    assert result["mfu"] is None or 0 < result["mfu"] < 1
    assert result["max_memory_allocated_bytes"] > 0


def test_flop_formula_counts_the_llm_matrices():
    flops = _script("flops")
    gpu = _script("gpu")
    llm = gpu.build_llm(tiny=True, device=torch.device("cpu"), dtype=torch.float32)
    dims = flops.llm_dimensions(llm.config)
    matrices = sum(m.weight.numel() for layer in llm.layers for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert flops.llm_matmul_parameters(**dims) == matrices
    llama_7b = dict(hidden=4096, layers=32, heads=32, kv_heads=32, ffn=11008, vocab=32000)
    assert flops.llm_matmul_parameters(**llama_7b) == 6_476_005_376  # LLaMA-7B without embeddings and norms
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and flops.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert flops.peak_tflops("NVIDIA H100 PCIe") == 756.0 and flops.peak_tflops("Some Other Accelerator") is None


def test_gpu_script_times_a_second_preset_alternately(tmp_path):
    result = _script("gpu").main(["--tiny", "--steps", "2", "--batch-size", "2", "--device", "cpu", "--compare",
                                  "limber-all", "--output", str(tmp_path / "gpu.json")])
    comparison = result["comparison"]
    assert comparison["preset"] == "limber-all" and len(comparison["step_seconds"]) == 2
    assert comparison["time_ratio_to_reference"] == pytest.approx(
        comparison["median_step_seconds"] / result["median_step_seconds"], rel=1e-3)
    # LiMBeR-all feeds every feature token (17 in the tiny geometry) to the LLM
    assert comparison["llm_sequence"] == 17 + 24
