"""CHAIR object-hallucination rates (Rohrbach et al., "Object Hallucination in Image Captioning", 2018).

A simplified, dependency-free version of the authors' chair.py: captions are lowercased and
split into alphanumeric words; word n-grams are matched to canonical object names through a
synonym table, longest match first, where a synonym also matches with a final "s" or "es"
(irregular plurals must be listed as synonyms).  chair.py additionally singularises with a
lemmatizer and has a few hand-written rules (e.g. "baby"/"adult" before animal words), so the
numbers are close to, not identical with, the published tool.

* CHAIR-i = hallucinated object mentions / all object mentions (each occurrence counts);
* CHAIR-s = captions with at least one hallucinated mention / captions.

A mention is hallucinated when its canonical object is not among the image's ground-truth
objects (which may be given as canonical names or synonyms).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["chair", "extract_objects"]

_WORD = re.compile(r"[a-z0-9]+")


def _phrase_table(synonyms: Mapping[str, Iterable[str]]) -> tuple[dict[tuple[str, ...], str], int]:
    table: dict[tuple[str, ...], str] = {}
    for suffix in ("", "s", "es"):  # listed names take precedence over derived plurals
        for canonical, names in synonyms.items():
            for name in (canonical, *names):
                words = tuple(_WORD.findall(name.lower()))
                if words:
                    table.setdefault(words[:-1] + (words[-1] + suffix,), canonical)
    longest = max((len(k) for k in table), default=0)
    return table, longest


def _canonical(objects: Iterable[str], table: dict[tuple[str, ...], str]) -> set[str]:
    out = set()
    for obj in objects:
        key = tuple(_WORD.findall(obj.lower()))
        out.add(table.get(key, obj))
    return out


def _mentions(caption: str, table: dict[tuple[str, ...], str], longest: int) -> list[str]:
    words = _WORD.findall(caption.lower())
    found, i = [], 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            canonical = table.get(tuple(words[i:i + n]))
            if canonical is not None:
                found.append(canonical)
                i += n
                break
        else:
            i += 1
    return found


def extract_objects(caption: str, synonyms: Mapping[str, Iterable[str]]) -> list[str]:
    """Canonical objects mentioned in ``caption``, one entry per mention, in order."""
    table, longest = _phrase_table(synonyms)
    return _mentions(caption, table, longest)


def chair(captions: Sequence[str], gt_objects: Sequence[Iterable[str]],
          synonyms: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """CHAIR-i and CHAIR-s of generated captions given each image's ground-truth objects.

    ``synonyms`` maps a canonical object name to its synonyms (the canonical name itself is
    always included).  Returns ``chair_i``, ``chair_s`` (``nan`` when undefined: no mentions /
    no captions) and the raw counts ``mentions``, ``hallucinated_mentions``,
    ``hallucinated_captions``, ``captions``.
    """
    if len(captions) != len(gt_objects):
        raise ValueError("captions and gt_objects must have the same length")
    table, longest = _phrase_table(synonyms)
    mentions = hallucinated = bad_captions = 0
    for caption, objects in zip(captions, gt_objects):
        truth = _canonical(objects, table)
        found = _mentions(caption, table, longest)
        wrong = sum(obj not in truth for obj in found)
        mentions += len(found)
        hallucinated += wrong
        bad_captions += wrong > 0
    nan = float("nan")
    return {
        "chair_i": hallucinated / mentions if mentions else nan,
        "chair_s": bad_captions / len(captions) if captions else nan,
        "mentions": float(mentions),
        "hallucinated_mentions": float(hallucinated),
        "hallucinated_captions": float(bad_captions),
        "captions": float(len(captions)),
    }
