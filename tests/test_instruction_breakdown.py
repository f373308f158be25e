"""The colour/shape breakdown of the instruction comparison (experiments/paper/instruction/breakdown.py)."""

import importlib.util
import json
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "experiments/paper/instruction/breakdown.py"
spec = importlib.util.spec_from_file_location("breakdown", PATH)
breakdown = importlib.util.module_from_spec(spec)
spec.loader.exec_module(breakdown)


def _conversation(image, attribute, answer, prediction, blind):
    return {"id": f"test-conversation-{image}-{attribute}", "prediction": prediction, "blind_prediction": blind,
            "references": [answer], "meta": {"task": "conversation", "turns": 3, "scored": attribute}}


def _caption(image, reference, prediction, blind):
    return {"id": f"test-caption-{image}", "prediction": prediction, "blind_prediction": blind,
            "references": [reference], "meta": {"task": "caption", "objects": [reference.split()[-1]]}}


def _probe(image, kind, prediction, blind):
    return {"id": f"test-yesno-random-{image}-{kind}", "prediction": prediction, "blind_prediction": blind,
            "references": [kind.split("-")[1]], "meta": {"task": "yesno", "group": "random", "probe": kind}}


def _write(folder: Path, records) -> Path:
    folder.mkdir(parents=True)
    path = folder / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_run_breakdown_separates_colour_from_shape(tmp_path):
    records = [_conversation(1, "color", "red", "red", "blue"), _conversation(1, "shape", "circle", "Circle.", "circle"),
               _conversation(2, "color", "blue", "green", "blue"), _conversation(2, "shape", "triangle", "circle", "circle"),
               _caption(1, "a red circle", "a red circle", "a blue circle"),
               _caption(2, "a blue triangle", "a blue or red triangle", "a blue circle"),
               *[_probe(1, kind, "Yes", "no") for kind in breakdown.PROBES]]
    path = _write(tmp_path / "llava-default" / "seed0", records)
    trained = breakdown.run_breakdown(path)
    assert trained[("conversation", "color")] == 50.0 and trained[("conversation", "shape")] == 50.0
    assert trained[("caption", "color")] == 50.0  # "blue or red" names another colour too
    assert trained[("caption", "shape")] == 100.0
    # always "yes": right on every present probe, wrong on every absent one
    assert [trained[("yesno", p)] for p in breakdown.PROBES] == [100.0, 0.0, 100.0, 0.0]
    blind = breakdown.run_breakdown(path, "blind_prediction")
    assert blind[("conversation", "color")] == 50.0 and blind[("conversation", "shape")] == 50.0
    assert blind[("caption", "color")] == 50.0 and blind[("caption", "shape")] == 50.0
    assert [blind[("yesno", p)] for p in breakdown.PROBES] == [0.0, 100.0, 0.0, 100.0]


def test_reasoned_answers_are_checked_against_their_own_description(tmp_path):
    def probe(image, kind, question, prediction, blind):
        return {**_probe(image, kind, prediction, blind), "prompt": question}

    records = [probe(1, "shape-yes", "Is there a circle in the image?", "a red circle, so yes.", "yes"),
               probe(1, "shape-no", "Is there a triangle in the image?", "a red circle, so yes.", "no"),  # does not follow
               probe(1, "color-yes", "Is there a red shape in the image?", "A red circle, so yes", "no"),
               probe(1, "color-no", "Is there a blue shape in the image?", "a red circle, so no.", "a blue circle, so yes.")]
    path = _write(tmp_path / "llava-yesno-reasoned" / "seed0", records)
    assert breakdown.run_breakdown(path)[("yesno", "follows")] == 75.0
    assert breakdown.run_breakdown(path, "blind_prediction")[("yesno", "follows")] == 25.0  # "yes", "no": not reasoned
    assert breakdown.follows_own_description("a red or blue circle, so yes.", "Is there a red shape?", "x") is False
    assert breakdown.follows_own_description("yes", "Is there a red shape?", "x") is None
    with pytest.raises(ValueError, match=r"x: question 'Is there a red circle\?' names \['circle', 'red'\]"):
        breakdown.follows_own_description("a red circle, so yes.", "Is there a red circle?", "x")
    markdown = breakdown.to_markdown(breakdown.breakdown(tmp_path))
    assert markdown.splitlines()[0].endswith("| yes/no follows own description |") and "| 75.0 (25.0) |" in markdown
    plain = _write(tmp_path / "plain" / "llava-default" / "seed0", [probe(1, "shape-yes", "Is there a circle?", "yes", "no")])
    assert "follows" not in breakdown.to_markdown(breakdown.breakdown(plain.parent.parent))


