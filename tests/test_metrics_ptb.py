"""coco-caption PTB tokenization without Java, checked against the Stanford tokenizer it replaces."""

import random
import shutil

import pytest

from perceptlm.metrics.functional import PUNCTUATIONS, ptb_tokenize, ptb_tokenize_batch

# (caption, coco-caption output).  The outputs were produced by pycocoevalcap 1.2's
# PTBTokenizer (stanford-corenlp-3.4.1.jar) on this list as one batch, in this order.
CASES = [
    ("A man's dog doesn't like the cat's toy.", "a man 's dog does n't like the cat 's toy"),
    ("I can't believe it's not butter!", "i ca n't believe it 's not butter"),
    ("They won't go; we'll stay, and you'd leave.", "they wo n't go we 'll stay and you 'd leave"),
    ("The dogs' owners aren't here.", "the dogs owners are n't here"),
    ("A well-known state-of-the-art x-ray machine.", "a well-known state-of-the-art x-ray machine"),
    ("A 3-year-old boy in a T-shirt.", "a 3-year-old boy in a t-shirt"),
    ("There are 1,000 birds and 3.5 cats.", "there are 1,000 birds and 3.5 cats"),
    ("It costs $5.00 (about 50%) in the U.S.", "it costs $ 5.00 -lrb- about 50 % -rrb- in the u.s."),
    ("Mr. Smith met Dr. Jones at St. Paul's.", "mr. smith met dr. jones at st. paul 's"),
    ("Fruits, e.g. apples, etc. are on the table.", "fruits e.g. apples etc. are on the table"),
    ("He said \"hello\" and she said 'goodbye'.", "he said hello and she said goodbye"),
    ("\u201cCurly quotes\u201d and \u2018single ones\u2019 here.", "curly quotes and single ones here"),
    ("Wait... what?! No way!!!", "wait what ?! no way !!!"),
    ("A cat (black and white) on a [red] {soft} mat.",
     "a cat -lrb- black and white -rrb- on a -lsb- red -rsb- -lcb- soft -rcb- mat"),
    ("A sign that reads <STOP> next to a road.", "a sign that reads <stop> next to a road"),
    ("The train leaves at 10:30 p.m. on Jan. 5th.", "the train leaves at 10:30 p.m. on jan. 5th"),
    ("Cannot stop, gonna go, wanna play.", "can not stop gon na go wan na play"),
    ("It's 5 7/8 inches and \u00bd a pound.", "it 's 5\u00a07/8 inches and 1/2 a pound"),
    ("Call (555) 123-4567 or visit www.example.com today.",
     "call -lrb-555-rrb-\u00a0123-4567 or visit www.example.com today"),
    ("Email john.doe@example.com for info.", "email john.doe@example.com for info"),
    ("Rock'n'roll in the '90s, o'clock, y'all.", "rock 'n' roll in the '90s o'clock y' all"),
    ("A dog \u2014 brown \u2013 runs -- fast --- now.", "a dog brown runs fast now"),
    ("A/B testing and/or 24/7 service.", "a/b testing and/or 24/7 service"),
    ("Tom & Jerry, AT&T and R&D.", "tom & jerry at&t and r&d"),
    ("C++ and C# code on a screen :)", "c++ and c# code on a screen :-rrb-"),
    # "no." keeps its period because the next caption starts with a digit (lexer look-ahead).
    ("A man holding a sign that says no.", "a man holding a sign that says no."),
    ("2 dogs play in the snow.", "2 dogs play in the snow"),
    ("i.e. it's the end of the U.S.A. The end.", "i.e. it 's the end of the u.s.a. the end"),
    ("Two men ... walking . . . slowly", "two men walking slowly"),
    ("\u00a3100 or \u20ac50 or \u00a510 or 5\u00a2.", "# 100 or $ 50 or \u00a5 10 or 5 cents"),
    ("A caf\u00e9 in Z\u00fcrich with a na\u00efve waiter.", "a caf\u00e9 in z\u00fcrich with a na\u00efve waiter"),
    ("#1 hashtag @user_name says hi", "# 1 hashtag @user_name says hi"),
    ("What's that? Who's there?", "what 's that who 's there"),
    ("The kids' toys, the kid's toy.", "the kids toys the kid 's toy"),
    ("An old-fashioned 1950s car.", "an old-fashioned 1950s car"),
    ("A photo.jpg file and a doc.pdf, too.", "a photo.jpg file and a doc.pdf too"),
    ("Hello world. this is the U.S. army.", "hello world this is the u.s. army"),
    ("   Leading and trailing spaces   ", "leading and trailing spaces"),
    ("", ""),
    ("...", ""),
    ("A DOG ON A BED.", "a dog on a bed"),
    ("no. 5 and No. 6", "no. 5 and no. 6"),
    ("it'll be y'know, ma'am", "it 'll be y' know ma'am"),
    ("a \u2019s and n\u2019t: don\u2019t isn\u2019t", "a 's and n't do n't is n't"),
    ("The 5-10 year olds, the 1990-2000 era.", "the 5-10 year olds the 1990-2000 era"),
    ("Score: 3-2; time: 12:45.", "score 3-2 time 12:45"),
]


