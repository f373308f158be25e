"""Reads offline W&B runs back (``wandb/offline-run-*/run-<id>.wandb``) for the tests.

The transaction log is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records
with a 7-byte header: CRC-32, length, type full/first/middle/last) of ``wandb_internal_pb2.Record``
messages; wandb itself no longer ships a Python reader."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


def records(path: str | Path) -> Iterator[Any]:
    """The ``Record`` messages of one ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        room = BLOCK - position % BLOCK
        if room < HEADER:  # a block's tail too short for a header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        position += HEADER
        if length == 0 and kind == 0:  # zero padding to the block's end
            position += room - HEADER
            continue
        pending += data[position:position + length]
        position += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_run(path: str | Path) -> dict[str, Any]:
    """One offline run part: ``id``, ``job_type``, ``group``, ``name``, ``config`` (every update
    merged), ``history`` (one dict per logged row) and ``summary`` (keys last written)."""
    run: dict[str, Any] = {"config": {}, "history": [], "summary": {}}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, job_type=record.run.job_type, group=record.run.run_group,
                       name=record.run.display_name)
            run["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            run["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            run["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
        elif kind == "summary":
            run["summary"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.summary.update if item.key or item.nested_key})
    return run


def offline_runs(folder: str | Path) -> list[dict[str, Any]]:
    """Every offline run part below ``folder``, oldest first, each with its ``folder``."""
    parts = []
    for path in sorted(Path(folder).rglob("offline-run-*/run-*.wandb")):
        parts.append({**read_run(path), "folder": path.parent})
    return parts
