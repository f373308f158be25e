"""The COCO object vocabulary of CHAIR (Rohrbach et al. 2018) for
:func:`perceptlm.metrics.functional.chair`: the authors' synonym table (``data/coco_synonyms.txt``)
plus irregular plurals.

CHAIR's tool singularises caption words before matching; :func:`~perceptlm.metrics.functional.chair`
matches a name and its "-s"/"-es" plural only, so :func:`coco_synonyms` adds the other plural forms
of the table's names ("men", "ladies", "knives", "mice", "geese", ...).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

SYNONYMS_FILE = Path(__file__).parent / "data" / "coco_synonyms.txt"
_IRREGULAR = {"mouse": "mice", "goose": "geese", "child": "children", "person": "people", "ox": "oxen"}


def _plurals(name: str) -> list[str]:
    """Plural forms of ``name`` beyond "-s"/"-es" (its last word inflected)."""
    head, _, last = name.rpartition(" ")
    prefix = f"{head} " if head else ""
    forms = []
    if last in _IRREGULAR:
        forms.append(_IRREGULAR[last])
    elif last.endswith("man") and last != "doberman":
        forms.append(last[:-3] + "men")
    elif re.search(r"[^aeiou]y$", last):
        forms.append(last[:-1] + "ies")
    elif last.endswith("ife"):
        forms.append(last[:-2] + "ves")  # knife -> knives
    elif last.endswith("lf"):
        forms.append(last[:-1] + "ves")  # calf -> calves
    return [prefix + form for form in forms]


def read_synonyms(path: Path = SYNONYMS_FILE) -> dict[str, list[str]]:
    """``category -> synonyms`` from a table with one comma-separated line per category (``#`` comments)."""
    table: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        names = [n.strip().lower() for n in line.split(",") if n.strip()]
        if not names:
            raise ValueError(f"{path}: line {number} has no category name")
        table.setdefault(names[0], [])
        table[names[0]] += [n for n in names[1:] if n not in table[names[0]]]
    return table


@functools.lru_cache(maxsize=1)
def coco_synonyms() -> dict[str, tuple[str, ...]]:
    """The 80 COCO categories -> synonyms (irregular plurals included), for ``chair(..., synonyms=...)``."""
    out = {}
    for category, names in read_synonyms().items():
        every = [category, *names]
        extra = [p for name in every for p in _plurals(name)]
        out[category] = tuple(dict.fromkeys([*names, *extra]))
    return out
