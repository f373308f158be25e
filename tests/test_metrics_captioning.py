"""CIDEr-D / BLEU / ROUGE-L / METEOR against coco-caption (pycocoevalcap) and hand-computed values."""

import contextlib
import io
import math
import random
import shutil

import pytest

from perceptlm.metrics.functional import bleu, cider, cider_scores, meteor, rouge_l, rouge_l_scores
from perceptlm.metrics.functional import captioning

# --- hand-computed values (no reference package needed) -------------------------------------


def test_cider_identical_captions_with_disjoint_vocabularies():
    # Two images, each prediction equal to its only reference, no n-gram shared across images:
    # every df is 1, idf = log(2) - log(1) for all n-grams, so each order's cosine is 1 and the
    # length penalty is exp(0) = 1.  Four words -> 4 orders present -> mean 1 -> x10 = 10.
    preds = ["red dog runs fast", "blue cat sleeps well"]
    assert cider(preds, [[p] for p in preds], tokenize=False) == pytest.approx(10.0, rel=1e-12)
    # Three words: the 4-gram vectors are empty (similarity 0) -> mean (1+1+1+0)/4 -> 7.5.
    preds = ["red dog runs", "blue cat sleeps"]
    assert cider(preds, [[p] for p in preds], tokenize=False) == pytest.approx(7.5, rel=1e-12)


def test_cider_single_image_is_zero():
    # log(number of images) = log(1) = 0 and idf = 0 - log(df) <= 0 ... every weight is 0.
    assert cider(["a dog on a bed"], [["a dog on a bed"]], tokenize=False) == 0.0


def test_bleu_hand_computed():
    # pred "the cat sat on the mat" vs ref "the cat is on the mat" (same length, no brevity
    # penalty beyond the 1e-15/1e-9 guards): clipped matches 5/6, 3/5, 1/4, 0/3.
    # BLEU-1 = 5/6; BLEU-2 = sqrt(5/6*3/5) = sqrt(1/2); BLEU-3 = (1/8)^(1/3) = 1/2;
    # BLEU-4 = (1/8 * 1e-15/3)^(1/4) (the "tiny" constant stands in for the zero count).
    scores = bleu(["the cat sat on the mat"], [["the cat is on the mat"]], tokenize=False)
    expected = [5 / 6, math.sqrt(0.5), 0.5, (0.125 * 1e-15 / 3) ** 0.25]
    assert scores == pytest.approx(expected, rel=1e-8)


def test_bleu_brevity_penalty_uses_closest_reference_length():
    # Candidate of 2 words; references of 6 and 3 words -> closest is 3 -> BP = exp(1 - 3/2).
    scores = bleu(["the cat"], [["the cat is on the mat", "the black cat"]], tokenize=False)
    assert scores[0] == pytest.approx(math.exp(1 - 3 / 2), rel=1e-8)


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 -> P = R = 5/6 -> F = 5/6.
    assert rouge_l(["the cat sat on the mat"], [["the cat is on the mat", "a dog"]], tokenize=False) == \
        pytest.approx(5 / 6, rel=1e-12)
    # "the cat" vs the same reference: P = 1, R = 2/6; F = (1+1.2^2)*P*R / (R + 1.2^2*P)
    #   = 2.44 * (1/3) / (1/3 + 1.44) = 0.458646...
    _, per_image = rouge_l_scores(["the cat"], [["the cat is on the mat"]], tokenize=False)
    assert per_image[0] == pytest.approx(2.44 * (1 / 3) / (1 / 3 + 1.44), rel=1e-12)


def test_inputs_are_validated():
    with pytest.raises(ValueError):
        cider(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        bleu(["a"], [[]])
    with pytest.raises(ValueError):
        rouge_l(["a"], ["a reference given as a string"])


# --- against pycocoevalcap's scorers ----------------------------------------------------------

_VOCAB = "a an the dog dogs cat man woman on of in with red blue two sitting standing next to table".split()


def _caption(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_VOCAB) for _ in range(rng.randint(lo, hi)))


