"""The four-axes table of the presets (feature extraction, mapping, injection, LLM tuning) as
Markdown, generated from the preset files: ``perceptlm presets --markdown`` prints it and
``perceptlm presets --markdown --write experiments/README.md`` replaces the committed copy."""

from __future__ import annotations

from pathlib import Path

from perceptlm.presets.loader import Preset, get, names

BEGIN = "<!-- presets table: generated from perceptlm/presets/*.yaml by `perceptlm presets --markdown --write FILE` -->"
END = "<!-- end of presets table -->"
TUNING_LABELS = {"lora": "LoRA"}


def describe_features(features: dict) -> str:
    """``{"layers": 1, "tokens": "all"}`` -> "all tokens, last layer"."""
    tokens = {"all": "all tokens", "cls": "CLS", "patches": "patches", "mean": "token mean"}.get(
        features.get("tokens", "all"))
    layers = features.get("layers", 1)
    if isinstance(layers, int):
        where = "last layer" if layers == 1 else f"last {layers} layers"
    elif list(layers) == [-1]:
        where = "last layer"
    elif list(layers) == [-2]:
        where = "penultimate layer"
    else:
        where = "layers " + ", ".join(str(i) for i in layers)
    norm = "" if features.get("final_norm", True) else " (no final norm)"
    return f"{tokens}, {where}{norm}"


def describe_tuning(preset: Preset) -> str:
    """What of the LLM trains, prompt tokens included, and where a stage recipe changes it."""
    label = TUNING_LABELS.get(preset.llm_tuning, preset.llm_tuning)
    prompts = f"{preset.prompt_tokens} prompt token{'s' if preset.prompt_tokens > 1 else ''}"
    if preset.prompt_tokens:
        label = prompts if preset.llm_tuning == "frozen" else f"{label} + {prompts}"
    changes = [f"{stage} stage: {TUNING_LABELS.get(recipe['llm_tuning'], recipe['llm_tuning'])}"
               for stage, recipe in preset.stages.items() if recipe.get("llm_tuning", preset.llm_tuning) != preset.llm_tuning]
    return label + (f" ({'; '.join(changes)})" if changes else "")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_table() -> str:
    """One row per preset: name, short citation, features, mapping, injection, LLM tuning."""
    rows = ["| preset | paper | features | mapping | injection | LLM tuning |", "|---|---|---|---|---|---|"]
    for name in names():
        preset = get(name)
        summary = preset.summary
        cells = [f"`{name}`", summary.get("paper", preset.paper), describe_features(preset.features),
                 summary.get("mapping", ""), summary.get("injection", preset.injection), describe_tuning(preset)]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)


def replace_table(text: str, source: str = "the document") -> str:
    """``text`` with the generated table between its :data:`BEGIN` and :data:`END` markers."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{source} needs exactly one pair of lines {BEGIN!r} ... {END!r} around the presets table")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{markdown_table()}\n{END}{tail}"


def write_table(path: str | Path) -> bool:
    """Replace the table in ``path`` (a Markdown file with the markers); True when it changed."""
    path = Path(path)
    text = path.read_text()
    updated = replace_table(text, str(path))
    if updated != text:
        path.write_text(updated)
    return updated != text
