"""Resumable output in parts: a long job's output is a set of part files, each written whole or not at
all, so a killed job continues from its last complete part and a finished output is byte-identical to
an uninterrupted run's. Several processes (torchrun ranks, scheduler shards) write disjoint parts.

  <folder>/settings.json          what the parts come from (input, model, settings); a rerun that
                                  differs is refused, naming what changed
  <folder>/staging/               parts being written (a killed run's leftovers are removed)
  <folder>/<parts>/part-NNNNN.jsonl   complete parts (the only files there)
  <folder>/done/part-NNNNN.json   each part's record: document range, count, sha256, first and last id
  <folder>/manifest.json          every part, once all are present and verified (written last)

A part is complete once its record exists: the part file is fsynced and renamed before its record
is written, and the record is itself written whole (temporary name, fsync, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from pipeline.errors import PipelineError
from pipeline.files import json_line


log = logging.getLogger(__name__)


class PartsError(PipelineError, RuntimeError):
    pass


@dataclass(frozen=True)
class Plan:
    """`count` documents in parts of `part_size`, part i for rank i % world."""

    count: int
    part_size: int

    @property
    def parts(self) -> int:
        return max(1, -(-self.count // self.part_size))

    def span(self, part: int) -> tuple[int, int]:
        return part * self.part_size, min(self.count, (part + 1) * self.part_size)

    def of_rank(self, rank: int, world: int) -> list[int]:
        return list(range(rank, self.parts, world))


def _write_whole(path: Path, content: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(staging, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.replace(staging, path)


class _NotSet:
    def __repr__(self) -> str:
        return "(not set)"


_NOT_SET = _NotSet()


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for each setting that differs; one that only one side records is '(not set)' on the
    other (a setting recorded only when not its default, say)."""
    changed = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, _NOT_SET), new.get(key, _NOT_SET)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changed


