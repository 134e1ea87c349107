"""Atomic outputs and scratch folders: what a process gone without its cleanup (kill -9, or the JVM's
own exit on Ctrl-C) left beside an output is removed by the next process that writes it."""

import os
import socket
import subprocess
import sys

from pipeline.files import atomic_path, scratch_folder


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
