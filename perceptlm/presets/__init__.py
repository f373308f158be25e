"""``perceptlm.presets``: the papers' systems by name, one YAML file per mechanism."""

from perceptlm.presets.loader import Preset, add_search_path, get, load, names, search_path
from perceptlm.presets.table import markdown_table, replace_table, write_table

__all__ = ["Preset", "add_search_path", "get", "load", "markdown_table", "names", "replace_table", "search_path",
           "write_table"]
