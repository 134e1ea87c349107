"""Atomic outputs and scratch folders: what a process gone without its cleanup (kill -9, or the JVM's
own exit on Ctrl-C) left beside an output is removed by the next process that writes it."""

import os
import socket
import subprocess
import sys

import pytest

from pipeline.errors import DataError
from pipeline.files import atomic_path, scratch_folder, text_lines


def gone_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_what_a_gone_process_left_is_removed_and_nothing_else(tmp_path):
    out, host = tmp_path / "run.trec", socket.gethostname()
    abandoned_file = tmp_path / f".run.trec.{host}.{gone_pid()}.abc123"
    abandoned_folder = tmp_path / f".run.trec.{host}.{gone_pid()}.def456"
    live = tmp_path / f".run.trec.{host}.{os.getpid()}.ghi789"  # a process still writing it
    elsewhere = tmp_path / f".run.trec.another-machine.{gone_pid()}.jkl012"  # its pid means nothing here
    other_output = tmp_path / f".run.trec.json.{host}.{gone_pid()}.mno345"
    for path in (abandoned_file, live, elsewhere, other_output):
        path.write_text("partial")
    abandoned_folder.mkdir()
    (abandoned_folder / "segment").write_text("partial")
    with atomic_path(out) as staging:
        assert staging.name.startswith(f".run.trec.{host}.{os.getpid()}.")
        staging.write_text("complete")
    assert out.read_text() == "complete"
    assert not abandoned_file.exists() and not abandoned_folder.exists()
    assert live.exists() and elsewhere.exists() and other_output.exists()


def test_a_scratch_folder_is_removed_on_leaving_and_clears_what_a_gone_process_left(tmp_path):
    out = tmp_path / "index"
    abandoned = tmp_path / f".index.{socket.gethostname()}.{gone_pid()}.xyz"
    abandoned.mkdir()
    with scratch_folder(out) as work:
        (work / "part").write_text("text")
        assert not abandoned.exists()
    assert not work.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, said", [
    (b"\xef\xbb\xbfq\t\xffp\n", "lines:1: not UTF-8 (byte 0xff at column 6)"),  # counted in the file's bytes, BOM included
    (b"q\tp\n\xef\xbb\xbfq\t\xff\n", "lines:2: not UTF-8 (byte 0xff at column 6)"),  # as on a line that is not the first
    (b"q\t\xc3(\n", "lines:1: not UTF-8 (byte 0xc3 at column 3)"),
])
def test_invalid_utf8_is_named_by_line_column_and_byte(content, said, tmp_path):
    (tmp_path / "lines").write_bytes(content)
    with pytest.raises(DataError) as raised:
        list(text_lines(tmp_path / "lines"))
    assert str(raised.value) == f"{tmp_path}/{said}"
