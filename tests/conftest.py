"""Shared fixtures: the real default model, a writable ir_datasets cache seeded from ../shared, and a
small BEIR folder written per test session."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "splade-tiny"
SHARED = ROOT.parent / "shared"

# ir_datasets fixes its dataset paths when first imported (ranx imports it), so the writable cache,
# seeded from ../shared/ir_datasets by the pipeline itself, is chosen before any test module loads.
os.environ["IR_DATASETS_HOME"] = tempfile.mkdtemp(prefix="ir_datasets-")
os.environ["PIPELINE_IR_DATASETS_SEED"] = str(SHARED / "ir_datasets")
# Pyserini's topics-and-qrels cache is seeded from here when it exists, else its helper downloads.
os.environ.setdefault("PIPELINE_QRELS_SEED", str(SHARED / "qrels"))

# A few documents on distinct topics, so that rankings are meaningful; d09 is empty on purpose.
DOCS = {
    "d01": ("Coffee", "Caffeine in coffee stimulates the central nervous system and reduces fatigue."),
    "d02": ("Tea", "Green tea contains less caffeine than coffee and is rich in antioxidants."),
    "d03": ("Volcanoes", "A volcano erupts when magma rises through the crust and lava flows out."),
    "d04": ("Earthquakes", "Earthquakes are caused by the sudden movement of tectonic plates along faults."),
    "d05": ("Penguins", "Penguins are flightless birds that live in the southern hemisphere and swim well."),
    "d06": ("Eagles", "Eagles are large birds of prey with powerful talons and keen eyesight."),
    "d07": ("Vaccines", "Vaccines train the immune system to recognise a virus and prevent infection."),
    "d08": ("Antibiotics", "Antibiotics kill bacteria but are useless against viral infections such as influenza."),
    "d09": ("", "   "),
    "d10": ("Rivers", "The Nile is the longest river in Africa and flows north into the Mediterranean Sea."),
    "d11": ("Deserts", "The Sahara desert is hot and dry, with sand dunes and very little rain."),
    "d12": ("Glaciers", "Glaciers are slow rivers of ice that carve valleys in mountains. " * 80),
    # d03's twin: every query scores both the same, so rankings have ties (trec_eval puts d13 first).
    "d13": ("Volcanoes", "A volcano erupts when magma rises through the crust and lava flows out."),
}
QUERIES = {
    "q1": "how does caffeine affect tiredness",
    "q2": "what causes earthquakes",
    "q3": "birds that cannot fly",
    "q4": "do antibiotics work against viruses",
    "q5": "largest river in africa",
}
QRELS = {"q1": {"d01": 1, "d02": 1}, "q2": {"d04": 1}, "q3": {"d05": 1}, "q4": {"d08": 1, "d07": 1}, "q5": {"d10": 1}}
# Training triples: each query, a positive and an unrelated negative.
TRIPLES = [(QUERIES[q], " ".join(DOCS[next(iter(judged))]), " ".join(DOCS[negative]))
           for (q, judged), negative in zip(QRELS.items(), ["d11", "d03", "d12", "d06", "d05"])]


def write_beir_folder(folder: Path, docs=DOCS, queries=QUERIES, qrels=QRELS) -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as out:
        for doc_id, (title, text) in docs.items():
            out.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as out:
        for qid, text in queries.items():
            out.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w", errors="surrogatepass") as out:  # ids as given, even broken ones
        out.write("query-id\tcorpus-id\tscore\n")
        for qid, judged in qrels.items():
            for doc_id, relevance in judged.items():
                out.write(f"{qid}\t{doc_id}\t{relevance}\n")
    return folder


def write_trec(hits, path, tag):
    """A TREC run of in-memory rankings, in trec_eval's order (as the search stage writes them)."""
    from pipeline.search import trec_order

    with open(path, "w") as stream:
        for qid, ranking in hits.items():
            for rank, (docid, score) in enumerate(trec_order(ranking), start=1):
                stream.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


@pytest.fixture(scope="session")
def model_path() -> str:
    if not (DEFAULT_MODEL / "model.safetensors").is_file():
        pytest.fail(f"{DEFAULT_MODEL} is missing: run `make setup` (or `make test`, which does it) first")
    return str(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def encoder(model_path):
    from pipeline.splade.model import SpladeEncoder

    return SpladeEncoder.load(model_path, device="cpu")


@pytest.fixture(scope="session")
def beir_folder(tmp_path_factory) -> Path:
    return write_beir_folder(tmp_path_factory.mktemp("tiny-beir"))


@pytest.fixture(scope="session")
def trec_eval(tmp_path_factory) -> Path:
    """The official trec_eval binary that Anserini's jar carries (linux x86-64)."""
    from pipeline.lucene import anserini_jar

    binary = tmp_path_factory.mktemp("trec_eval") / "trec_eval"
    with zipfile.ZipFile(anserini_jar()) as jar:
        binary.write_bytes(jar.read("trec_eval/trec_eval-linux-amd64"))
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    return binary


@pytest.fixture
def triples(tmp_path) -> Path:
    path = tmp_path / "triples.tsv"
    path.write_text("".join("\t".join(row) + "\n" for row in TRIPLES * 2))
    return path
