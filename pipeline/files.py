"""Atomic outputs: a stage writes into a temporary sibling and renames it into place when done,
so an interrupted run never leaves a half-written file that looks finished (to Make or to a user)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson


@contextmanager
def atomic_path(path: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` (a file or a folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(handle)
        staging = Path(name)
    try:
        yield staging
        if directory and path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)


def json_line(record: dict) -> bytes:
    """One JSON-lines record, UTF-8 (orjson: 15x the standard library on a 250-term record here)."""
    return orjson.dumps(record) + b"\n"


def write_json(path: Path, data) -> None:
    with atomic_path(path) as staging:
        staging.write_text(json.dumps(data, indent=2) + "\n")


class ShardWriter:
    """JSON lines split into part-NNNNN.jsonl files of at most `shard_size` records."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size, self.written, self.stream = folder, shard_size, 0, None
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.written % self.shard_size == 0:
            self.close()
            self.stream = open(self.folder / f"part-{self.written // self.shard_size:05d}.jsonl", "wb")
        self.stream.write(json_line(record))
        self.written += 1

    def close(self) -> None:
        if self.stream:
            self.stream.close()


def _jsonl_parts(path: Path) -> list[Path]:
    return sorted(path.glob("*.jsonl")) if path.is_dir() else [path]


def count_records(path: Path) -> int:
    """Records of a JSON-lines file or folder, counted by line (no parsing: vectors lines are long)."""
    total = 0
    for part in _jsonl_parts(path):
        with open(part, "rb") as lines:
            total += sum(1 for line in lines if line.strip())
    return total


def read_jsonl(path: Path) -> Iterator[dict]:
    """Records of a JSON-lines file, or of every *.jsonl file of a folder in name order."""
    for part in _jsonl_parts(path):
        with open(part, "rb") as lines:
            for line in lines:
                yield orjson.loads(line)
