"""Every task's scoring, the LLaVA-Bench LLM judge, option likelihood, result records and the
papers' report tables."""

from perceptlm.evaluation.judge import Judge, JudgeConfig, score_llava_bench
from perceptlm.evaluation.likelihood import option_loglikelihood_choice, option_loglikelihoods
from perceptlm.evaluation.records import baseline_gaps, config_hash, gather_records, results_summary, write_results
from perceptlm.evaluation.scoring import TASKS, likelihood_accuracy, score, score_records

__all__ = ["TASKS", "Judge", "JudgeConfig", "baseline_gaps", "config_hash", "gather_records", "likelihood_accuracy", "option_loglikelihood_choice",
           "option_loglikelihoods", "results_summary", "score", "score_llava_bench", "score_records", "write_results"]
