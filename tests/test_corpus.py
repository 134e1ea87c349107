"""A corpus is encoded and indexed once for every dataset over it; local corpus files (JSON lines in
BEIR or Pyserini form, TSV, gzip'd or not, a file or a folder) are encoded and indexed through the CLI."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import data, lucene
from pipeline.encode import EMPTY_VECTOR_TERM, quantize, vocabulary_terms
from pipeline.files import read_jsonl

from conftest import DOCS, QUERIES, QRELS, ROOT, write_beir_folder


def test_datasets_over_one_corpus_share_it(beir_folder, tmp_path):
    assert {data.load(name).corpus.name for name in ("msmarco-dev", "dl19", "dl20")} == {"msmarco-passage"}
    assert {data.load(name).corpus.name for name in ("scifact", "beir/scifact/train")} == {"beir/scifact"}
    assert data.load("beir/arguana").corpus.name == "beir/arguana"
    # A BEIR folder's corpus is its corpus.jsonl, whether named by the folder or by the file.
    assert data.load(str(beir_folder)).corpus == data.load_corpus(str(beir_folder))
    assert data.load_corpus(str(beir_folder)).name == str(beir_folder / "corpus.jsonl")


def make_commands(tmp_path: Path, *goal_and_variables: str) -> list[str]:
    """The pipeline commands `make -n` would run in an empty output tree (this repository's Makefile,
    venv and models, linked)."""
    for name in ("Makefile", "pyproject.toml", ".venv", "models"):
        (tmp_path / name).symlink_to(ROOT / name)
    result = subprocess.run(["make", "-n", "-C", str(tmp_path), *goal_and_variables], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if " -m pipeline " in line]


@pytest.mark.parametrize("datasets, corpus", [("msmarco-dev dl19 dl20", "msmarco-passage"),
                                              ("scifact beir/scifact/train", "beir-scifact")])
def test_make_encodes_and_indexes_a_corpus_once(datasets, corpus, tmp_path):
    commands = make_commands(tmp_path, "beir-eval", f"DATASETS={datasets}")
    stage = lambda *words: [line for line in commands if all(word in line.split() for word in words)]
    names = datasets.split()
    (documents,) = [line.split() for line in stage("encode", "--corpus")]
    assert documents[documents.index("--out") + 1] == f"indexes/{corpus}/splade-tiny/encoded"
    assert len(stage("index", "--vectors")) == len(stage("index", "--corpus")) == 1
    query_files = [words[words.index("--queries") + 1].split("=") for words in map(str.split, stage("encode", "--queries"))]
    assert len(stage("encode")) == 1 + len(query_files)  # the documents once, each query set on its own
    assert sorted(name for name, _ in query_files) == sorted(names)
    assert all(path.startswith(f"indexes/{corpus}/splade-tiny/queries/") for _, path in query_files)
    impact, bm25 = stage("search", "--queries"), [line for line in stage("search") if "--queries" not in line]
    assert len(impact) == len(bm25) == len(names)
    assert all(f"--index indexes/{corpus}/splade-tiny/lucene " in line for line in impact)
    assert all(f"--index indexes/{corpus}/bm25 " in line for line in bm25)


def test_make_follows_a_beir_folders_corpus_queries_and_qrels(tmp_path):
    """What a rerun of `make beir-eval` runs after each of a BEIR folder's files changes, and after none."""
    for name in ("Makefile", "pyproject.toml", ".venv", "models"):
        (tmp_path / name).symlink_to(ROOT / name)
    folder = write_beir_folder(tmp_path / "beir")

    def stages_run() -> list[str]:
        result = subprocess.run(["make", "-C", str(tmp_path), "beir-eval", "DATASETS=beir"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        stages = [line.split(" -m pipeline ")[1].split()[0] for line in result.stdout.splitlines() if " -m pipeline " in line]
        return [stage for stage in stages if stage != "corpus"]  # Make's lookup of each dataset's corpus, once

    def changed(path: Path, line: str) -> None:
        with open(path, "a") as out:  # now: newer than every output
            out.write(line)

    assert sorted(stages_run()) == ["beir-eval", "encode", "encode", "eval", "index", "index", "search", "search"]
    assert stages_run() == ["beir-eval"]
    changed(folder / "queries.jsonl", json.dumps({"_id": "q9", "text": "a new question"}) + "\n")
    assert sorted(stages_run()) == ["beir-eval", "encode", "eval", "search", "search"]  # its queries, not the corpus
    changed(folder / "qrels" / "test.tsv", "q9\td1\t1\n")
    assert stages_run() == ["eval", "beir-eval"]
    changed(folder / "corpus.jsonl", json.dumps({"_id": "d99", "title": "", "text": "one more document"}) + "\n")
    # the documents again (the folder of the old corpus's parts replaced), both indexes, the runs
    assert sorted(stages_run()) == ["beir-eval", "encode", "eval", "index", "index", "search", "search"]
    assert json.loads((tmp_path / "indexes" / "beir-corpus.jsonl" / "splade-tiny" / "lucene.json").read_text())["documents"] == len(DOCS) + 1
    assert stages_run() == ["beir-eval"]


@pytest.mark.parametrize("model, tag", [("models/splade-tiny", "splade-tiny"), ("./models/splade-tiny/", "splade-tiny"),
                                        (str(ROOT / "models" / "splade-tiny"), str(ROOT / "models" / "splade-tiny")[1:].replace("/", "--")),
                                        ("naver/splade-v3", "naver--splade-v3")])
def test_outputs_are_named_after_the_model_and_no_argument_reads_as_an_option(model, tag, tmp_path):
    commands = make_commands(tmp_path, "beir-eval", f"MODEL={model}")
    (evaluation,) = [line.split() for line in commands if " -m pipeline eval " in line]
    runs = [evaluation[at + 1] for at, word in enumerate(evaluation) if word == "--run"]
    assert runs == [f"{tag}=runs/scifact/{tag}.trec", "bm25=runs/scifact/bm25.trec"]


@pytest.mark.parametrize("goal", ["train", "ablation", "k-sweep"])
def test_training_targets_take_negatives_from_the_corpus_bm25_index(goal, tmp_path):
    """Hard negatives come from the BM25 index of NEGATIVES' corpus, where beir-eval builds it."""
    commands = make_commands(tmp_path, goal)
    assert any(" -m pipeline index --corpus beir/scifact --out indexes/beir-scifact/bm25" in line for line in commands)
    assert any(f" -m pipeline {goal} " in line and "--negatives-index indexes/beir-scifact/bm25 " in line
               for line in commands)


def register_stand_ins(folder: Path) -> None:
    """ir_datasets-shaped datasets: `corpus-test/a` and `/b` over the documents of `corpus-test`, and
    `corpus-test/other` over a copy of them (the same text, another corpus)."""
    import ir_datasets
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import TrecQrels, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    if "corpus-test" in ir_datasets.registry:
        return
    folder.mkdir(parents=True)
    lines = "".join(f"{doc_id}\t{' '.join((title, text)).strip()}\n" for doc_id, (title, text) in DOCS.items())
    for name in ("docs.tsv", "other.tsv"):
        (folder / name).write_text(lines)
    documents = TsvDocs(LocalDownload(folder / "docs.tsv"))
    for name, qids in (("a", ["q1", "q2", "q3"]), ("b", ["q4", "q5"])):
        (folder / f"{name}.tsv").write_text("".join(f"{qid}\t{QUERIES[qid]}\n" for qid in qids))
        (folder / f"{name}.qrels").write_text("".join(f"{qid} 0 {doc} {grade}\n" for qid in qids for doc, grade in QRELS[qid].items()))
    queries = lambda name: TsvQueries(LocalDownload(folder / f"{name}.tsv"))
    qrels = lambda name: TrecQrels(LocalDownload(folder / f"{name}.qrels"), {1: "relevant"})
    ir_datasets.registry.register("corpus-test", Dataset(documents))
    for name in ("a", "b"):
        ir_datasets.registry.register(f"corpus-test/{name}", Dataset(documents, queries(name), qrels(name)))
    ir_datasets.registry.register("corpus-test/other", Dataset(TsvDocs(LocalDownload(folder / "other.tsv")),
                                                               queries("a"), qrels("a")))


def test_query_sets_share_one_encoding_and_index_of_their_corpus(model_path, tmp_path):
    """Two ir_datasets query sets over one corpus: its documents encoded and indexed once, each set's
    queries encoded on their own and searched in that index; a dataset over another corpus is refused."""
    from pipeline.encode import encode
    from pipeline.index import index
    from pipeline.search import search

    register_stand_ins(tmp_path / "stand-in")
    assert data.load("corpus-test/a").corpus.name == data.load("corpus-test/b").corpus.name == "corpus-test"
    assert data.load("corpus-test/other").corpus.name == "corpus-test/other"
    queries_of = lambda name: tmp_path / "queries" / f"{name}.jsonl"
    stats = encode(model_path, tmp_path / "encoded", corpus="corpus-test/a", queries={"corpus-test/a": queries_of("a")},
                   batch_size=4)
    assert stats["corpus"] == "corpus-test" and stats["docs"]["texts"] == len(DOCS)
    assert stats["query_files"]["corpus-test/a"]["queries"]["texts"] == 3
    assert index(tmp_path / "lucene", vectors=tmp_path / "encoded" / "docs")["corpus"] == "corpus-test"
    assert index(tmp_path / "bm25", corpus="corpus-test/b")["corpus"] == "corpus-test"
    # A query set added later: its queries alone, the documents being done (not encoded or rewritten again).
    finished = {path: path.stat().st_mtime_ns for path in (tmp_path / "encoded").rglob("*")}
    again = encode(model_path, tmp_path / "encoded", corpus="corpus-test/a", queries={"corpus-test/b": queries_of("b")},
                   batch_size=4)
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "encoded").rglob("*")} == finished
    assert again["docs"] == stats["docs"] and set(again["query_files"]) == {"corpus-test/b"}
    alone = tmp_path / "alone.jsonl"
    assert encode(model_path, queries={"corpus-test/b": alone}, batch_size=4)["query_files"]["corpus-test/b"]["queries"]["texts"] == 2
    assert alone.read_bytes() == queries_of("b").read_bytes()
    for name, qids in (("a", {"q1", "q2", "q3"}), ("b", {"q4", "q5"})):
        queries = queries_of(name)
        assert json.loads(queries.with_name(f"{name}.jsonl.json").read_text())["corpus"] == "corpus-test"
        search(tmp_path / "lucene", tmp_path / f"{name}.trec", f"corpus-test/{name}", queries=queries)
        search(tmp_path / "bm25", tmp_path / f"{name}-bm25.trec", f"corpus-test/{name}")
        for run in (f"{name}.trec", f"{name}-bm25.trec"):
            assert {line.split()[0] for line in (tmp_path / run).read_text().splitlines()} == qids
    with pytest.raises(data.DataError, match=r"lucene: an index of corpus 'corpus-test', not of 'corpus-test/other'"):
        search(tmp_path / "lucene", tmp_path / "other.trec", "corpus-test/other", queries=tmp_path / "queries" / "a.jsonl")
    with pytest.raises(data.DataError, match=r"a.jsonl: encoded queries of dataset 'corpus-test/a', not of 'corpus-test/b'"):
        search(tmp_path / "lucene", tmp_path / "b.trec", "corpus-test/b", queries=tmp_path / "queries" / "a.jsonl")
    # The dataset's own queries: its corpus is read from their record, and the index still refused.
    other = tmp_path / "other.jsonl"
    encode(model_path, queries={"corpus-test/other": other}, batch_size=4)
    assert json.loads(other.with_name("other.jsonl.json").read_text())["corpus"] == "corpus-test/other"
    with pytest.raises(data.DataError, match=r"lucene: an index of corpus 'corpus-test', not of 'corpus-test/other'"):
        search(tmp_path / "lucene", tmp_path / "other.trec", "corpus-test/other", queries=other)


