"""VQA accuracy as the official evaluation (VQA API, PythonEvaluationTools/vqaEvaluation/vqaEval.py).

Per question, as ``VQAEval.evaluate`` does:

* the prediction has ``\\n``/``\\t`` replaced by spaces and is stripped, then goes through
  ``processPunctuation`` and ``processDigitArticle``;
* the ground-truth answers go through ``processPunctuation`` only, and only when they are not
  all identical (``len(set(answers)) > 1``); they are never digit/article-processed;
* accuracy is the average, over each ground-truth answer left out in turn, of
  ``min(1, matches among the other answers / 3)``.  With 10 answers and m of them equal to the
  prediction this gives 0, 0.3, 0.6, 0.9, 1.0 for m = 0, 1, 2, 3, >=4.  Any other number of
  answers uses the same formula; note a single answer always scores 0 (no other answers).

The official script reports ``round(100 * mean, 2)``; :func:`vqa_accuracy` returns the plain
mean in [0, 1].  The contraction table is the script's, including its mix of straight and
curly apostrophes (``"dont"`` becomes ``"don’t"`` with U+2019).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["vqa_accuracy", "vqa_normalize_answer", "vqa_process_digit_article", "vqa_process_punctuation"]

_R = "\u2019"  # the right single quotation mark most entries of the official table use
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": f"couldn{_R}t{_R}ve", f"couldnt{_R}ve": f"couldn{_R}t{_R}ve", "didnt": f"didn{_R}t",
    "doesnt": f"doesn{_R}t", "dont": f"don{_R}t", "hadnt": f"hadn{_R}t", f"hadnt{_R}ve": f"hadn{_R}t{_R}ve",
    "hadn'tve": f"hadn{_R}t{_R}ve", "hasnt": f"hasn{_R}t", "havent": f"haven{_R}t", "hed": f"he{_R}d",
    f"hed{_R}ve": f"he{_R}d{_R}ve", f"he{_R}dve": f"he{_R}d{_R}ve", "hes": f"he{_R}s", "howd": f"how{_R}d",
    "howll": f"how{_R}ll", "hows": f"how{_R}s", f"Id{_R}ve": f"I{_R}d{_R}ve", f"I{_R}dve": f"I{_R}d{_R}ve",
    "Im": f"I{_R}m", "Ive": f"I{_R}ve", "isnt": f"isn{_R}t", "itd": f"it{_R}d", f"itd{_R}ve": f"it{_R}d{_R}ve",
    f"it{_R}dve": f"it{_R}d{_R}ve", "itll": f"it{_R}ll", f"let{_R}s": f"let{_R}s", "maam": f"ma{_R}am",
    "mightnt": f"mightn{_R}t", f"mightnt{_R}ve": f"mightn{_R}t{_R}ve", f"mightn{_R}tve": f"mightn{_R}t{_R}ve",
    "mightve": f"might{_R}ve", "mustnt": f"mustn{_R}t", "mustve": f"must{_R}ve", "neednt": f"needn{_R}t",
    "notve": f"not{_R}ve", "oclock": f"o{_R}clock", "oughtnt": f"oughtn{_R}t", f"ow{_R}s{_R}at": f"{_R}ow{_R}s{_R}at",
    f"{_R}ows{_R}at": f"{_R}ow{_R}s{_R}at", f"{_R}ow{_R}sat": f"{_R}ow{_R}s{_R}at", "shant": f"shan{_R}t",
    f"shed{_R}ve": f"she{_R}d{_R}ve", f"she{_R}dve": f"she{_R}d{_R}ve", f"she{_R}s": f"she{_R}s",
    "shouldve": f"should{_R}ve", "shouldnt": f"shouldn{_R}t", f"shouldnt{_R}ve": f"shouldn{_R}t{_R}ve",
    f"shouldn{_R}tve": f"shouldn{_R}t{_R}ve", f"somebody{_R}d": "somebodyd",
    f"somebodyd{_R}ve": f"somebody{_R}d{_R}ve", f"somebody{_R}dve": f"somebody{_R}d{_R}ve",
    "somebodyll": f"somebody{_R}ll", "somebodys": f"somebody{_R}s", "someoned": f"someone{_R}d",
    f"someoned{_R}ve": f"someone{_R}d{_R}ve", f"someone{_R}dve": f"someone{_R}d{_R}ve",
    "someonell": f"someone{_R}ll", "someones": f"someone{_R}s", "somethingd": f"something{_R}d",
    f"somethingd{_R}ve": f"something{_R}d{_R}ve", f"something{_R}dve": f"something{_R}d{_R}ve",
    "somethingll": f"something{_R}ll", "thats": f"that{_R}s", "thered": f"there{_R}d",
    f"thered{_R}ve": f"there{_R}d{_R}ve", f"there{_R}dve": f"there{_R}d{_R}ve", "therere": f"there{_R}re",
    "theres": f"there{_R}s", "theyd": f"they{_R}d", f"theyd{_R}ve": f"they{_R}d{_R}ve",
    f"they{_R}dve": f"they{_R}d{_R}ve", "theyll": f"they{_R}ll", "theyre": f"they{_R}re", "theyve": f"they{_R}ve",
    "twas": f"{_R}twas", "wasnt": f"wasn{_R}t", f"wed{_R}ve": f"we{_R}d{_R}ve", f"we{_R}dve": f"we{_R}d{_R}ve",
    "weve": "we've", "werent": f"weren{_R}t", "whatll": f"what{_R}ll", "whatre": f"what{_R}re",
    "whats": f"what{_R}s", "whatve": f"what{_R}ve", "whens": f"when{_R}s", "whered": f"where{_R}d",
    "wheres": "where's", "whereve": f"where{_R}ve", "whod": f"who{_R}d", f"whod{_R}ve": f"who{_R}d{_R}ve",
    f"who{_R}dve": f"who{_R}d{_R}ve", "wholl": f"who{_R}ll", "whos": f"who{_R}s", "whove": "who've",
    "whyll": f"why{_R}ll", "whyre": f"why{_R}re", "whys": f"why{_R}s", "wont": f"won{_R}t",
    "wouldve": f"would{_R}ve", "wouldnt": f"wouldn{_R}t", f"wouldnt{_R}ve": f"wouldn{_R}t{_R}ve",
    f"wouldn{_R}tve": f"wouldn{_R}t{_R}ve", "yall": f"y{_R}all", f"yall{_R}ll": f"y{_R}all{_R}ll",
    f"y{_R}allll": f"y{_R}all{_R}ll", f"yall{_R}d{_R}ve": f"y{_R}all{_R}d{_R}ve",
    f"y{_R}alld{_R}ve": f"y{_R}all{_R}d{_R}ve", f"y{_R}all{_R}dve": f"y{_R}all{_R}d{_R}ve", "youd": f"you{_R}d",
    f"youd{_R}ve": f"you{_R}d{_R}ve", f"you{_R}dve": f"you{_R}d{_R}ve", "youll": f"you{_R}ll",
    "youre": f"you{_R}re", "youve": f"you{_R}ve",
}
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(["a", "an", "the"])
# "(?!<=\d)" is a lookahead for the literal "<=" (not a lookbehind) in the official script;
# kept as is, so a period is removed whenever it is not followed by a digit.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCT = [";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?"]


def vqa_process_punctuation(text: str) -> str:
    """``processPunctuation``: each mark is deleted if it touches a space somewhere in the input
    (or the input has a digit,digit pattern), else replaced by a space; then periods not followed
    by a digit are removed (at most 32 of them: the script passes ``re.UNICODE`` as ``count``)."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def vqa_process_digit_article(text: str) -> str:
    """``processDigitArticle``: lowercase, split on whitespace, number words 'none'/'zero'..'ten'
    to digits, drop 'a'/'an'/'the', expand the contraction table, join with single spaces."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_normalize_answer(prediction: str) -> str:
    """The normalisation the official script applies to a predicted answer."""
    text = prediction.replace("\n", " ").replace("\t", " ").strip()
    return vqa_process_digit_article(vqa_process_punctuation(text))


def _score(prediction: str, answers: Sequence[str]) -> float:
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError("each question needs a non-empty list of ground-truth answers")
    pred = vqa_normalize_answer(prediction)
    gts = list(answers)
    if len(set(gts)) > 1:
        gts = [vqa_process_punctuation(a) for a in gts]
    per_left_out = []
    for i in range(len(gts)):
        matches = sum(1 for j, a in enumerate(gts) if j != i and a == pred)
        per_left_out.append(min(1, float(matches) / 3))
    return float(sum(per_left_out)) / len(per_left_out)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                 reduction: str = "mean") -> float | list[float]:
    """Official VQA accuracy of each prediction against its list of human answers.

    ``reduction="mean"`` returns the mean over questions (``nan`` for no questions),
    ``"sum"`` the sum and ``"none"`` the per-question scores.  Each answer list is treated as
    distinct annotation records (as VQA's, which carry an ``answer_id``): leaving one out
    removes exactly that entry.
    """
    if isinstance(predictions, str) or len(predictions) != len(answers):
        raise ValueError("predictions must be a sequence of strings with one answer list each")
    scores = [_score(p, a) for p, a in zip(predictions, answers)]
    if reduction == "none":
        return scores
    if reduction == "sum":
        return float(sum(scores))
    if reduction == "mean":
        return float(sum(scores)) / len(scores) if scores else float("nan")
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")
