"""What each system perceives: colour vs shape, per task family, from the runs' test predictions.

Reads every ``predictions.jsonl`` below a runs folder (each test run writes one, with the trained
and the blind answer of every record) and reports per configuration, as the mean over seeds of
each run's percentage, the trained value and its blind twin (perception zeroed):

* conversation: accuracy of the last turns scored on the colour and on the shape (the family's own
  metric, official VQA answer normalisation);
* caption: the share of captions that name the image's colour (resp. shape) and no other;
* yes/no: accuracy per probe kind (``meta["probe"]``), the shape or colour present (answer "yes")
  or absent ("no").
  A system that says "yes" whatever it sees scores 100 on "present" and 0 on "absent".
* yes/no, reasoned answers ("a yellow circle, so no.", easy-instruct's ``reasoned`` training): the
  share of probes answered in that form whose yes/no is what the answer's own description implies
  for the value asked about (a column only where a trained run answers in that form).
* multiple choice, reasoned answers ("yellow circle, so B."): the share of questions whose answer
  states the right option's words, and the share whose letter is that of the option it states, right
  or wrong: seeing the answer and finding its letter, apart (columns only where a trained run answers
  in that form).

    python experiments/paper/instruction/breakdown.py RUNS_DIR [RUNS_DIR ...] \
        [--out experiments/paper/instruction/results/breakdown.md]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from perceptlm.data.easyvqa import COLORS, SHAPES
from perceptlm.evaluation.report import configuration_of, files_below
from perceptlm.evaluation.scoring import score

VALUES = {"color": COLORS, "shape": SHAPES}
PROBES = ("shape-yes", "shape-no", "color-yes", "color-no")
COLUMNS = (("conversation", "color"), ("conversation", "shape"), ("caption", "color"), ("caption", "shape"),
           *(("yesno", probe) for probe in PROBES), ("yesno", "follows"), ("mcq", "states"), ("mcq", "follows"))
REASONED_COLUMNS = (("yesno", "follows"), ("mcq", "states"), ("mcq", "follows"))  # shown where answers reason
TITLES = {**{("conversation", a): f"conversation {a}" for a in VALUES},
          **{("caption", a): f"caption names {a}" for a in VALUES},
          ("yesno", "shape-yes"): "yes/no shape present", ("yesno", "shape-no"): "yes/no shape absent",
          ("yesno", "color-yes"): "yes/no color present", ("yesno", "color-no"): "yes/no color absent",
          ("yesno", "follows"): "yes/no follows own description",
          ("mcq", "states"): "mcq states right option", ("mcq", "follows"): "mcq letter follows own option"}
REASONED = re.compile(r"an? (?P<description>[^,.]+), so (?P<answer>yes|no)\b")
REASONED_LETTER = re.compile(r"(?P<option>[^,]+), so (?P<letter>[A-Z])\.?")
OPTION_LINE = re.compile(r"^(?P<letter>[A-Z])\. (?P<option>.+)$", re.MULTILINE)


def _named(text: str, attribute: str) -> set[str]:
    """The values of ``attribute`` ("color" or "shape") that ``text`` names."""
    return set(re.findall(r"[a-z]+", text.lower())) & set(VALUES[attribute])


def names_only(text: str, value: str, attribute: str) -> bool:
    """Whether ``text`` names ``value`` and no other value of ``attribute``."""
    return _named(text, attribute) == {value}


def _true_value(reference: str, attribute: str, where: str) -> str:
    named = _named(reference, attribute)
    if len(named) != 1:
        raise ValueError(f"{where}: reference {reference!r} names {sorted(named) or 'no'} {attribute}; "
                         f"expected one of {list(VALUES[attribute])}")
    return named.pop()


def follows_own_description(prediction: str, question: str, where: str) -> bool | None:
    """For a reasoned yes/no answer ("a yellow circle, so no."): whether its yes/no is what its own
    description implies for the value ``question`` asks about (named alone: "yes", else "no"); None
    for an answer not in that form."""
    match = REASONED.match(prediction.strip().lower())
    if match is None:
        return None
    asked = _named(question, "color") | _named(question, "shape")
    if len(asked) != 1:
        raise ValueError(f"{where}: question {question!r} names {sorted(asked) or 'no'} colour or shape; expected one")
    value = asked.pop()
    stated = _named(match["description"], "color" if value in COLORS else "shape")
    return (stated == {value}) == (match["answer"] == "yes")


def reasoned_choice(prediction: str, prompt: str, where: str) -> tuple[int | None, int] | None:
    """For a reasoned multiple-choice answer ("yellow circle, so B."): (the index of the option whose
    words it states, None for words of no option; the index of its letter), read against the options
    listed in ``prompt`` ("A. green" lines); None for an answer not in that form."""
    options = {m["option"].strip().lower(): ord(m["letter"]) - ord("A") for m in OPTION_LINE.finditer(prompt)}
    if not options:
        raise ValueError(f"{where}: prompt {prompt!r} lists no lettered options (lines like 'A. green')")
    match = REASONED_LETTER.fullmatch(prediction.strip())
    if match is None:
        return None
    return options.get(match["option"].strip().lower()), ord(match["letter"]) - ord("A")


def _accuracy(task: str, records: list[dict[str, Any]], answer: str) -> float:
    """The family's own accuracy (:func:`perceptlm.evaluation.scoring.score`), in percent."""
    metrics = score(task, [r[answer] for r in records], [r["references"] for r in records],
                    [r["meta"] for r in records])
    return 100 * metrics["accuracy"]


