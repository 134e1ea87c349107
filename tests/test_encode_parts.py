"""Encoding in resumable parts: kill -9 or Ctrl-C and rerun gives the uninterrupted run's bytes; torchrun
ranks and scheduler shards give the same parts; changed settings are refused; verify finds faults."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.encode import encode
from pipeline.index import index
from pipeline.parts import PartsError, PartStore, Plan

from conftest import DOCS, QUERIES, QRELS, ROOT, write_beir_folder

PART_SIZE = 6
COPIES = 5
DOCUMENTS = COPIES * len(DOCS)
PARTS = -(-DOCUMENTS // PART_SIZE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The tiny corpus COPIES times (ids suffixed): PARTS parts of PART_SIZE (the last one shorter)."""
    docs = {f"{doc_id}-{copy}": value for copy in range(COPIES) for doc_id, value in DOCS.items()}
    return write_beir_folder(tmp_path_factory.mktemp("corpus-x5"), docs=docs)


def encode_command(model_path, corpus, out, *extra, launcher=(sys.executable, "-m")) -> list[str]:
    return [*launcher, "pipeline", "encode", "--model", model_path, "--dataset", str(corpus), "--out", str(out),
            "--part-size", str(PART_SIZE), "--batch-size", "4", *extra]


def run(command, **kwargs):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def part_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((out / "docs").iterdir())}


