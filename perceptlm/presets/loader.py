"""The papers' systems as data: one ``<name>.yaml`` per mechanism, read into a :class:`Preset`.

The files sit beside this module; further folders join the search path through the environment
variable ``PERCEPTLM_PRESETS`` (folders separated by ``os.pathsep``) or :func:`add_search_path`, so a
new combination is one YAML file. Each file is checked when read: unknown keys, a connector type or
argument, an injection or option, an LLM tuning or a stage field that does not exist is an error that
names the file and the valid choices.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from perceptlm.connectors import resolve_connector
from perceptlm.encoders.base import TOKEN_SELECTIONS
from perceptlm.injection import resolve_injection
from perceptlm.tuning import LLM_TUNINGS

ENVIRONMENT_VARIABLE = "PERCEPTLM_PRESETS"
PACKAGE_FOLDER = Path(__file__).parent
FEATURE_KEYS = ("layers", "tokens", "final_norm")  # PerceptualEncoder's selection arguments
STAGE_KEYS = ("llm_tuning", "freeze_connector", "llm_lr")
SUMMARY_KEYS = ("paper", "mapping", "injection")
REQUIRED_KEYS = ("paper", "trainable_formula")
_added: list[Path] = []


@dataclass(frozen=True)
class Preset:
    """One mechanism along DePALM's four axes.

    ``paper``: the citation (paper, section, what is reproduced).
    ``summary``: short ``paper`` / ``mapping`` / ``injection`` cells for the four-axes table
    (:func:`perceptlm.presets.markdown_table`).
    ``features``: encoder selection (``layers``, ``tokens``, ``final_norm``).
    ``connector``: ``{"type": name in perceptlm.connectors.CONNECTORS (default "mapping"), **its
    arguments}``, built by :func:`perceptlm.connectors.build_connector`.
    ``injection``: name in :data:`perceptlm.injection.INJECTIONS`, with ``injection_options``.
    ``prompt_tokens``: learned input prompt tokens (DePALM §3.4).
    ``llm_tuning``: what of the LLM trains (a name in :data:`perceptlm.tuning.LLM_TUNINGS`; DePALM's
    fourth axis).
    ``stages``: the system's own two-stage recipe (Garg & Bas 2023 §2): ``{"align": {...}, "instruct":
    {...}}`` with ``llm_tuning``, ``freeze_connector`` and ``llm_lr`` per stage (:meth:`stage`).
    ``trainable_formula``: the trainable-parameter count as an arithmetic expression in the feature
    width ``D``, the mapper width ``W``, the LLM width ``H``, queries/output tokens ``Q``, mapper layers
    ``n``, prompt tokens ``P``, Q-Former cross-attention layers ``C``, the injection's target LLM
    layers ``X``, its own width ``V`` (DePALM c-attn) and global QPMapper layers ``G`` (R-QPMapper at
    1%); parenthesised words are comments (the tests evaluate the expression without them).
    ``source``: the file it was read from.
    """

    name: str
    paper: str
    features: dict[str, Any] = field(default_factory=dict)
    connector: dict[str, Any] = field(default_factory=dict)
    injection: str = "prefix"
    injection_options: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    trainable_formula: str = ""
    llm_tuning: str = "frozen"
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict, compare=False)
    source: str = field(default="", compare=False)

    def with_overrides(self, **overrides: Any) -> "Preset":
        """Merge dict-valued overrides (``features``, ``connector``) and replace the rest."""
        fixed = ("name", "paper", "trainable_formula", "stages", "summary", "source")
        valid = {f for f in asdict(self) if f not in fixed}
        unknown = set(overrides) - valid
        if unknown:
            raise ValueError(f"unknown preset override(s) {sorted(unknown)}; valid: {sorted(valid)}")
        merged: dict[str, Any] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            current = getattr(self, key)
            merged[key] = {**current, **value} if isinstance(current, dict) else value
        return replace(self, **merged)

    def stage(self, stage: str | None) -> dict[str, Any]:
        """The recipe of ``stage`` ("align" | "instruct"; empty when ``stage`` is None)."""
        if stage is None:
            return {}
        if not self.stages:
            with_stages = [name for name in names() if get(name).stages]
            raise ValueError(f"preset {self.name!r} has no stage recipes; presets with stages: {', '.join(with_stages)}")
        if stage not in self.stages:
            raise ValueError(f"preset {self.name!r} has no stage {stage!r}; valid: {sorted(self.stages)}")
        return dict(self.stages[stage])


# -- the search path -------------------------------------------------------------------------------
def add_search_path(folder: str | os.PathLike) -> None:
    """Look for ``<name>.yaml`` presets in ``folder`` too (after the packaged ones)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"preset folder {str(path)!r} does not exist")
    if path not in _added:
        _added.append(path)