class PartStore:
    """The parts of one output folder, made from `settings` (JSON-serializable); `products`, files of that folder
    made from the parts (stats, say), go with them when they are deleted."""

    def __init__(self, folder: Path, settings: dict, *, parts_name: str = "docs", products: tuple[str, ...] = ()):
        self.folder, self.settings, self.products = folder, settings, products
        self.parts_dir, self.records_dir, self.staging = folder / parts_name, folder / "done", folder / "staging"

    def open(self, *, fresh: bool = False, fresh_if_changed: Collection[str] = ()) -> None:
        """Start or continue: refuse other settings unless `fresh`, which deletes earlier output, or one of the
        settings named in `fresh_if_changed` (the inputs: their old output is stale) differs, which deletes it too.
        (Several shards may open one folder at once; `fresh` is for a single process or rank 0.)"""
        settings_file = self.folder / "settings.json"
        if fresh:
            self._remove_own_files()
        if settings_file.is_file():
            earlier = json.loads(settings_file.read_text())
            if any(earlier.get(key) != self.settings.get(key) for key in fresh_if_changed):
                log.warning("%s: starting again, its parts were made from other inputs (%s)", self.folder,
                            "; ".join(_differences(earlier, self.settings)))
                self._remove_own_files()
            elif earlier != self.settings:
                raise PartsError(
                    f"{self.folder} holds parts made with other settings ({'; '.join(_differences(earlier, self.settings))}). "
                    "Use another output folder, or --fresh to delete them and start again.")
        for folder in (self.parts_dir, self.records_dir, self.staging):
            folder.mkdir(parents=True, exist_ok=True)
        if not settings_file.is_file():
            _write_whole(settings_file, (json.dumps(self.settings, indent=2, sort_keys=True) + "\n").encode())

    def finished(self) -> bool:
        """Its manifest is written, from these settings: the output is complete."""
        manifest = self.folder / "manifest.json"
        return manifest.is_file() and json.loads(manifest.read_text())["settings"] == self.settings

    def name(self, part: int) -> str:
        return f"part-{part:05d}"

    def record(self, part: int) -> dict | None:
        path = self.records_dir / f"{self.name(part)}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def complete(self, part: int) -> bool:
        record = self.record(part)
        return record is not None and (self.parts_dir / record["file"]).is_file()

    def writer(self, part: int, span: tuple[int, int]) -> PartWriter:
        return PartWriter(self, part, span)

    def verify(self, plan: Plan) -> list[dict]:
        """Every part present and whole, counts adding up to the corpus, no id twice; the records."""
        records = []
        for part in range(plan.parts):
            record = self.record(part)
            if record is None or not (self.parts_dir / record["file"]).is_file():
                raise PartsError(f"{self.folder}: {self.name(part)} is missing (run the encode again to finish it)")
            if record["first"] != plan.span(part)[0] or record["count"] != plan.span(part)[1] - plan.span(part)[0]:
                raise PartsError(f"{self.folder}: {record['file']} covers other documents than planned")
            if (self.parts_dir / record["file"]).stat().st_size != record["bytes"]:
                raise PartsError(f"{self.folder}: {record['file']} has changed since it was written")
            records.append(record)
        extra = sorted({path.name for path in self.parts_dir.iterdir()} - {record["file"] for record in records})
        if extra:
            raise PartsError(f"{self.folder}: files that no part record names: {', '.join(extra)}")
        if sum(record["count"] for record in records) != plan.count:
            raise PartsError(f"{self.folder}: parts hold {sum(r['count'] for r in records)} documents, not {plan.count}")
        self._check_unique_ids(records)
        return records

    def _ids(self, records: list[dict]) -> Iterator[tuple[str, str]]:
        for record in records:
            with open(self.parts_dir / record["file"], "rb") as lines:
                for number, line in enumerate(lines, start=1):
                    yield orjson.loads(line)["id"], f"{record['file']}:{number}"

    def _check_unique_ids(self, records: list[dict]) -> None:
        """64-bit hashes sorted in numpy (8 bytes an id, not a Python set of strings); a shared hash
        is then looked at again to name the two lines, or dismissed as a collision."""
        hashes = np.fromiter((int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little", signed=True)
                              for doc_id, _ in self._ids(records)), dtype=np.int64)
        hashes.sort()
        shared = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
        if not shared:
            return
        seen: dict[str, str] = {}
        for doc_id, where in self._ids(records):
            key = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little", signed=True)
            if key in shared:
                if doc_id in seen:
                    raise PartsError(f"{where}: duplicate document id {doc_id!r} (first at {seen[doc_id]})")
                seen[doc_id] = where

    def discard_if_empty(self) -> bool:
        """After a failure: if no part is complete (nothing to resume), take back what `open` made, so that a rerun
        with other settings is not refused: the settings, and the folders where empty (a file that is not ours
        stays, with its folder). While another shard writes a part (in staging), nothing. Say if parts are kept."""
        if self.records_dir.is_dir() and any(self.records_dir.iterdir()):
            return True
        if self.staging.is_dir() and any(self.staging.iterdir()):
            return False
        (self.folder / "settings.json").unlink(missing_ok=True)
        for folder in (self.staging, self.records_dir, self.parts_dir, self.folder):
            try:
                folder.rmdir()
            except OSError:  # not empty, or not there
                pass
        return False

    def _remove_own_files(self) -> None:
        """What this store writes, and what was made from its parts (`products`), and nothing else of its folder
        (which may be a user's, holding other files)."""
        for folder in (self.parts_dir, self.records_dir, self.staging):
            shutil.rmtree(folder, ignore_errors=True)
        for name in ("settings.json", "manifest.json", *self.products):
            (self.folder / name).unlink(missing_ok=True)

    def finish(self, records: list[dict], summary: dict) -> None:
        """The manifest, written last: the output is complete (a killed run's staging goes)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        manifest = {"settings": self.settings, "parts": records, **summary}
        _write_whole(self.folder / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())


def unfinished(folder: Path) -> str | None:
    """Why `folder` (a store's folder, or its parts folder) is an output still being written, or None: its
    settings and part records are there and its manifest, written last, is not."""
    for store in (folder, folder.parent):
        if (store / "settings.json").is_file() and (store / "done").is_dir() and not (store / "manifest.json").is_file():
            parts = len(list((store / "done").glob("part-*.json")))
            return (f"{store} is not finished ({parts} parts complete, no manifest.json): run the same command again "
                    "to finish it")
    return None


class PartWriter:
    """Records of one part, written to staging; on a clean exit the part is checked (one record per
    document of its span), fsynced, renamed into place, and its record written. `extra` joins the
    record (e.g. the part's encoding counts)."""

    def __init__(self, store: PartStore, part: int, span: tuple[int, int]):
        self.store, self.part, self.span, self.extra = store, part, span, {}
        self.file = f"{store.name(part)}.jsonl"
        self.digest, self.count, self.size, self.first_id, self.last_id = hashlib.sha256(), 0, 0, None, None

    def __enter__(self) -> PartWriter:
        self.stream = open(self.store.staging / self.file, "wb")
        return self

    def add(self, record: dict) -> None:
        line = json_line(record)
        self.stream.write(line)
        self.digest.update(line)
        self.size += len(line)
        self.first_id = record["id"] if self.first_id is None else self.first_id
        self.last_id, self.count = record["id"], self.count + 1

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:  # a failed part leaves nothing (a killed one leaves staging, overwritten later)
            with contextlib.suppress(OSError):  # closing flushes what a full disk refused: it fails again
                self.stream.close()
            (self.store.staging / self.file).unlink(missing_ok=True)
            return
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        if self.count != self.span[1] - self.span[0]:
            raise PartsError(f"{self.file}: {self.count} records for documents {self.span[0]}..{self.span[1] - 1}")
        os.replace(self.store.staging / self.file, self.store.parts_dir / self.file)
        record = {"file": self.file, "part": self.part, "first": self.span[0], "count": self.count, "bytes": self.size,
                  "sha256": self.digest.hexdigest(), "first_id": self.first_id, "last_id": self.last_id, **self.extra}
        _write_whole(self.store.records_dir / f"{self.store.name(self.part)}.json", (json.dumps(record) + "\n").encode())