def _load(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run_breakdown(path: str | Path, answer: str = "prediction",
                  lines: list[dict[str, Any]] | None = None) -> dict[tuple[str, str], float]:
    """One run's percentages per (family, column) from its ``predictions.jsonl`` (``lines``: its
    records, when already read); ``answer`` is ``"prediction"`` (trained) or ``"blind_prediction"``."""
    records = defaultdict(list)
    for line_number, record in enumerate(_load(path) if lines is None else lines, 1):
        if answer not in record:
            raise ValueError(f"{path}:{line_number}: record {record.get('id')!r} has no {answer!r}")
        if record["meta"]["task"] == "yesno" and record["meta"].get("probe") not in PROBES:
            raise ValueError(f"{path}:{line_number}: yes/no record {record.get('id')!r} has meta probe "
                             f"{record['meta'].get('probe')!r}; valid: {list(PROBES)}")
        records[record["meta"]["task"]].append(record)
    out = {}
    for attribute in VALUES:
        scored = [r for r in records.get("conversation", []) if r["meta"].get("scored") == attribute]
        if scored:
            out[("conversation", attribute)] = _accuracy("conversation", scored, answer)
    captions = records.get("caption", [])
    for attribute in VALUES:
        hits = [names_only(r[answer], _true_value(r["references"][0], attribute, f"{path}: {r['id']}"), attribute)
                for r in captions]
        if hits:
            out[("caption", attribute)] = 100 * sum(hits) / len(hits)
    for kind in PROBES:
        probes = [r for r in records.get("yesno", []) if r["meta"]["probe"] == kind]
        if probes:
            out[("yesno", kind)] = _accuracy("yesno", probes, answer)
    follows = [follows_own_description(r[answer], r.get("prompt", ""), f"{path}: {r['id']}") for r in records.get("yesno", [])]
    if follows:
        out[("yesno", "follows")] = 100 * sum(f is True for f in follows) / len(follows)
    questions = records.get("mcq", [])
    choices = [reasoned_choice(r[answer], r.get("prompt", ""), f"{path}: {r['id']}") for r in questions]
    if questions:
        out[("mcq", "states")] = 100 * sum(c is not None and c[0] == r["meta"]["answer_index"]
                                           for c, r in zip(choices, questions)) / len(questions)
        out[("mcq", "follows")] = 100 * sum(c is not None and c[0] == c[1] for c in choices) / len(questions)
    return out


def breakdown(*roots: str | Path) -> dict[str, dict[tuple[str, str], tuple[float, float, int]]]:
    """Per configuration and column: (trained mean, blind mean, seeds) over the runs below the ``roots``."""
    runs: dict[str, list[Path]] = defaultdict(list)
    for path in files_below("predictions.jsonl", *roots):
        runs[configuration_of({"_path": str(path)})].append(path)
    table = {}
    for name, run_paths in sorted(runs.items()):
        lines = [_load(p) for p in run_paths]
        trained = [run_breakdown(p, "prediction", records) for p, records in zip(run_paths, lines)]
        blind = [run_breakdown(p, "blind_prediction", records) for p, records in zip(run_paths, lines)]
        table[name] = {column: (statistics.fmean(t[column] for t in trained),
                                statistics.fmean(b[column] for b in blind), len(trained))
                       for column in COLUMNS if all(column in t for t in trained)}
    return table


def to_markdown(table: dict[str, dict[tuple[str, str], tuple[float, float, int]]]) -> str:
    shown = {c for c in REASONED_COLUMNS if any(cells.get(c, (0.0,))[0] > 0 for cells in table.values())}
    columns = [c for c in COLUMNS if c not in REASONED_COLUMNS or c in shown]
    header = ["configuration", "seeds", *(TITLES[column] for column in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, cells in table.items():
        seeds = {n for _, _, n in cells.values()}
        row = [name, ",".join(map(str, sorted(seeds)))]
        row += [f"{cells[c][0]:.1f} ({cells[c][1]:.1f})" if c in cells else "—" for c in columns]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Percent, mean over seeds; in brackets the blind twin (perception zeroed). Conversation: "
              "accuracy of the turn scored on that attribute. Caption: captions naming the image's value "
              "and no other. Yes/no: accuracy on probes of a present (yes) or absent (no) shape or colour."]
    if ("yesno", "follows") in shown:
        lines[-1] += (" Follows own description: reasoned answers (\"a yellow circle, so no.\") whose yes/no is "
                      "what their description implies, in percent of the probes.")
    if shown & {("mcq", "states"), ("mcq", "follows")}:
        lines[-1] += (" Multiple choice, reasoned answers (\"yellow circle, so B.\"), in percent of the questions: "
                      "those stating the right option's words, and those whose letter is the option they state.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="folder(s) with <configuration>/seed<N>/predictions.jsonl")
    parser.add_argument("--out", help="write the Markdown table here as well")
    args = parser.parse_args(argv)
    markdown = to_markdown(breakdown(*args.runs))
    print(markdown, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(markdown)


if __name__ == "__main__":
    main()
