"""Caption metrics of coco-caption (pycocoevalcap): CIDEr-D, BLEU-1..4, ROUGE-L, METEOR.

Scores are on coco-caption's raw scale (CIDEr around 0-10 with 1.0 = 100 "CIDEr points";
BLEU/ROUGE-L/METEOR in [0, 1]); papers usually report them multiplied by 100.

With ``tokenize=True`` predictions and references are first normalised by
:func:`~perceptlm.metrics.functional.text.ptb_tokenize_batch`, as ``COCOEvalCap.evaluate``
does (references and predictions are tokenized as two separate streams, image by image).
The arithmetic follows the reference implementations operation by operation (including
numpy's summation order), so results agree with pycocoevalcap to the last bit.
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Sequence
from importlib.util import find_spec

import numpy as np

from perceptlm.metrics.functional.text import ptb_tokenize_batch

__all__ = ["bleu", "cider", "cider_scores", "meteor", "rouge_l", "rouge_l_scores", "tokenize_captions"]


def tokenize_captions(predictions: Sequence[str],
                      references: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """coco-caption tokenization of a prediction list and its reference lists (two streams, as
    ``COCOEvalCap.evaluate`` tokenizes ``res`` and ``gts``); feed the result with ``tokenize=False``."""
    return _prepare(predictions, references, True)


def _prepare(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool):
    if isinstance(predictions, str) or len(predictions) != len(references):
        raise ValueError("predictions must be a sequence of strings with one entry per references list")
    if any(isinstance(refs, str) or len(refs) == 0 for refs in references):
        raise ValueError("every item needs a non-empty list of reference strings")
    if not tokenize:
        return list(predictions), [list(refs) for refs in references]
    preds = ptb_tokenize_batch(predictions)
    flat = ptb_tokenize_batch([r for refs in references for r in refs])
    grouped, k = [], 0
    for refs in references:
        grouped.append(flat[k:k + len(refs)])
        k += len(refs)
    return preds, grouped


def _ngram_counts(sentence: str, n: int = 4) -> dict[tuple[str, ...], int]:
    """n-gram counts, 1-grams first then 2-grams..., each left to right (precook in the references)."""
    words = sentence.split()
    counts: dict[tuple[str, ...], int] = {}
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            gram = tuple(words[i:i + k])
            counts[gram] = counts.get(gram, 0) + 1
    return counts


# --- CIDEr-D (coco-caption, cider/cider_scorer.py) ------------------------------------------

def _tfidf(counts, idf, n):
    """Per-order tf-idf vectors, their norms, and the length term (the reference counts bigrams)."""
    vecs: list[dict] = [{} for _ in range(n)]
    norms = [0.0] * n
    length = 0
    for gram, tf in counts.items():
        order = len(gram) - 1
        value = float(tf) * idf(gram)
        vecs[order][gram] = value
        norms[order] += pow(value, 2)
        if order == 1:
            length += tf
    return vecs, [math.sqrt(x) for x in norms], length


def cider_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True,
                 n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D corpus score and per-image scores (coco-caption, cider_scorer.py).

    Document frequencies come from the evaluated references, idf uses ``log(max(1, df))``
    against ``log(number of images)``; candidate tf-idf values are clipped by the reference
    ones, cosine similarities are damped by a Gaussian on the length difference (the reference
    measures length in bigrams), averaged over n-gram orders and references, and scaled by 10.
    Logs and means go through numpy as in the reference; the rest is IEEE-identical Python
    float arithmetic in the reference's order.
    """
    preds, refs = _prepare(predictions, references, tokenize)
    test_counts = [_ngram_counts(p, n) for p in preds]
    ref_counts = [[_ngram_counts(r, n) for r in rs] for rs in refs]
    doc_freq: dict[tuple[str, ...], float] = {}
    for image_refs in ref_counts:
        for gram in {g for counts in image_refs for g in counts}:
            doc_freq[gram] = doc_freq.get(gram, 0.0) + 1
    log_num_images = float(np.log(float(len(ref_counts))))
    log_df: dict[float, float] = {}

    def idf(gram: tuple[str, ...]) -> float:
        df = max(1.0, doc_freq.get(gram, 0.0))
        if df not in log_df:
            log_df[df] = float(np.log(df))
        return log_num_images - log_df[df]

    scores = []
    for counts, image_refs in zip(test_counts, ref_counts):
        vec, norm, length = _tfidf(counts, idf, n)
        total = [0.0] * n
        for r_counts in image_refs:
            r_vec, r_norm, r_length = _tfidf(r_counts, idf, n)
            penalty = np.e ** (-(float(length - r_length) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                sim = 0.0
                ref_k = r_vec[k]
                for gram, value in vec[k].items():
                    r_value = ref_k.get(gram, 0.0)
                    sim += min(value, r_value) * r_value
                if norm[k] != 0 and r_norm[k] != 0:
                    sim /= norm[k] * r_norm[k]
                total[k] += sim * penalty
        score = np.mean(np.array(total))
        score /= len(image_refs)
        score *= 10.0
        scores.append(score)
    return float(np.mean(np.array(scores))), [float(s) for s in scores]


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True) -> float:
    """CIDEr-D as coco-caption's ``Cider`` (n=4, sigma=6), raw scale (papers report x100).

    With ``tokenize=False`` the strings are taken as already tokenized and split on whitespace.
    """
    return cider_scores(predictions, references, tokenize)[0]


# --- BLEU (coco-caption, bleu/bleu_scorer.py, option "closest") -----------------------------

def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True,
         n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as coco-caption's ``Bleu`` (``BleuScorer.compute_score(option='closest')``).

    Clipped n-gram matches and guesses are summed over the corpus; the reference length of each
    image is the one closest to the candidate length (shorter on ties); a brevity penalty
    ``exp(1 - r/c)`` applies when the corpus is shorter than its references.  The constants
    ``tiny=1e-15`` and ``small=1e-9`` guard zero counts exactly as in the reference.
    """
    preds, refs = _prepare(predictions, references, tokenize)
    tiny, small = 1e-15, 1e-9
    test_len = ref_len = 0
    guess, correct = [0] * n, [0] * n
    for pred, image_refs in zip(preds, refs):
        max_counts: dict[tuple[str, ...], int] = {}
        lengths = []
        for ref in image_refs:
            lengths.append(len(ref.split()))
            for gram, count in _ngram_counts(ref, n).items():
                max_counts[gram] = max(max_counts.get(gram, 0), count)
        length = len(pred.split())
        test_len += length
        ref_len += min((abs(ell - length), ell) for ell in lengths)[1]
        for k in range(n):
            guess[k] += max(0, length - k)
        for gram, count in _ngram_counts(pred, n).items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), count)

    scores, product = [], 1.0
    for k in range(n):
        product *= float(correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


# --- ROUGE-L (coco-caption, rouge/rouge.py) -------------------------------------------------

def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diag = 0
        for j, y in enumerate(b, start=1):
            diag, row[j] = row[j], diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True,
                   beta: float = 1.2) -> tuple[float, list[float]]:
    """ROUGE-L corpus score and per-image scores (coco-caption, rouge.py).

    Per image: LCS precision and recall against every reference, the maxima of each taken
    separately, combined as an F-measure with ``beta = 1.2``; the corpus score is the mean over
    images.  Sentences are split on single spaces, as in the reference (so ``""`` is one empty token).
    """
    preds, refs = _prepare(predictions, references, tokenize)
    scores = []
    for pred, image_refs in zip(preds, refs):
        cand = pred.split(" ")
        precisions, recalls = [], []
        for ref in image_refs:
            ref_tokens = ref.split(" ")
            lcs = _lcs_length(ref_tokens, cand)
            precisions.append(lcs / float(len(cand)))
            recalls.append(lcs / float(len(ref_tokens)))
        p, r = max(precisions), max(recalls)
        if p != 0 and r != 0:
            scores.append(((1 + beta ** 2) * p * r) / float(r + beta ** 2 * p))
        else:
            scores.append(0.0)
    return float(np.mean(np.array(scores))), scores


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True) -> float:
    """ROUGE-L as coco-caption's ``Rouge`` (beta 1.2), in [0, 1] (papers report x100)."""
    return rouge_l_scores(predictions, references, tokenize)[0]


# --- METEOR (coco-caption, meteor/meteor.py; needs Java and pycocoevalcap's meteor-1.5.jar) ---

def meteor(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True) -> float | None:
    """METEOR 1.5 through pycocoevalcap's wrapper, or ``None`` when Java or the jar is unavailable.

    ``None`` means "not computed", never a score of 0.
    """
    if shutil.which("java") is None or find_spec("pycocoevalcap") is None:
        return None
    preds, refs = _prepare(predictions, references, tokenize)
    try:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            score, _ = scorer.compute_score({i: r for i, r in enumerate(refs)}, {i: [p] for i, p in enumerate(preds)})
        finally:
            del scorer
        return float(score)
    except Exception as err:  # a missing jar, a JVM that fails to start, a broken pipe
        warnings.warn(f"METEOR unavailable: {err!r}", RuntimeWarning, stacklevel=2)
        return None
