"""Every task's scoring, the LLaVA-Bench LLM judge, option likelihood, result records and the
papers' report tables.

The names below are imported on first use, so that ``perceptlm report`` (``evaluation.report``,
which reads JSON and writes tables) does not load torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Judge": "judge", "JudgeConfig": "judge", "score_llava_bench": "judge",
    "option_loglikelihood_choice": "likelihood", "option_loglikelihoods": "likelihood",
    "baseline_gaps": "records", "benchmark_label": "records", "config_hash": "records", "gather_records": "records", "results_summary": "records",
    "write_results": "records",
    "TASKS": "scoring", "likelihood_accuracy": "scoring", "score": "scoring", "score_records": "scoring",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'perceptlm.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"perceptlm.evaluation.{_EXPORTS[name]}"), name)
