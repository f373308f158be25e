"""``perceptlm.presets``: the papers' systems by name (see :mod:`perceptlm.modules.presets`)."""

from perceptlm.modules.presets import PRESETS, Preset, build, get, names

__all__ = ["PRESETS", "Preset", "build", "get", "names"]
