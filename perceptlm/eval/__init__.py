from perceptlm.eval.judge import Judge, JudgeConfig, score_llava_bench
from perceptlm.eval.likelihood import option_loglikelihood_choice, option_loglikelihoods
from perceptlm.eval.scoring import TASKS, likelihood_accuracy, score_instruction

__all__ = ["TASKS", "Judge", "JudgeConfig", "likelihood_accuracy", "option_loglikelihood_choice", "option_loglikelihoods",
           "score_instruction", "score_llava_bench"]