def test_reasoned_multiple_choice_separates_seeing_from_finding_the_letter(tmp_path):
    prompt = "What color is the shape?\nA. green\nB. red\nC. yellow\nD. black\nAnswer with the option's letter."

    def question(image, prediction, blind):
        return {"id": f"test-mcq-{image}-color", "prompt": prompt, "prediction": prediction, "blind_prediction": blind,
                "references": ["B"], "meta": {"task": "mcq", "num_options": 4, "answer_index": 1, "group": "color"}}

    records = [question(1, "red, so B.", "B"),      # sees red, finds its letter
               question(2, "Red, so C.", "green, so A."),  # sees red, wrong letter
               question(3, "yellow, so C.", "B"),   # sees wrong, finds its letter
               question(4, "purple, so D.", "red")]  # states no option
    path = _write(tmp_path / "llava-reasoned" / "seed0", records)
    trained = breakdown.run_breakdown(path)
    assert trained[("mcq", "states")] == 50.0 and trained[("mcq", "follows")] == 50.0
    blind = breakdown.run_breakdown(path, "blind_prediction")
    assert blind[("mcq", "states")] == 0.0 and blind[("mcq", "follows")] == 25.0  # "B", "red": not reasoned
    assert breakdown.reasoned_choice("black, so D", prompt, "x") == (3, 3)
    assert breakdown.reasoned_choice("D", prompt, "x") is None
    with pytest.raises(ValueError, match=r"x: prompt 'Which\?' lists no lettered options"):
        breakdown.reasoned_choice("red, so B.", "Which?", "x")
    markdown = breakdown.to_markdown(breakdown.breakdown(tmp_path))
    assert markdown.splitlines()[0].endswith("| mcq states right option | mcq letter follows own option |")
    assert "follows own description" not in markdown  # no reasoned yes/no here
    assert "| 50.0 (0.0) | 50.0 (25.0) |" in markdown
    plain = _write(tmp_path / "plain" / "llava-default" / "seed0", [question(1, "B", "A")])
    assert "mcq states" not in breakdown.to_markdown(breakdown.breakdown(plain.parent.parent))


def test_breakdown_averages_seeds_per_configuration(tmp_path):
    _write(tmp_path / "blip2-default" / "seed0", [_conversation(1, "color", "red", "red", "red")])
    _write(tmp_path / "blip2-default" / "seed1", [_conversation(1, "color", "red", "blue", "red")])
    _write(tmp_path / "other" / "llava-default" / "seed0", [_conversation(1, "color", "red", "red", "blue")])
    table = breakdown.breakdown(tmp_path / "blip2-default", tmp_path / "other")
    assert table["blip2-default"][("conversation", "color")] == (50.0, 100.0, 2)
    assert table["llava-default"][("conversation", "color")] == (100.0, 0.0, 1)
    assert ("caption", "color") not in table["blip2-default"]  # no captions: no column, not 0
    markdown = breakdown.to_markdown(table)
    assert "| blip2-default | 2 | 50.0 (100.0) | — |" in markdown


def test_bad_input_names_the_file_and_record(tmp_path):
    path = _write(tmp_path / "a" / "seed0", [_caption(7, "a shape", "a red circle", "a red circle")])
    with pytest.raises(ValueError, match=r"predictions.jsonl: test-caption-7: reference 'a shape' names no color"):
        breakdown.run_breakdown(path)
    probe = _probe(1, "shape-yes", "yes", "no")
    del probe["blind_prediction"]
    path = _write(tmp_path / "b" / "seed0", [probe])
    with pytest.raises(ValueError, match=r"predictions.jsonl:1: record 'test-yesno-random-1-shape-yes' has no 'blind_prediction'"):
        breakdown.run_breakdown(path, "blind_prediction")
    probe = _probe(2, "shape-no", "no", "no")
    del probe["meta"]["probe"]
    path = _write(tmp_path / "c" / "seed0", [_probe(1, "color-no", "no", "no"), probe])
    with pytest.raises(ValueError, match=r"predictions.jsonl:2: yes/no record 'test-yesno-random-2-shape-no' has meta "
                                         r"probe None; valid: \['shape-yes', 'shape-no', 'color-yes', 'color-no'\]"):
        breakdown.run_breakdown(path)
    with pytest.raises(FileNotFoundError, match="no predictions.jsonl"):
        breakdown.breakdown(tmp_path / "empty")
