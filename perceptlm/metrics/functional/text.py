"""Caption text normalisation as in coco-caption (pycocoevalcap/tokenizer/ptbtokenizer.py).

coco-caption joins all captions with newlines, runs the Stanford PTBTokenizer
(stanford-corenlp-3.4.1.jar, ``-preserveLines -lowerCase``) on them, splits the
output lines on single spaces and drops the tokens in ``PUNCTUATIONS``.  This
module reproduces that without Java (see ``_ptb_lexer``).

Two details of the reference are kept on purpose:

* lowercasing happens before the punctuation filter, so the bracket tokens come
  out as ``-lrb-``/``-rrb-``/``-lsb-``/``-rsb-``/``-lcb-``/``-rcb-`` and are *not*
  removed (the filter only lists the upper-case forms);
* the lexer's trailing context can look past the end of a caption into the next
  one (e.g. "no." keeps its period when the next caption starts with a digit), so
  ``ptb_tokenize_batch`` processes captions as one stream, in the given order.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

from perceptlm.metrics.functional._ptb_lexer import lex

__all__ = ["PUNCTUATIONS", "ptb_tokenize", "ptb_tokenize_batch"]

#: Tokens coco-caption removes after tokenization (ptbtokenizer.py, ``PUNCTUATIONS``).
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Line separators other than "\n" would make the Java tokenizer emit extra lines and shift
# every later caption in coco-caption's output; they are treated as spaces here instead.
_OTHER_NEWLINES = re.compile("[\r\u2028\u2029\u000b\u000c]")


# -lowerCase: the JVM's String.toLowerCase(), which differs from str.lower() on final sigma.

def _is_cased(ch: str) -> bool:
    return unicodedata.category(ch) in ("Lu", "Ll", "Lt")


def _in_word(s: str, k: int) -> bool:
    """Whether s[k] continues a word for the JVM's final-sigma test (approximating its word
    break rules): letters except Han ideographs, marks, digits, format characters, '_', and
    '.', apostrophes or dashes between two letters."""
    ch = s[k]
    cat = unicodedata.category(ch)
    if ch == "_" or cat == "Cf" or (cat[0] in "LMN" and not _is_han(ch)):
        return True
    return (ch in ".'\u2019" or cat == "Pd") and 0 < k < len(s) - 1 and s[k - 1].isalpha() and s[k + 1].isalpha()


def _is_han(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def _final_sigma(s: str, i: int) -> bool:
    k = i - 1
    while k >= 0 and _in_word(s, k) and not _is_cased(s[k]):
        k -= 1
    if k < 0 or not _is_cased(s[k]):
        return False
    k = i + 1
    while k < len(s) and _in_word(s, k):
        if _is_cased(s[k]):
            return False
        k += 1
    return True


def java_lower(s: str) -> str:
    """``String.toLowerCase()`` as the JVM applies it, including its final-sigma rule."""
    if "\u03a3" not in s:
        return s.lower()
    return "".join(("\u03c2" if _final_sigma(s, i) else "\u03c3") if ch == "\u03a3" else ch.lower()
                   for i, ch in enumerate(s))


def _finish(tokens: list[str]) -> str:
    # coco-caption: ' '.join(w for w in line.rstrip().split(' ') if w not in PUNCTUATIONS)
    line = " ".join(java_lower(t) for t in tokens).rstrip()
    return " ".join(w for w in line.split(" ") if w not in PUNCTUATIONS)


def ptb_tokenize_batch(texts: Sequence[str]) -> list[str]:
    """Tokenize captions exactly as one coco-caption ``PTBTokenizer.tokenize`` call does.

    The captions are lexed as a single newline-joined stream, in the given order (coco-caption
    orders them image by image, each image's captions in annotation order).
    """
    stream = "\n".join(_OTHER_NEWLINES.sub(" ", t.replace("\n", " ")) for t in texts)
    lines: list[list[str]] = [[]]
    for token in lex(stream):
        if token is None:
            lines.append([])
        else:
            lines[-1].append(token)
    assert len(lines) == len(texts) or (not texts and lines == [[]])
    return [_finish(tokens) for tokens in lines[: len(texts)]]


@lru_cache(maxsize=65536)
def ptb_tokenize(text: str) -> str:
    """coco-caption tokenization of a single caption (as the last, or only, line of the input).

    >>> ptb_tokenize("A man's dog (brown) doesn't run.")
    "a man 's dog -lrb- brown -rrb- does n't run"
    """
    return ptb_tokenize_batch([text])[0]