def test_queries_encoded_by_another_model_are_refused(model_path, tmp_path):
    """Search compares the model files that encoded the index's documents and the queries: another model's
    queries (here the same model with one weight changed) are refused, naming both; the same model's pass."""
    from safetensors.torch import load_file, save_file

    from pipeline.encode import encode
    from pipeline.index import index
    from pipeline.search import search

    register_stand_ins(tmp_path / "stand-in")
    encode(model_path, tmp_path / "encoded", corpus="corpus-test/a", batch_size=4)
    assert index(tmp_path / "lucene", vectors=tmp_path / "encoded" / "docs")["model_files"]
    retrained = tmp_path / "retrained"
    shutil.copytree(model_path, retrained)
    tensors = load_file(retrained / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = tensors[name] * 1.01
    save_file(tensors, retrained / "model.safetensors", metadata={"format": "pt"})
    for model, queries in ((str(retrained), tmp_path / "retrained.jsonl"), (model_path, tmp_path / "same.jsonl")):
        encode(model, queries={"corpus-test/a": queries}, batch_size=4)
    with pytest.raises(data.DataError, match=r"retrained.jsonl: queries encoded by model '.*retrained', but .*lucene "
                                             r"holds documents encoded by '.*splade-tiny'"):
        search(tmp_path / "lucene", tmp_path / "retrained.trec", "corpus-test/a", queries=tmp_path / "retrained.jsonl")
    search(tmp_path / "lucene", tmp_path / "same.trec", "corpus-test/a", queries=tmp_path / "same.jsonl")
    assert (tmp_path / "same.trec").read_text()


# Local corpus files: every document of DOCS, in each format (BEIR joins title and text, as written here).
TEXTS = {doc_id: " ".join(part for part in (title.strip(), text.strip()) if part) for doc_id, (title, text) in DOCS.items()}
FORMATS = {
    "beir": lambda ids: "".join(json.dumps({"_id": i, "title": DOCS[i][0], "text": DOCS[i][1]}) + "\n" for i in ids),
    "pyserini": lambda ids: "".join(json.dumps({"id": i, "contents": TEXTS[i]}) + "\n" for i in ids),
    "tsv": lambda ids: "".join(f"{i}\t{TEXTS[i]}\n" for i in ids),
}
SUFFIX = {"beir": ".jsonl", "pyserini": ".jsonl", "tsv": ".tsv"}


def write_corpus(path: Path, kind: str, ids, gzipped: bool) -> Path:
    content = FORMATS[kind](ids).encode()
    path = path.with_name(path.name + SUFFIX[kind] + (".gz" if gzipped else ""))
    path.write_bytes(gzip.compress(content) if gzipped else content)
    return path


def write_case(tmp_path: Path, case: str) -> Path:
    """A file of every document in one format (`tsv`, `tsv-gz`, ...), or a folder of files in every
    format, gzip'd or not, the documents split among them."""
    if case != "folder":
        kind, _, gz = case.partition("-")
        return write_corpus(tmp_path / "corpus", kind, DOCS, bool(gz))
    folder = tmp_path / "folder"
    folder.mkdir()
    ids = list(DOCS)
    for part, (kind, gz) in enumerate([("beir", False), ("pyserini", True), ("tsv", False), ("tsv", True)]):
        write_corpus(folder / f"part-{part}", kind, ids[part::4], gz)
    (folder / "README.md").write_text("not a corpus file: left alone")
    return folder


def cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("case", ["beir", "beir-gz", "pyserini", "pyserini-gz", "tsv", "tsv-gz", "folder"])
def test_own_corpus_is_encoded_and_indexed_through_the_cli(case, model_path, encoder, tmp_path):
    corpus = write_case(tmp_path, case)
    encoded, impact, bm25 = tmp_path / "encoded", tmp_path / "lucene", tmp_path / "bm25"
    # Parts of 4 documents: parts after the first start in the middle of the corpus (or of a file).
    cli("encode", "--model", model_path, "--corpus", str(corpus), "--out", str(encoded), "--part-size", "4",
        "--batch-size", "4")
    cli("index", "--vectors", str(encoded / "docs"), "--out", str(impact), "--threads", "2")
    cli("index", "--corpus", str(corpus), "--out", str(bm25), "--threads", "2")

    records = {record["id"]: record for record in read_jsonl(encoded / "docs")}
    ids = sorted(DOCS)
    texts = {doc_id: records[doc_id]["contents"] for doc_id in records}
    assert sorted(records) == ids and texts == {doc_id: TEXTS[doc_id] for doc_id in ids}
    weights = encoder.weights(encoder.host_batch([TEXTS[doc_id] for doc_id in ids if TEXTS[doc_id]], 256)[0])
    expected = dict(zip([doc_id for doc_id in ids if TEXTS[doc_id]], quantize(weights, vocabulary_terms(
        encoder.tokenizer, encoder.model.vocab_size), 100)))
    assert {doc_id: records[doc_id]["vector"] for doc_id in ids} == {doc_id: expected.get(doc_id) or {EMPTY_VECTOR_TERM: 1}
                                                                      for doc_id in ids}
    assert json.loads((encoded / "stats.json").read_text())["corpus"] == str(corpus)

    # Impact index: every document, each found by its own vector with the exact dot product as score.
    assert lucene.count_documents(impact) == len(DOCS)
    topics, run = tmp_path / "topics.tsv", tmp_path / "self.trec"
    lucene.write_impact_topics({doc_id: records[doc_id]["vector"] for doc_id in ids}, topics)
    lucene.search_collection(impact, topics, run, impact=True, k=len(DOCS), threads=1, remove_query=False, tag="self")
    scores = {(qid, docid): float(score) for qid, _, docid, _, score, _ in map(str.split, run.read_text().splitlines())}
    for doc_id in ids:
        assert scores[doc_id, doc_id] == pytest.approx(sum(w * w for w in records[doc_id]["vector"].values()), abs=1e-3)

    # BM25 index: every non-blank document, found by its own text (the blank d09 is left out and counted).
    assert json.loads((tmp_path / "bm25.json").read_text())["blank_documents_left_out"] == 1
    assert lucene.count_documents(bm25) == len(DOCS) - 1
    texts = {doc_id: TEXTS[doc_id] for doc_id in ids if doc_id != "d09"}
    hits = lucene.bm25_search(bm25, texts, k=len(DOCS), threads=1, k1=0.9, b=0.4)
    assert all(doc_id in [hit for hit, _ in hits[doc_id]] for doc_id in texts)
    assert "d09" not in {hit for ranking in hits.values() for hit, _ in ranking}


def test_bad_line_of_a_gzipped_corpus_names_file_and_line(model_path, tmp_path):
    corpus = tmp_path / "corpus.tsv.gz"
    corpus.write_bytes(gzip.compress(b"d1\tfine\n\nd 2\tid with a space\n"))
    for args in (["encode", "--model", model_path, "--corpus", str(corpus), "--out", str(tmp_path / "encoded")],
                 ["index", "--corpus", str(corpus), "--out", str(tmp_path / "bm25")]):
        result = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"error: {corpus}:3: document id 'd 2' contains U+0020" in result.stderr