def search_path() -> list[Path]:
    """The preset folders, in order: the packaged presets, ``$PERCEPTLM_PRESETS``, then those added."""
    extra = [Path(p).expanduser() for p in os.environ.get(ENVIRONMENT_VARIABLE, "").split(os.pathsep) if p]
    folders: list[Path] = []
    for folder in [PACKAGE_FOLDER, *extra, *_added]:
        if folder not in folders:
            folders.append(folder)
    return folders


def _files() -> dict[str, Path]:
    """Preset name -> file; a name defined in two folders is an error."""
    found: dict[str, Path] = {}
    for folder in search_path():
        if not folder.is_dir():
            raise FileNotFoundError(f"preset folder {str(folder)!r} (from ${ENVIRONMENT_VARIABLE}) does not exist")
        for path in sorted(folder.glob("*.yaml")):
            if path.stem in found:
                raise ValueError(f"preset {path.stem!r} is defined twice: {found[path.stem]} and {path}")
            found[path.stem] = path
    return found


def names() -> list[str]:
    """The preset names, sorted."""
    return sorted(_files())


def get(name: str) -> Preset:
    """The preset ``name``, read and checked from its file."""
    files = _files()
    if name not in files:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(files))}")
    return load(files[name])


# -- reading and checking a file -------------------------------------------------------------------
_cache: dict[tuple[Path, float], dict[str, Any]] = {}


def load(path: str | os.PathLike) -> Preset:
    """Read and check one preset file; its name is the file's stem."""
    path = Path(path)
    key = (path.resolve(), path.stat().st_mtime)
    if key not in _cache:
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
        try:
            _cache[key] = check(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return Preset(name=path.stem, source=str(path), **copy.deepcopy(_cache[key]))  # callers may edit their copy


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"{what} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")


def check(data: Any) -> dict[str, Any]:
    """The fields of a preset file's content (a mapping), checked against the registries."""
    _expect(data, dict, "a preset file")
    valid = [f.name for f in fields(Preset) if f.name not in ("name", "source")]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; valid: {valid} (the preset's name is the file name)")
    missing = [key for key in REQUIRED_KEYS if not data.get(key)]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    for key in ("paper", "trainable_formula", "injection", "llm_tuning"):
        if key in data:
            _expect(data[key], str, key)
    for key in ("features", "connector", "injection_options", "stages", "summary"):
        data[key] = {} if data.get(key) is None else data[key]
        _expect(data[key], dict, key)
    _expect(data.get("prompt_tokens", 0), int, "prompt_tokens")
    if data.get("prompt_tokens", 0) < 0:
        raise ValueError(f"prompt_tokens must be >= 0, got {data['prompt_tokens']}")
    _check_features(data["features"])
    resolve_connector(data["connector"])
    resolve_injection(data.get("injection", "prefix"), data["injection_options"])
    _check_tuning(data.get("llm_tuning", "frozen"), "llm_tuning")
    for stage, recipe in data["stages"].items():
        _expect(recipe, dict, f"stages.{stage}")
        wrong = sorted(set(recipe) - set(STAGE_KEYS))
        if wrong:
            raise ValueError(f"stages.{stage} has unknown key(s) {wrong}; valid: {list(STAGE_KEYS)}")
        if "llm_tuning" in recipe:
            _check_tuning(recipe["llm_tuning"], f"stages.{stage}.llm_tuning")
        if "freeze_connector" in recipe:
            _expect(recipe["freeze_connector"], bool, f"stages.{stage}.freeze_connector")
        if "llm_lr" in recipe:  # YAML reads 2e-5 as text: write 2.0e-05
            _expect(recipe["llm_lr"], (int, float), f"stages.{stage}.llm_lr (write e.g. 2.0e-05)")
    wrong = sorted(set(data["summary"]) - set(SUMMARY_KEYS))
    if wrong:
        raise ValueError(f"summary has unknown key(s) {wrong}; valid: {list(SUMMARY_KEYS)}")
    return data


def _check_features(features: dict[str, Any]) -> None:
    unknown = sorted(set(features) - set(FEATURE_KEYS))
    if unknown:
        raise ValueError(f"features has unknown key(s) {unknown}; valid: {list(FEATURE_KEYS)}")
    if "tokens" in features and features["tokens"] not in TOKEN_SELECTIONS:
        raise ValueError(f"features.tokens={features['tokens']!r} is unknown; valid: {list(TOKEN_SELECTIONS)}")
    layers = features.get("layers", 1)
    if not (isinstance(layers, int) and not isinstance(layers, bool)
            or isinstance(layers, list) and all(isinstance(i, int) for i in layers)):
        raise ValueError(f"features.layers must be a count (the last k layers) or a list of indices, got {layers!r}")


def _check_tuning(tuning: Any, what: str) -> None:
    if tuning not in LLM_TUNINGS:
        raise ValueError(f"{what}={tuning!r} is unknown; valid: {list(LLM_TUNINGS)}")