def _caption_sets():
    rng = random.Random(1234)
    sets = [
        # repeated n-grams, empty and single-word predictions, identical captions
        (["a a a a a a", "dog", "", "the the the"],
         [["a a dog", "a a a a"], ["dog"], ["a cat on a table"], ["the cat", "the the dog the"]]),
        (["two dogs"], [["two dogs", "two dogs", "a dog"]]),
        ([""], [["a dog"]]),
        (["dog dog dog dog dog"], [["dog", "dog dog"]]),
        (["a man sitting on a table", "a woman with a red dog"],
         [["a man is sitting on a table", "man on table"], ["a woman and her red dog", "red dog with woman",
                                                           "a lady with a dog"]]),
    ]
    for _ in range(30):
        n = rng.randint(1, 25)
        preds = [_caption(rng, 0, 12) for _ in range(n)]
        refs = [[_caption(rng, 1, 12) for _ in range(rng.randint(1, 7))] for _ in range(n)]
        sets.append((preds, refs))
    return sets


@pytest.mark.parametrize("preds, refs", _caption_sets())
def test_scorers_match_pycocoevalcap_exactly(preds, refs):
    Cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider
    Bleu = pytest.importorskip("pycocoevalcap.bleu.bleu").Bleu
    Rouge = pytest.importorskip("pycocoevalcap.rouge.rouge").Rouge
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [p] for i, p in enumerate(preds)}
    ref_cider, ref_cider_per_image = Cider().compute_score(gts, res)
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its statistics
        ref_bleu, _ = Bleu(4).compute_score(gts, res)
    ref_rouge, _ = Rouge().compute_score(gts, res)

    score, per_image = cider_scores(preds, refs, tokenize=False)
    assert score == ref_cider
    assert per_image == list(ref_cider_per_image)
    assert bleu(preds, refs, tokenize=False) == ref_bleu
    assert rouge_l(preds, refs, tokenize=False) == ref_rouge


RAW_PREDS = [
    "A man's dog is sitting on a couch.",
    "Two cats (one black) sleep on the bed!",
    "A 3-year-old kid doesn't like broccoli...",
    "",
    "People",
]
RAW_REFS = [
    ["A man and his dog on the couch.", "A dog sits on a sofa next to a man.", "Man's dog on a couch"],
    ["Two cats sleeping on a bed.", "A black cat and a white cat asleep on the bed."],
    ["A toddler refusing to eat broccoli.", "A small child who doesn't want broccoli."],
    ["A plate of food.", "Food on a plate"],
    ["A crowd of people.", "people walking", "People."],
]


def test_end_to_end_with_tokenization_matches_coco_caption():
    """Tokenize with the real PTBTokenizer (Java) then score, as COCOEvalCap.evaluate does."""
    if shutil.which("java") is None:
        pytest.skip("java not available")
    tok = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = tok.PTBTokenizer().tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(RAW_REFS)})
    res = tok.PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(RAW_PREDS)})
    with contextlib.redirect_stdout(io.StringIO()):
        ref_bleu, _ = Bleu(4).compute_score(gts, res)
    assert cider(RAW_PREDS, RAW_REFS) == Cider().compute_score(gts, res)[0]
    assert bleu(RAW_PREDS, RAW_REFS) == ref_bleu
    assert rouge_l(RAW_PREDS, RAW_REFS) == Rouge().compute_score(gts, res)[0]


def test_meteor_is_none_without_java(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    assert meteor(["a dog"], [["a dog"]]) is None


@pytest.mark.slow
def test_meteor_matches_meteor_1_5():
    """METEOR 1.5 through pycocoevalcap (starting the jar takes about 10 s)."""
    if shutil.which("java") is None:
        pytest.skip("java not available")
    pytest.importorskip("pycocoevalcap.meteor.meteor")
    # Value printed by pycocoevalcap 1.2's Meteor().compute_score on the tokenized strings
    # {1: ["a dog on a bed", "a brown dog"]} / {1: ["a dog on the bed"]}.
    assert meteor(["A dog on the bed."], [["A dog on a bed.", "A brown dog."]]) == pytest.approx(
        0.424595255130956, abs=1e-12)
