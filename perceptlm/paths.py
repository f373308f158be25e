"""Folders: the perceptlm cache and the folders of installed data/weights packages."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def package_dir(package: str) -> Path:
    """Folder of an installed data/weights package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package!r} is not installed; `make demo` / `make test` install it "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """The perceptlm cache: ``$PERCEPTLM_CACHE``, default ``~/.cache/perceptlm``."""
    return Path(os.environ.get("PERCEPTLM_CACHE", Path.home() / ".cache" / "perceptlm"))
