"""Multiple-choice parsing/accuracy, POPE yes/no metrics and CHAIR."""

import math

import pytest

from perceptlm.metrics.functional import (
    chair,
    extract_objects,
    mcq_accuracy_from_letters,
    mcq_accuracy_from_likelihood,
    parse_option_letter,
    pope_answer_is_yes,
    yes_no_metrics,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", 1), ("(B)", 1), ("B.", 1), ("b", 1), (" (c) ", 2), ("**D**", 3),
        ("The answer is B", 1), ("The answer is B.", 1), ("Answer: (C)", 2), ("answer: c", 2),
        ("Answer is: D", 3), ("The correct choice is (a)", 0), ("Option D", 3),
        ("b) cat", 1), ("(B) cat", 1), ("B. cat", 1), ("B: cat", 1),
        ("I think (C) is right", 2), ("so it is C.", 2), ("A", 0), ("A.", 0),
        # not answers
        ("the answer is a cat", None), ("A dog on a table", None), ("I think so", None),
        ("E", None), ("The answer is E", None), ("", None), ("None of these", None),
    ],
)
def test_parse_option_letter(text, expected):
    assert parse_option_letter(text, 4) == expected


def test_mcq_accuracies():
    # Row 2 ties options 0 and 2: the first maximum (0) is chosen, as argmax does.
    scores = [[-1.0, -0.5, -3.0], [-2.0, -2.5, -9.0], [-1.0, -4.0, -1.0]]
    assert mcq_accuracy_from_likelihood(scores, [1, 0, 2]) == pytest.approx(2 / 3)
    # unparsable generations count as wrong: 2 correct of 4
    gens = ["B", "The answer is (A)", "hmm, not sure", "D) a bird"]
    assert mcq_accuracy_from_letters(gens, [1, 0, 2, 2], num_options=4) == 0.5
    assert math.isnan(mcq_accuracy_from_letters([], [], num_options=4))


@pytest.mark.parametrize(
    "answer, is_yes",
    [
        ("Yes, there is a dog in the image.", True),
        ("No, there is not.", False),
        ("There is no dog.", False),
        ("I do not see one", False),
        ("There is a dog. No other animals.", True),  # only the first sentence counts
        ("no.", False),
        ("No,", False),  # commas are removed before splitting
        ("NO", True),  # only "No", "no" and "not" are negative words
        ("Not really", True),
        ("nope", True),
        ("There isn't one", True),
    ],
)
def test_pope_answer_reading(answer, is_yes):
    assert pope_answer_is_yes(answer) is is_yes


def test_yes_no_metrics_counts():
    preds = ["Yes", "yes.", "No", "No, it is not.", "Yes", "There is no cat"]
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    # TP = 2 (first two), FN = 1 (third), TN = 2 (4th, 6th), FP = 1 (5th)
    out = yes_no_metrics(preds, labels)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["yes_ratio"] == pytest.approx(3 / 6)
    # no predicted "yes": precision undefined (the reference script divides by zero)
    assert math.isnan(yes_no_metrics(["no"], ["yes"])["precision"])


SYNONYMS = {
    "person": ["man", "woman", "men", "women", "people", "child"],
    "dog": ["puppy"],
    "hot dog": [],
    "cat": ["kitten"],
    "bus": [],
    "knife": ["knives"],
}


def test_chair():
    captions = ["A man and a puppy eat hot dogs near two buses.", "Two kittens with a knife.", "An empty room."]
    gt = [{"person", "dog"}, {"cat", "knives"}, set()]
    # caption 1: man->person (ok), puppy->dog (ok), "hot dogs"->hot dog (bigram wins over "dogs"; not in gt),
    #            buses->bus (not in gt)  -> 4 mentions, 2 hallucinated
    # caption 2: kittens->cat (ok), knife->knife (gt "knives" is a synonym of knife) -> 2 mentions, 0
    # caption 3: no mention
    out = chair(captions, gt, SYNONYMS)
    assert out["chair_i"] == pytest.approx(2 / 6)
    assert out["chair_s"] == pytest.approx(1 / 3)
    assert (out["mentions"], out["hallucinated_mentions"], out["hallucinated_captions"]) == (6, 2, 1)
    # "children" is an irregular plural not listed as a synonym, so it is not recognised
    assert extract_objects("people, children? a woman's dog", SYNONYMS) == ["person", "person", "dog"]
    assert math.isnan(chair(["nothing here"], [set()], SYNONYMS)["chair_i"])