@pytest.fixture(scope="module")
def uninterrupted(model_path, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "encoded"
    run(encode_command(model_path, corpus, out))
    return out


def test_parts_and_manifest(uninterrupted):
    parts = part_bytes(uninterrupted)
    assert len(parts) == PARTS and not (uninterrupted / "staging").exists()
    manifest = json.loads((uninterrupted / "manifest.json").read_text())
    assert [record["count"] for record in manifest["parts"]] == [PART_SIZE] * (PARTS - 1) + [DOCUMENTS - PART_SIZE * (PARTS - 1)]
    assert manifest["documents"] == DOCUMENTS and manifest["settings"]["part_size"] == PART_SIZE
    ids = [json.loads(line)["id"] for name in parts for line in parts[name].splitlines()]
    assert sorted(ids) == sorted(f"{doc_id}-{copy}" for copy in range(COPIES) for doc_id in DOCS)
    stats = json.loads((uninterrupted / "stats.json").read_text())
    assert stats["docs"]["texts"] == DOCUMENTS and stats["docs"]["empty"] == COPIES
    assert stats["queries"]["texts"] == len(QUERIES)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_run_resumes_to_the_same_bytes(stop, model_path, corpus, uninterrupted, tmp_path):
    out = tmp_path / "encoded"
    log = tmp_path / "interrupted.log"
    with open(log, "w") as stderr:
        # SIGINT back to its default in the child: under `cmd &` (a CI or nohup job) it is inherited as
        # ignored, and Python then installs no KeyboardInterrupt for Ctrl-C.
        process = subprocess.Popen(encode_command(model_path, corpus, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=stderr, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = out / "done" / "part-00000.json"
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(stop)
    process.wait()
    assert process.returncode != 0, "the run ended before it could be interrupted"
    if stop == signal.SIGINT:  # Ctrl-C: a line saying what is kept, no traceback
        said = log.read_text()
        assert process.returncode == 130 and "Traceback" not in said, said[-2000:]
        assert "the same command continues" in said and "interrupted: encode stopped" in said
    finished = {path.name: path.stat().st_mtime_ns for path in (out / "done").iterdir()}
    assert 1 <= len(finished) < PARTS and not (out / "stats.json").exists()

    result = run(encode_command(model_path, corpus, out))
    for name, written in finished.items():  # finished parts are kept, not encoded again
        assert (out / "done" / name).stat().st_mtime_ns == written
    assert f"{PARTS - len(finished)} parts" in result.stderr
    assert part_bytes(out) == part_bytes(uninterrupted)
    assert (out / "queries.jsonl").read_bytes() == (uninterrupted / "queries.jsonl").read_bytes()
    assert not (out / "staging").exists()


def test_torchrun_ranks_write_the_same_parts(model_path, corpus, uninterrupted, tmp_path):
    out = tmp_path / "encoded"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m")
    run(encode_command(model_path, corpus, out, launcher=launcher))
    assert part_bytes(out) == part_bytes(uninterrupted)
    assert json.loads((out / "stats.json").read_text())["docs"]["texts"] == DOCUMENTS


def test_scheduler_shards_then_verify(model_path, corpus, uninterrupted, tmp_path):
    out = tmp_path / "encoded"
    for shard in ("1/2", "0/2"):
        run(encode_command(model_path, corpus, out, "--shard", shard))
        assert not (out / "stats.json").exists()
    result = run(encode_command(model_path, corpus, out))
    assert "parts of" not in result.stderr  # nothing left to encode: verified and finished
    assert part_bytes(out) == part_bytes(uninterrupted)


def test_changed_settings_are_refused_unless_fresh(model_path, corpus, uninterrupted, tmp_path):
    out = tmp_path / "encoded"
    run(encode_command(model_path, corpus, out, "--shard", "0/5"))
    refused = subprocess.run(encode_command(model_path, corpus, out, "--scale", "50"), cwd=ROOT, capture_output=True,
                             text=True)
    assert refused.returncode == 2 and "scale: 100.0 -> 50.0" in refused.stderr and "Traceback" not in refused.stderr
    refused = subprocess.run(encode_command(model_path, corpus, out, "--body-precision", "bf16"), cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "body_precision: (not set) -> 'bf16'" in refused.stderr
    done = lambda: sorted(path.name for path in (out / "done").iterdir())
    # What Make runs: the same inputs continue; other settings are refused as without it; changed inputs start again
    shard_0 = {name: (out / "done" / name).stat().st_mtime_ns for name in done()}
    run(encode_command(model_path, corpus, out, "--fresh-if-changed"))
    assert len(done()) == PARTS and all((out / "done" / name).stat().st_mtime_ns == at for name, at in shard_0.items())
    refused = subprocess.run(encode_command(model_path, corpus, out, "--scale", "50", "--fresh-if-changed"), cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "scale: 100.0 -> 50.0" in refused.stderr and len(done()) == PARTS
    changed = tmp_path / "changed"
    shutil.copytree(corpus, changed)
    with open(changed / "corpus.jsonl", "a") as lines:
        lines.write(json.dumps({"_id": "one-more", "title": "", "text": "a document added since"}) + "\n")
    started_again = run(encode_command(model_path, changed, out, "--fresh-if-changed", "--shard", "0/5"))
    assert "starting again, its parts were made from other inputs (corpus:" in started_again.stderr
    assert done() == [f"part-{part:05d}.json" for part in range(0, -(-(DOCUMENTS + 1) // PART_SIZE), 5)]
    run(encode_command(model_path, corpus, out, "--scale", "40", "--fresh"))
    assert json.loads((out / "settings.json").read_text())["scale"] == 40 and len(done()) == PARTS


def test_a_failure_before_any_part_and_fresh_take_away_only_what_encode_wrote(model_path, corpus, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own")
    failed = subprocess.run(encode_command(model_path, corpus, out, "--scale", "1e12"), cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode == 2 and "--scale 1e+12" in failed.stderr
    assert [path.name for path in out.iterdir()] == ["notes.txt"]  # nothing to resume, and nothing of the user's lost
    run(encode_command(model_path, corpus, out, "--shard", "0/5"))
    with pytest.raises(PartsError, match=r"mine is not finished \(\d+ parts complete, no manifest.json\)"):
        index(tmp_path / "index", vectors=out / "docs")  # its complete parts alone are not the corpus
    run(encode_command(model_path, corpus, out, "--scale", "50", "--fresh"))
    assert (out / "notes.txt").read_text() == "the user's own" and json.loads((out / "settings.json").read_text())["scale"] == 50
    # started afresh, and failed: the finished run's stats and queries went with its parts, the user's file stays
    assert (out / "stats.json").is_file() and (out / "queries.jsonl").is_file()
    failed = subprocess.run(encode_command(model_path, corpus, out, "--scale", "1e12", "--fresh"), cwd=ROOT, capture_output=True,
                            text=True)
    assert failed.returncode == 2 and [path.name for path in out.iterdir()] == ["notes.txt"]


def test_a_shard_that_fails_before_any_part_leaves_another_shards_part_in_writing(tmp_path):
    settings, plan = {"corpus": "c"}, Plan(4, 2)
    writing, failing = PartStore(tmp_path / "out", settings), PartStore(tmp_path / "out", settings)
    writing.open()
    failing.open()
    with writing.writer(0, plan.span(0)) as writer:
        writer.add({"id": "a"})
        writer.add({"id": "b"})
        assert not failing.discard_if_empty()  # nothing of its own is complete; the other shard's part is under way
    assert writing.complete(0) and (tmp_path / "out" / "settings.json").is_file()


def test_a_dataset_over_encoded_documents_gets_its_queries_encoded_again(model_path, corpus, uninterrupted, tmp_path):
    out = tmp_path / "encoded"
    shutil.copytree(uninterrupted, out)
    (out / "queries.jsonl").unlink()  # as after `encode --corpus`: documents alone
    stats = encode(model_path, out, dataset=str(corpus), max_query_length=4, part_size=PART_SIZE, batch_size=4)
    assert part_bytes(out) == part_bytes(uninterrupted)  # the documents are not encoded again
    assert stats["max_query_length"] == 4 and stats["queries"]["truncated"] > 0
    assert json.loads((out / "stats.json").read_text()) == stats
    cut, full = ({query["id"]: query["vector"] for query in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
                 for folder in (out, uninterrupted))
    assert cut.keys() == full.keys() == QUERIES.keys() and cut != full


def test_verify_finds_missing_changed_and_duplicate_parts(uninterrupted, tmp_path):
    settings = json.loads((uninterrupted / "settings.json").read_text())
    plan = Plan(DOCUMENTS, PART_SIZE)

    def copy() -> PartStore:
        folder = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        subprocess.run(["cp", "-r", str(uninterrupted), str(folder)], check=True)
        return PartStore(folder, settings)

    store = copy()
    assert len(store.verify(plan)) == PARTS
    (store.parts_dir / "part-00003.jsonl").unlink()
    with pytest.raises(PartsError, match="part-00003 is missing"):
        store.verify(plan)
    store = copy()
    with open(store.parts_dir / "part-00004.jsonl", "ab") as part:
        part.write(b"\n")
    with pytest.raises(PartsError, match="part-00004.jsonl has changed"):
        store.verify(plan)
    store = copy()
    # part 7's first id changed to part 2's first id (same length, so only the id check can see it)
    first_id = json.loads((store.parts_dir / "part-00002.jsonl").read_bytes().splitlines()[0])["id"]
    target = store.parts_dir / "part-00007.jsonl"
    own_id = json.loads(target.read_bytes().splitlines()[0])["id"]
    assert len(own_id) == len(first_id)
    target.write_bytes(target.read_bytes().replace(f'"id":"{own_id}"'.encode(), f'"id":"{first_id}"'.encode(), 1))
    with pytest.raises(PartsError, match=rf"part-00007.jsonl:1: duplicate document id '{first_id}' \(first at part-00002.jsonl:1\)"):
        store.verify(plan)
