"""Reading official image-text annotation files: JSON with errors that name the file and the record,
and the base of the image captioning datamodules (task, data root, image root, evaluation subsets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from perceptlm.data.base import PerceptionDataModule, check_eval_limits


def read_json(path: Path, what: str) -> Any:
    """Parse ``path``; a missing file or invalid JSON raises an error naming the file and ``what``
    it should be."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found (see experiments/data/README.md for the layout)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error}); expected {what}") from None


def field(record: Any, key: str, types: type | tuple[type, ...], path: Path, where: str) -> Any:
    """``record[key]`` checked against ``types``; else an error naming the file, the record and key."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: {where} is {type(record).__name__}, expected a JSON object")
    if key not in record:
        raise ValueError(f"{path}: {where} has no {key!r} (keys: {sorted(record)})")
    value = record[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join(t.__name__ for t in allowed)
        raise ValueError(f"{path}: {where} has {key}={value!r}, expected {names}")
    return value


def text_field(record: Any, key: str, path: Path, where: str) -> str:
    """A non-empty string field."""
    value = field(record, key, str, path, where)
    if not value.strip():
        raise ValueError(f"{path}: {where} has an empty {key!r}")
    return value


def text_list(values: Any, path: Path, where: str, what: str) -> list[str]:
    """A non-empty list of non-empty strings (answers, captions)."""
    if not isinstance(values, list) or not values:
        raise ValueError(f"{path}: {where} has no {what} (got {values!r}); expected a non-empty list")
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path}: {where} has an empty or non-string entry in {what}: {value!r}")
    return values


def records(data: Any, key: str | None, path: Path, what: str) -> list[Any]:
    """``data[key]`` (or ``data`` when ``key`` is None) as a list of records."""
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: expected a JSON object with a {key!r} list of {what}; found {found}")
        data = data[key]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {what}, got {type(data).__name__}")
    return data


class ImageCaptionDataModule(PerceptionDataModule):
    """Base of the image captioning datamodules (COCO, TextCaps, Flickr30k, NoCaps): the task is
    ``caption``.

    ``data_root``: the dataset's folder (default ``$PERCEPTLM_DATA/<default_subdir>``);
    ``image_root``: where its images live when elsewhere (default: ``data_root``);
    ``val_limit`` / ``test_limit``: fixed evaluation subsets (the same on every run; None = all).
    """

    def __init__(self, data_root: str | None = None, task: str = "caption", image_root: str | None = None,
                 val_limit: int | None = None, test_limit: int | None = None, **kwargs: Any) -> None:
        if task != "caption":
            raise ValueError(f"{self.name}: task {task!r} is not available; valid: 'caption'")
        super().__init__(data_root=data_root, task=task, **kwargs)
        check_eval_limits(val_limit, test_limit)
        self.image_root = image_root
        self.val_limit, self.test_limit = val_limit, test_limit


def read_jsonl(path: Path, what: str, valid: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """A JSON-lines file of objects (each passing ``valid`` when given); errors name the file, the
    line and what was expected."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {number} is not JSON ({error}); expected {what}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object; expected {what}")
        if valid is not None and not valid(record):
            raise ValueError(f"{path}: line {number} is {line[:100]!r}; expected {what}")
        out.append(record)
    return out
