"""Atomic outputs: a stage writes into a temporary sibling and renames it into place when done,
so an interrupted run never leaves a half-written file that looks finished (to Make or to a user)."""

from __future__ import annotations

import errno
import glob
import gzip
import json
import os
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import orjson

from pipeline.errors import DataError, OutputError

# Failures of the output's storage rather than of the program: reported in one line, naming the output.
STORAGE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}
# mkstemp creates files readable by their owner only; outputs get the usual mode. Read once, at import.
UMASK = os.umask(0)
os.umask(UMASK)


def _owned_prefix(path: Path) -> str:
    """The start of the names of the temporary siblings of `path` that processes of this machine make."""
    return f".{path.name}.{socket.gethostname()}."


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_abandoned(path: Path) -> None:
    """Remove the temporary siblings of `path` whose process, on this machine, is gone: killed, or
    ended at once by the JVM on Ctrl-C (its signal handler exits without Python's cleanup)."""
    prefix = _owned_prefix(path)
    for sibling in path.parent.glob(glob.escape(prefix) + "*"):
        pid = sibling.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            _remove(sibling)


@contextmanager
def scratch_folder(beside: Path) -> Iterator[Path]:
    """A temporary folder beside the output `beside` (on its file system), removed on leaving; one that
    a process gone without leaving it left behind is removed by the next."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(beside)
    folder = Path(tempfile.mkdtemp(prefix=f"{_owned_prefix(beside)}{os.getpid()}.", dir=beside.parent))
    try:
        yield folder
    finally:
        _remove(folder)


@contextmanager
def atomic_path(path: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` (a file or a folder).

    On any failure the temporary path is removed, and one that a process gone without that cleanup
    left behind is removed by the next (`remove_abandoned`); a full disk (or a file size limit)
    becomes an OutputError naming `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path)
    prefix = f"{_owned_prefix(path)}{os.getpid()}."
    if directory:
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.fchmod(handle, 0o666 & ~UMASK)
        os.close(handle)
        staging = Path(name)
    try:
        yield staging
        if directory and path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except OSError as err:
        if err.errno in STORAGE_ERRORS:
            raise OutputError(f"cannot write {path}: {err.strerror} (nothing was left there)") from None
        raise
    finally:
        _remove(staging)


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


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(number, bytes) of each line of a file, decompressed as it is read when its name ends in `.gz`;
    a `.gz` file cut short (or not gzip at all) is refused with the line where it breaks."""
    number = 0
    with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as stream:
        try:
            for number, raw in enumerate(stream, start=1):
                yield number, raw
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise DataError(f"{path}:{number + 1}: cannot decompress ({err})") from None


def text_lines(path: Path) -> Iterator[tuple[str, str]]:
    """(where, line) of a UTF-8 text file (gzip'd when its name ends in `.gz`), `where` as `path:line`:
    a BOM is skipped, CRLF reads as LF, invalid UTF-8 is refused with its line and column."""
    for number, raw in _raw_lines(path):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:  # err.start counts from after a BOM, which err.object lacks
            column = len(raw) - len(err.object) + err.start + 1
            raise DataError(f"{where}: not UTF-8 (byte 0x{err.object[err.start]:02x} at column {column})") from None
        yield where, line.rstrip("\r\n")


def count_newlines(path: Path) -> int:
    """Line breaks in a file, counted in its bytes (nothing decoded): fast, for a part's size, not records."""
    with open(path, "rb") as stream:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 24), b""))


def count_lines(paths: Sequence[Path]) -> int:
    """Non-blank lines of `paths`, as `record_lines` counts records (not parsed: vectors lines are long)."""
    return sum(1 for path in paths for _, line in text_lines(path) if line.strip())


def record_lines(paths: Sequence[Path], start: int = 0, stop: int | None = None) -> Iterator[tuple[Path, str, str]]:
    """(file, where, line) of the non-blank lines `start` to `stop` of `paths` read in turn, one record
    a line. Lines before `start` are counted, not parsed (a part of a large corpus starts fast)."""
    position = 0
    for path in paths:
        for where, line in text_lines(path):
            if not line.strip():
                continue
            position += 1
            if position <= start:
                continue
            if stop is not None and position > stop:
                return
            yield path, where, line


def json_object(where: str, line: str) -> dict:
    """One JSON-lines record, refused with its place unless it is a JSON object. orjson reads it (4x the
    standard library on encode's records); what orjson refuses (NaN, lone surrogates, bad JSON) the
    standard library reads or explains. An integer beyond 64 bits reads as a float (orjson), which
    every field that wants an integer refuses."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, object) of the records of a JSON-lines file, or of every *.jsonl file of a folder in name
    order; blank lines are skipped, anything but a JSON object on a line is refused with its place."""
    parts = _jsonl_parts(path)
    if not parts:
        raise DataError(f"{path}: no *.jsonl files")
    for _, where, line in record_lines(parts):
        yield where, json_object(where, line)


def read_jsonl(path: Path) -> Iterator[dict]:
    """Records of a JSON-lines file, or of every *.jsonl file of a folder in name order."""
    return (record for _, record in jsonl_records(path))
