"""CPU run settings: bfloat16 only on CPUs that compute it natively; a warning for oversubscribed threads."""

from __future__ import annotations

from pathlib import Path

import pytest

from perceptlm.cli import cli
from perceptlm.training.cpu import check_threads, cpu_flags, cpu_precision, has_native_bf16

CONFIG = Path(__file__).parents[1] / "experiments" / "easyvqa" / "depalm_qp_l0.yaml"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
NEOVERSE = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def _cpuinfo(tmp_path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    assert cpu_flags(_cpuinfo(tmp_path, AVX2)) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert not has_native_bf16(_cpuinfo(tmp_path, AVX2))
    assert has_native_bf16(_cpuinfo(tmp_path, SAPPHIRE)) and has_native_bf16(_cpuinfo(tmp_path, NEOVERSE))


def test_bf16_on_a_cpu_without_it_runs_float32_and_says_so(tmp_path):
    avx2, sapphire = _cpuinfo(tmp_path, AVX2), tmp_path / "sapphire"
    sapphire.write_text(SAPPHIRE)
    with pytest.warns(UserWarning, match="no native bfloat16.*uses precision '32-true'"):
        assert cpu_precision("bf16-mixed", avx2) == "32-true"
    assert cpu_precision("bf16-mixed", sapphire) == "bf16-mixed"
    assert cpu_precision("32-true", avx2) == "32-true" and cpu_precision(None, avx2) is None


def test_the_cli_applies_the_cpu_precision(tmp_path):
    args = ["--config", str(CONFIG), "--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm",
            "test-tiny-llama", "--model.init_args.connector", '{"width": 64, "num_queries": 4}',
            "--trainer.precision", "bf16-mixed", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path)]
    expected = "bf16-mixed" if has_native_bf16() else "32-true"
    built = cli(args, run=False)
    assert built.trainer.precision == expected


def test_more_threads_than_cores_warns(monkeypatch, recwarn):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    with pytest.warns(UserWarning, match="8 threads requested but this process has 2 cores"):
        check_threads()
    check_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    check_threads()
    assert not recwarn.list  # at most as many threads as cores: silent