def test_batch_matches_reference_outputs():
    assert ptb_tokenize_batch([c for c, _ in CASES]) == [e for _, e in CASES]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cat's", "cat 's"),
        ("doesn't", "does n't"),
        ("can't", "ca n't"),
        ("Don't!", "do n't"),
        ("(a)", "-lrb- a -rrb-"),  # lowercased before the filter, so the brackets survive
        ("A sign that says no.", "a sign that says no"),  # nothing follows: the period goes
        ("'90", "90"),  # at the end of input the "'90" rule (needs a following space) fails
        ("x\u2028y\rz", "x y z"),  # other line separators count as spaces here
    ],
)
def test_single_captions(text, expected):
    assert ptb_tokenize(text) == expected


def test_batch_keeps_alignment_and_empty_lines():
    assert ptb_tokenize_batch(["a\nb", "", "dog.", "c."]) == ["a b", "", "dog", "c."]  # "c." is an initial
    assert ptb_tokenize_batch([]) == []


def test_punctuation_list_is_cocos():
    assert PUNCTUATIONS == {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                            "-", "--", "...", ";"}


_ATOMS = (
    "a the dog cat man two 2 10 1,000 3.5 .5 5% $5 US$5 #1 @me it's I'm we'll they're cannot gonna don't won't "
    "can't n't 's 'll 'd '90s '90 'em 'till rock'n'roll o'clock y'all ma'am o'neill U.S. U.S.A. e.g. i.e. etc. "
    "Mr. Dr. St. Jan. No. no. fig. ca. Inc. Co. Ltd. a.m. p.m. I. A. x. Ph.D. x-ray T-shirt 3-year-old co-op "
    "anti-war 1/2 5 7/8 10/20/2020 and/or km/h 24/7 (555) 555-1234 http://x.com/a?b=1 www.a.org a@b.com "
    "file.txt photo.jpg :) ;-) :D ^_^ (x_x) c++ c# AT&T & &amp; &quot; ... .... . . . -- --- ---- - -- _ __ * ** "
    "( ) [ ] { } < > <b> </b> << >> / \\ | ~ ^ + = == ! ? !! ?! , ; : ' \" ` `` '' \u2019 \u2018 \u201c \u201d "
    "\u00bd \u00a3 \u20ac \u00a2 \u00a5 \u2026 \u2013 \u2014 caf\u00e9 Z\u00fcrich \u00b0 \u00a9 \u2122 \u2022 "
    "The He It A Dog About This So"
).split(" ")
_JOINERS = [" "] * 10 + ["", "", ".", ",", "-", "'", '"', "/", ". ", "'s ", "n't "]


def _generated_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for k in range(rng.randint(1, 9)):
            if k:
                parts.append(rng.choice(_JOINERS))
            parts.append(rng.choice(_ATOMS))
        out.append("".join(parts) + rng.choice(["", ".", " .", "!", "?", "...", " "]))
    return out


def test_against_stanford_tokenizer():
    """The real PTBTokenizer (via pycocoevalcap, needs Java) on the cases plus generated captions."""
    if shutil.which("java") is None:
        pytest.skip("java not available")
    ptb = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    captions = [c for c, _ in CASES] + _generated_captions(600)
    reference = ptb.PTBTokenizer().tokenize({0: [{"caption": c} for c in captions]})[0]
    ours = ptb_tokenize_batch(captions)
    mismatches = [(c, r, o) for c, r, o in zip(captions, reference, ours) if r != o]
    assert not mismatches, mismatches[:5]
    # A caption alone is the last line of its input: no look-ahead into a next caption.
    single = "A man holding a sign that says no."
    assert ptb.PTBTokenizer().tokenize({0: [{"caption": single}]})[0] == [ptb_tokenize(single)]
