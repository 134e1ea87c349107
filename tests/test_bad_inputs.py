"""Bad inputs, run through the CLI as a user would. Each case ends either with one `error:` line naming
the file and line (or setting) at fault, exit status 2, no traceback and no output left behind, or,
where the input is legal, with its documented handling and every document kept."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from pipeline import data

from conftest import DEFAULT_MODEL, ROOT, write_beir_folder

DOCS = {"d1": ("Coffee", "Caffeine in coffee reduces fatigue."), "d2": ("Tea", "Green tea has less caffeine."),
        "d3": ("Volcanoes", "Magma rises and lava flows out.")}
QUERIES = {"q1": "caffeine and tiredness", "q2": "lava"}
QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1}}


@dataclass
class Case:
    args: list[str]
    error: str | None = None  # a regex the one error line must match; None: the input is legal
    check: Callable[[Path], None] | None = None  # for a legal input: what its handling must give
    outputs: list[Path] = field(default_factory=list)  # must not exist after a failure
    file_size_limit: int | None = None  # RLIMIT_FSIZE: writes beyond it fail with EFBIG, as on a full disk
    env: dict[str, str] = field(default_factory=dict)


def folder(tmp: Path, corpus: bytes | None = None, queries: bytes | None = None, qrels: bytes | None = None) -> Path:
    beir = write_beir_folder(tmp / "beir", docs=DOCS, queries=QUERIES, qrels=QRELS)
    for name, content in (("corpus.jsonl", corpus), ("queries.jsonl", queries), ("qrels/test.tsv", qrels)):
        if content is not None:
            (beir / name).write_bytes(content)
    return beir


def lines(*rows) -> bytes:
    return b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)


GOOD = [{"_id": doc_id, "title": title, "text": text} for doc_id, (title, text) in DOCS.items()]


def encode(tmp: Path, error: str | None = None, check=None, extra=(), **files) -> Case:
    beir = folder(tmp, **files)
    out = tmp / "encoded"
    return Case(["encode", "--model", str(DEFAULT_MODEL), "--dataset", str(beir), "--out", str(out), *extra],
                error, check, [out])


def encoded_ids(tmp: Path) -> dict[str, str]:
    return {record["id"]: record["contents"] for record in read(tmp / "encoded" / "docs" / "part-00000.jsonl")}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def keeps_all(expected: dict[str, str] | None = None):
    """Every document encoded, with the expected contents where given."""
    def check(tmp: Path):
        docs = encoded_ids(tmp)
        assert set(docs) == set(expected or DOCS)
        for doc_id, contents in (expected or {}).items():
            assert docs[doc_id] == contents
    return check


def evaluate(tmp: Path, run: bytes, error: str | None, qrels: bytes | None = None, check=None) -> Case:
    beir = folder(tmp, qrels=qrels)
    (tmp / "run.trec").write_bytes(run)
    out = tmp / "eval.json"
    return Case(["eval", "--dataset", str(beir), "--run", f"ours={tmp / 'run.trec'}", "--out", str(out)], error, check, [out])


GOOD_RUN = b"q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\nq2 Q0 d3 1 3.0 t\n"


def index_vectors(tmp: Path, content: bytes | None, error: str) -> Case:
    vectors = tmp / "docs"
    vectors.mkdir()
    if content is not None:
        (vectors / "part-00000.jsonl").write_bytes(content)
    out = tmp / "lucene"
    return Case(["index", "--vectors", str(vectors), "--out", str(out)], error, None, [out, tmp / "lucene.json"])


def vector(doc_id="d1", **terms) -> dict:
    return {"id": doc_id, "contents": "", "vector": terms or {"coffee": 120}}


def triples(tmp: Path, content: bytes, error: str, extra=()) -> Case:
    (tmp / "triples.tsv").write_bytes(content)
    out = tmp / "trained"
    return Case(["train", "--model", str(DEFAULT_MODEL), "--data", str(tmp / "triples.tsv"), "--out", str(out),
                 "--steps", "1", "--batch-size", "2", *extra], error, None, [out / "model.safetensors"])


def model_folder(tmp: Path, files: dict[str, bytes | None]) -> Path:
    """A copy of the default model, with `files` replaced (None removes one)."""
    model = tmp / "model"
    shutil.copytree(DEFAULT_MODEL, model)
    for name, content in files.items():
        if content is None:
            (model / name).unlink()
        else:
            (model / name).write_bytes(content)
    return model


def with_model(tmp: Path, model: Path, error: str | None, check=None, extra=()) -> Case:
    case = encode(tmp, error, check, extra)
    case.args[2] = str(model)
    return case


def search(tmp: Path, bm25_index: Path, dataset: Path, error: str, queries: Path | None = None) -> Case:
    run = tmp / "run.trec"
    return Case(["search", "--index", str(bm25_index), "--dataset", str(dataset), "--run", str(run),
                 *(["--queries", str(queries)] if queries else [])], error, None, [run])


def truncated_cranfield(tmp: Path) -> Case:
    """An ir_datasets seed whose archive was cut short: read through a fresh ir_datasets cache."""
    seed = tmp / "seed" / "cranfield"
    seed.mkdir(parents=True)
    next(data.load("cranfield").docs())  # the archive, as a user gets it: from the seed, else downloaded
    archive = (Path(os.environ["IR_DATASETS_HOME"]) / "cranfield" / "cran.tar.gz").read_bytes()
    (seed / "cran.tar.gz").write_bytes(archive[: len(archive) // 2])
    out = tmp / "encoded"
    return Case(["encode", "--model", str(DEFAULT_MODEL), "--dataset", "cranfield", "--out", str(out)],
                r"cranfield: cannot read or download its files in the ir_datasets cache .*(ReadError|EOFError)", None, [out],
                env={"IR_DATASETS_HOME": str(tmp / "cache"), "PIPELINE_IR_DATASETS_SEED": str(tmp / "seed")})


def truncated_and_kept(tmp: Path):
    keeps_all()(tmp)
    assert json.loads((tmp / "encoded" / "stats.json").read_text())["docs"]["truncated"] == 1


def both_queries_judged(tmp: Path):
    assert json.loads((tmp / "eval.json").read_text())["queries"] == 2


def collapsed_model(tmp: Path) -> Path:
    model = model_folder(tmp, {})
    (model / "collapse.json").write_text(json.dumps({"reason": "loss is nan at step 3", "last_good_checkpoint": None}))
    return model


def surrogate_text(tmp: Path) -> Case:
    row = b'{"_id": "d4", "title": "", "text": "before \\ud800 after"}'
    return encode(tmp, None, keeps_all({**{d: f"{t} {x}" for d, (t, x) in DOCS.items()}, "d4": "before \ufffd after"}),
                  corpus=lines(*GOOD, row))


def disk_full_during_encode(tmp: Path) -> Case:
    # The vectors of a few documents exceed 64 KiB: the write fails midway, as on a full disk.
    docs = [{"_id": f"d{n}", "text": f"document {n} about coffee, tea, lava, magma and volcanoes " * 20} for n in range(40)]
    case = encode(tmp, r"error: cannot write .*encoded: File too large \(nothing was left there\)", corpus=lines(*docs))
    case.file_size_limit = 64 * 1024
    return case


CASES: dict[str, Callable[[Path], Case]] = {
    # corpus.jsonl
    "corpus-malformed-line-near-the-end": lambda t: encode(
        t, r"corpus.jsonl:20001: malformed JSON", corpus=lines(*({"_id": f"d{n}", "text": "x"} for n in range(20000)),
                                                                 b'{"_id": "last", "text": ')),
    "corpus-truncated-last-line": lambda t: encode(t, r"corpus.jsonl:4: malformed JSON",
                                                   corpus=lines(*GOOD) + b'{"_id": "d4", "te'),
    "corpus-missing-id": lambda t: encode(t, r"corpus.jsonl:2: expected a JSON object with keys \['_id'\]",
                                          corpus=lines(GOOD[0], {"text": "no id"})),
    "corpus-null-id": lambda t: encode(t, r"corpus.jsonl:1: document id must be a string, got NoneType",
                                       corpus=lines({"_id": None, "text": "x"})),
    "corpus-text-is-a-number": lambda t: encode(t, r"corpus.jsonl:2: text must be a string, got int 42",
                                                corpus=lines(GOOD[0], {"_id": "d9", "text": 42})),
    "corpus-title-is-a-list": lambda t: encode(t, r"corpus.jsonl:1: title must be a string, got list",
                                               corpus=lines({"_id": "d9", "title": ["a"], "text": "x"})),
    "corpus-line-is-an-array": lambda t: encode(t, r"corpus.jsonl:2: expected a JSON object, got list",
                                                corpus=lines(GOOD[0], ["d9", "text"])),
    "corpus-duplicate-id": lambda t: encode(t, r"corpus.jsonl:3: duplicate document id 'd1' \(first at .*corpus.jsonl:1\)",
                                            corpus=lines(GOOD[0], GOOD[1], {"_id": "d1", "text": "again"})),
    "corpus-invalid-utf8": lambda t: encode(t, r"corpus.jsonl:2: not UTF-8 \(byte 0xff at column 24\)",
                                            corpus=lines(GOOD[0], b'{"_id": "d9", "text": "\xff"}')),
    "corpus-raw-nul-byte": lambda t: encode(t, r"corpus.jsonl:1: malformed JSON \(Invalid control character",
                                            corpus=lines(b'{"_id": "d9", "text": "a\x00b"}')),
    "corpus-id-with-whitespace": lambda t: encode(t, r"corpus.jsonl:2: document id 'd 2' contains U\+0020",
                                                  corpus=lines(GOOD[0], {"_id": "d 2", "text": "x"})),
    "corpus-id-with-control-character": lambda t: encode(t, r"corpus.jsonl:1: document id 'd\\x072' contains U\+0007",
                                                         corpus=lines({"_id": "d\u00072", "text": "x"})),
    "corpus-id-with-lone-surrogate": lambda t: encode(t, r"corpus.jsonl:1: document id .* contains U\+D800",
                                                      corpus=lines(b'{"_id": "d\\ud800", "text": "x"}')),
    "corpus-empty-file": lambda t: encode(t, r"corpus.jsonl: no documents", corpus=b""),
    "corpus-blank-lines-only": lambda t: encode(t, r"corpus.jsonl: no documents", corpus=b"\n  \n\r\n"),
    "empty-folder": lambda t: Case(["encode", "--model", str(DEFAULT_MODEL), "--dataset", str(t), "--out", str(t / "out")],
                                   r"not a BEIR folder, missing corpus.jsonl, queries.jsonl, qrels/test.tsv", None, [t / "out"]),
    # legal corpora: documented handling, every document kept
    "corpus-bom-and-crlf": lambda t: encode(t, None, keeps_all(), corpus=b"\xef\xbb\xbf" + lines(*GOOD).replace(b"\n", b"\r\n")),
    "corpus-extra-fields-and-blank-lines": lambda t: encode(
        t, None, keeps_all(), corpus=lines(*({**row, "metadata": {"year": 2020}} for row in GOOD)).replace(b"\n", b"\n\n")),
    "corpus-escaped-nul-and-control-characters-in-text": lambda t: encode(
        t, None, keeps_all({"d9": "a\x00b\x07c\x1bd"}), corpus=lines({"_id": "d9", "text": "a\x00b\x07c\x1bd"})),
    "corpus-lone-surrogate-in-text": surrogate_text,
    "corpus-1mb-document": lambda t: encode(
        t, None, truncated_and_kept, corpus=lines(*GOOD[:2], {"_id": "d3", "title": "Volcanoes", "text": "lava " * 200_000})),
    "corpus-integer-ids": lambda t: encode(t, None, keeps_all({"7": "seven"}), corpus=lines({"_id": 7, "text": "seven"})),
    # queries.jsonl
    "queries-duplicate-id": lambda t: encode(t, r"queries.jsonl:2: duplicate query id 'q1' \(first at .*queries.jsonl:1\)",
                                             queries=lines({"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"})),
    "queries-missing-text": lambda t: encode(t, r"queries.jsonl:1: expected a JSON object with keys \['_id', 'text'\]",
                                             queries=lines({"_id": "q1"})),
    "queries-id-with-tab": lambda t: encode(t, r"queries.jsonl:1: query id 'q\\t1' contains U\+0009",
                                            queries=lines({"_id": "q\t1", "text": "a"})),
    "queries-empty-file": lambda t: encode(t, r"queries.jsonl: no queries", queries=b""),
    # qrels/test.tsv
    "qrels-two-fields": lambda t: encode(t, r"test.tsv:3: expected 'query-id<TAB>corpus-id<TAB>score'",
                                         qrels=b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\n"),
    "qrels-score-not-an-integer": lambda t: encode(t, r"test.tsv:2: expected .* \(an integer score\), got 'q1\\td1\\t0.5'",
                                                   qrels=b"query-id\tcorpus-id\tscore\nq1\td1\t0.5\n"),
    "qrels-conflicting-duplicate": lambda t: encode(t, r"test.tsv:3: query 'q1' judges document 'd1' 0, but 1 at .*test.tsv:2",
                                                    qrels=b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t0\n"),
    "qrels-bom-and-crlf": lambda t: evaluate(t, GOOD_RUN, None, qrels=b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td3\t1\r\n",
                                             check=both_queries_judged),
    # TREC runs
    "run-five-fields": lambda t: evaluate(t, GOOD_RUN + b"q2 Q0 d1 2 1.0\n", r"run.trec:4: expected 'qid q0 docid rank score tag'"),
    "run-score-not-a-number": lambda t: evaluate(t, b"q1 Q0 d1 1 high t\n", r"run.trec:1: expected 'qid q0 docid rank score tag'"),
    "run-nan-score": lambda t: evaluate(t, GOOD_RUN + b"q2 Q0 d1 2 nan t\n", r"run.trec:4: score nan is not a finite number"),
    "run-duplicate-document": lambda t: evaluate(t, GOOD_RUN + b"q1 Q0 d1 3 0.5 t\n",
                                                 r"run.trec:4: document 'd1' listed twice for query 'q1' \(first at .*run.trec:1\)"),
    "run-empty": lambda t: evaluate(t, b"", r"run.trec: empty run"),
    "run-of-another-dataset": lambda t: evaluate(t, b"301 Q0 FBIS3-1 1 2.0 t\n", r"run.trec: none of its 1 queries is judged in .*another dataset"),
    "run-missing-file": lambda t: Case(["eval", "--dataset", str(folder(t)), "--run", f"x={t / 'nowhere.trec'}"],
                                       r"No such file or directory: '.*nowhere.trec'"),
    # vectors (encode's docs/ folder) for the impact index
    "vectors-empty-folder": lambda t: index_vectors(t, None, r"docs: no \*.jsonl files"),
    "vectors-float-weight": lambda t: index_vectors(t, lines(vector(), vector("d2", tea=1.5)),
                                                   r"part-00000.jsonl:2: weight of term 'tea' must be a positive integer"),
    "vectors-term-with-space": lambda t: index_vectors(t, lines(vector("d1", **{"green tea": 3})),
                                                      r"part-00000.jsonl:1: term 'green tea' is empty or holds whitespace"),
    "vectors-term-with-the-impact-delimiter": lambda t: index_vectors(t, lines(vector("d1", **{"tea": 2, "a\x01b": 3})),
                                                                     r"part-00000.jsonl:1: term 'a\\x01b' is empty or holds whitespace, \\x01"),
    "vectors-term-with-a-lone-surrogate": lambda t: index_vectors(t, lines(vector("d1", **{"tea\ud800": 2})),
                                                                 r"part-00000.jsonl:1: term 'tea\\ud800' .* or a lone surrogate"),
    "vectors-term-longer-than-lucene-takes": lambda t: index_vectors(t, lines(vector(), vector("d2", **{"t" * 245: 2})),
                                                                    r"part-00000.jsonl:2: term 'tttt.*'\.\.\. is 245 UTF-16 units long: Lucene cuts terms at 244"),
    "vectors-empty-vector": lambda t: index_vectors(t, lines(vector(), {"id": "d2", "vector": {}}),
                                                   r"part-00000.jsonl:2: expected a non-empty JSON object 'vector'"),
    "vectors-truncated-line": lambda t: index_vectors(t, lines(vector()) + b'{"id": "d2", "vec',
                                                     r"part-00000.jsonl:2: malformed JSON"),
    # models
    "model-without-weights": lambda t: with_model(t, model_folder(t, {"model.safetensors": None}), r"cannot load model .*model"),
    "model-config-not-json": lambda t: with_model(t, model_folder(t, {"config.json": b"{not json"}), r"cannot load model .*model"),
    "model-whose-training-collapsed": lambda t: with_model(t, collapsed_model(t), r"its training collapsed \(loss is nan at step 3\).*--accept-collapsed"),
    "model-collapsed-accepted": lambda t: with_model(t, collapsed_model(t), None, keeps_all(), extra=["--accept-collapsed"]),
    # settings
    "scale-zero": lambda t: encode(t, r"argument --scale: must be a positive finite number, got 0", extra=["--scale", "0"]),
    "scale-too-large-for-lucene": lambda t: encode(t, r"--scale 1e\+12 makes a vector's weights add up to more than 2\^31 - 1",
                                                   extra=["--scale", "1e12"]),
    "batch-size-zero": lambda t: encode(t, r"argument --batch-size: must be a positive integer, got 0", extra=["--batch-size", "0"]),
    "train-batch-size-zero": lambda t: triples(t, b"q\tp\tn\n", r"batch-size must be at least 1, got 0", extra=["--batch-size", "0"]),
    "train-lr-nan": lambda t: triples(t, b"q\tp\tn\n", r"lr must be a positive finite number, got nan", extra=["--lr", "nan"]),
    "train-triples-two-fields": lambda t: triples(t, b"q\tp\tn\nq\tp\n", r"triples.tsv:2: expected 'query<TAB>positive<TAB>negative', got 2 fields"),
    "train-triples-invalid-utf8": lambda t: triples(t, b"q\tp\tn\nq\t\xc3(\tn\n", r"triples.tsv:2: not UTF-8 \(byte 0xc3 at column 3\)"),
    # full disk, archives cut short
    "disk-full-during-encode": disk_full_during_encode,
    "ir-datasets-gzip-cut-short": truncated_cranfield,
}


def leftovers(path: Path) -> list[str]:
    """Temporary siblings that atomic writes use (`.name.XXXX`), or the output itself."""
    found = [p.name for p in path.parent.glob(f".{path.name}.*")] if path.parent.exists() else []
    return found + ([path.name] if path.exists() else [])


def limit_file_size(limit: int | None):
    if limit is None:
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path):
    case = CASES[name](tmp_path)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipeline", *case.args], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **case.env}, preexec_fn=limit_file_size(case.file_size_limit))
    seconds = time.monotonic() - started
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if case.error is None:
        assert result.returncode == 0, result.stderr[-3000:]
        case.check(tmp_path)
        return
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert errors[0] == result.stderr.strip().splitlines()[-1]
    assert re.search(case.error, errors[0]), errors[0]
    for output in case.outputs:
        assert not leftovers(output), f"left behind: {leftovers(output)}"
    assert seconds < 60, f"a bad input must fail early, took {seconds:.0f} s"

