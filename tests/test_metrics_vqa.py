"""Official VQA accuracy (vqaEval.py) on its edge cases; expected values worked out by hand."""

import pytest

from perceptlm.metrics.functional import vqa_accuracy, vqa_normalize_answer, vqa_process_punctuation

R = "\u2019"  # the curly apostrophe of the official contraction table


def ten(matching: str, m: int, other: str = "cat") -> list[str]:
    return [matching] * m + [other] * (10 - m)


# With 10 answers of which m equal the prediction, each answer is left out in turn:
#   the m matching ones leave m-1 matches -> min(1, (m-1)/3); the 10-m others leave m -> min(1, m/3).
#   m=1: (1*0   + 9*1/3) / 10 = 3/10  = 0.3
#   m=2: (2*1/3 + 8*2/3) / 10 = 6/10  = 0.6
#   m=3: (3*2/3 + 7*1)   / 10 = 9/10  = 0.9
#   m=4: (4*1   + 6*1)   / 10 = 10/10 = 1.0
@pytest.mark.parametrize("m, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_formula(m, expected):
    assert vqa_accuracy(["dog"], [ten("dog", m)]) == pytest.approx(expected, abs=1e-12)


def test_general_number_of_answers():
    # 3 answers, all "yes": each left-out answer leaves 2 matches -> 2/3 each -> 2/3.
    assert vqa_accuracy(["yes"], [["yes"] * 3]) == pytest.approx(2 / 3, abs=1e-12)
    # 5 answers, 2 match: matching ones leave 1 -> 1/3 (x2); others leave 2 -> 2/3 (x3);
    # (2/3 + 2) / 5 = 8/15.
    assert vqa_accuracy(["yes"], [["yes", "yes", "no", "no", "no"]]) == pytest.approx(8 / 15, abs=1e-12)
    # A single answer leaves no other answer to match: always 0 under the official formula.
    assert vqa_accuracy(["yes"], [["yes"]]) == 0.0


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        # contractions: "dont" -> "don’t" (U+2019) on the prediction only; a straight "don't" is
        # punctuation-split to "don t".  Identical gt answers are left untouched.
        ("dont", [f"don{R}t"] * 10, 1.0),
        ("dont", ["dont"] * 10, 0.0),
        ("don't", ["don't"] * 10, 0.0),  # prediction -> "don t", gt stays "don't"
        # Two distinct gt strings -> gt punctuation processing: "don't" -> "don t" (5 of them),
        # so the prediction "don t" matches 5: every left-out answer still sees >= 4 -> 1.0.
        ("don't", ["don't"] * 5 + ["dont"] * 5, 1.0),
        # numbers with separators: a digit,digit pattern deletes every listed mark -> "1000".
        ("1,000", ["1000"] * 10, 1.0),
        ("1,000", ["1,000"] * 10, 0.0),  # identical gt answers are not normalised
        ("3.5", ["3.5"] * 10, 1.0),  # a period followed by a digit is kept
        ("3.5.", ["3.5"] * 10, 1.0),  # the trailing one is not
        # articles are dropped from the prediction only
        ("a dog", ["dog"] * 10, 1.0),
        ("the dog", ["a dog"] * 10, 0.0),
        ("The dog", ten("dog", 3), 0.9),  # 3 of 10 match (see the formula above)
        # number words become digits in the prediction only
        ("two", ["2"] * 10, 1.0),
        ("Two", ["two"] * 10, 0.0),
        ("none", ["0"] * 10, 1.0),
        # punctuation: deleted when it touches a space, otherwise replaced by a space
        ("red, white", ["red white"] * 10, 1.0),
        ("red,white", ["red white"] * 10, 1.0),
        ("yes.", ["yes"] * 10, 1.0),
        ("yes!", ["yes"] * 10, 0.0),  # "!" is not in the official punctuation list
        ("Yes", ["yes"] * 10, 1.0),  # the prediction is lowercased
        ("  yes\n", ["yes"] * 10, 1.0),  # newline/tab -> space, then stripped
        ("hot-dog", ["hot dog"] * 10, 0.0),  # "-" is not in the list either
        # gt punctuation processing (more than one distinct answer): "t-shirt." -> "t-shirt"
        # (3 matches -> 0.9), but "t-shirt?" -> "t-shirt " with a trailing space, since gt answers
        # are neither stripped nor re-joined -> no match.
        ("t-shirt", ten("t-shirt.", 3, "shirt"), 0.9),
        ("t-shirt", ten("t-shirt?", 3, "shirt"), 0.0),
    ],
)
def test_normalisation_edge_cases(prediction, answers, expected):
    assert vqa_accuracy([prediction], [answers]) == pytest.approx(expected, abs=1e-12)


def test_normalisers():
    assert vqa_normalize_answer("Two dogs, a cat.") == "2 dogs cat"
    assert vqa_normalize_answer("isnt") == f"isn{R}t"
    assert vqa_normalize_answer("cant") == "can't"  # this entry of the table is straight
    assert vqa_process_punctuation("a/b") == "a b"
    assert vqa_process_punctuation("a / b") == "a  b"
    # Only 32 periods are removed (the script passes re.UNICODE as the count argument).
    assert vqa_process_punctuation("." * 40) == "." * 8


def test_reductions():
    preds = ["2", "no", "blue"]
    answers = [ten("2", 10), ten("yes", 10), ten("blue", 2)]
    per_item = vqa_accuracy(preds, answers, reduction="none")
    assert per_item == pytest.approx([1.0, 0.0, 0.6], abs=1e-12)
    assert vqa_accuracy(preds, answers, reduction="sum") == pytest.approx(1.6, abs=1e-12)
    assert vqa_accuracy(preds, answers) == pytest.approx(1.6 / 3, abs=1e-12)
    with pytest.raises(ValueError):
        vqa_accuracy(preds, answers, reduction="max")
    with pytest.raises(ValueError):
        vqa_accuracy(["a"], [[]])
