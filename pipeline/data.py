"""Datasets: ir_datasets ids, short BEIR/MS MARCO names, and local BEIR folders, behind one interface.

Every reader streams documents, checks them as it goes and names the file and line of a bad one.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

from pipeline.errors import PipelineError
from pipeline.files import count_records

# BEIR-13 as evaluated in the SPLADE and Pyserini papers; several have no `/test` split in ir_datasets.
BEIR = {
    "trec-covid": "beir/trec-covid",
    "nfcorpus": "beir/nfcorpus/test",
    "nq": "beir/nq",
    "hotpotqa": "beir/hotpotqa/test",
    "fiqa": "beir/fiqa/test",
    "arguana": "beir/arguana",
    "webis-touche2020": "beir/webis-touche2020/v2",
    "quora": "beir/quora/test",
    "dbpedia-entity": "beir/dbpedia-entity/test",
    "scidocs": "beir/scidocs",
    "fever": "beir/fever/test",
    "climate-fever": "beir/climate-fever",
    "scifact": "beir/scifact/test",
}
MSMARCO = {
    "msmarco-dev": "msmarco-passage/dev/small",
    "dl19": "msmarco-passage/trec-dl-2019/judged",
    "dl20": "msmarco-passage/trec-dl-2020/judged",
}
SHORT_NAMES = {**BEIR, **MSMARCO}
# TREC DL judges on a 0-3 scale where 1 means "related": recall and MAP count grade >= 2, as `trec_eval -l 2`.
GRADED = {MSMARCO["dl19"], MSMARCO["dl20"]}

DEFAULT_SEED = Path("../shared/ir_datasets")


class DataError(PipelineError, ValueError):
    """Bad input data; the message names the file (or dataset) and the line (or position)."""


class Document(NamedTuple):
    id: str
    text: str


@dataclass(frozen=True)
class Dataset:
    """A corpus with queries and qrels: `name` is an ir_datasets id or a local BEIR folder."""

    name: str
    folder: Path | None = None

    @property
    def relevance_level(self) -> int:
        return 2 if self.name in GRADED else 1

    @property
    def queries_are_documents(self) -> bool:
        """BEIR sets such as ArguAna and Quora share ids between queries and documents; a query's own
        document is removed from its ranking, as Pyserini's `--remove-query` does. Elsewhere (MS MARCO,
        Cranfield) query and document ids overlap by coincidence only."""
        return self.folder is not None or self.name.startswith("beir/")

    def docs(self, start: int = 0, stop: int | None = None) -> Iterator[Document]:
        """The documents from position `start` to `stop` (all by default), in corpus order; raises
        DataError on a malformed line or an id repeated within them."""
        seen: dict[str, str] = {}
        for where, doc in self._raw_docs(start, stop):
            if doc.id in seen:
                raise DataError(f"{where}: duplicate document id {doc.id!r} (first at {seen[doc.id]})")
            seen[doc.id] = where
            yield doc

    def queries(self) -> dict[str, str]:
        if self.folder is not None:
            return {
                str(row["_id"]): row["text"] for _, row in _jsonl(self.folder / "queries.jsonl", ("_id", "text"))
            }
        return {q.query_id: q.text for q in _ir_dataset(self.name).queries_iter()}

    def qrels(self) -> dict[str, dict[str, int]]:
        qrels: dict[str, dict[str, int]] = {}
        if self.folder is not None:
            for qid, docid, relevance in _qrels_tsv(self.folder / "qrels" / "test.tsv"):
                qrels.setdefault(qid, {})[docid] = relevance
            return qrels
        for qrel in _ir_dataset(self.name).qrels_iter():
            qrels.setdefault(qrel.query_id, {})[qrel.doc_id] = qrel.relevance
        return qrels

    def docs_count(self) -> int | None:
        """The number of documents, for progress bars (a local corpus: its non-blank lines)."""
        if self.folder is not None:
            return count_records(self.folder / "corpus.jsonl")
        return _ir_dataset(self.name).docs_count()

    def _raw_docs(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, Document]]:
        if self.folder is not None:
            path = self.folder / "corpus.jsonl"
            for where, row in islice(_jsonl(path, ("_id",)), start, stop):
                yield where, Document(str(row["_id"]), _join(row.get("title"), row.get("text")))
            return
        docs = _ir_dataset(self.name).docs_iter()[start:stop]  # a docstore seeks, not reads, to `start`
        for position, doc in enumerate(docs, start=start + 1):
            yield f"{self.name} document #{position}", Document(doc.doc_id, _join(getattr(doc, "title", None), doc.text))


def _join(title: str | None, text: str | None) -> str:
    """BEIR's document text: title + " " + text (as Pyserini's BEIR indexes)."""
    return " ".join(part.strip() for part in (title, text) if part and part.strip())


def _jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            where = f"{path}:{number}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict) or any(key not in row for key in required):
                raise DataError(f"{where}: expected a JSON object with keys {list(required)}")
            yield where, row


def _qrels_tsv(path: Path) -> Iterator[tuple[str, str, int]]:
    with open(path, encoding="utf-8", newline="") as rows:
        for number, row in enumerate(csv.reader(rows, delimiter="\t"), start=1):
            if number == 1 and row[:1] == ["query-id"]:
                continue  # BEIR's header
            if not row:
                continue
            try:
                qid, docid, relevance = row
                yield qid, docid, int(relevance)
            except ValueError:
                raise DataError(f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}") from None


def read_columns(path: Path, columns: dict[str, type]) -> Iterator[tuple]:
    """Whitespace-separated records, one a line (blank lines skipped), each field converted by its type."""
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != len(columns):
                    raise ValueError
                record = tuple(kind(value) for kind, value in zip(columns.values(), fields))
            except ValueError:
                raise DataError(f"{path}:{number}: expected '{' '.join(columns)}', got {line.strip()!r}") from None
            yield record


def read_trec_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A TREC qrels file: `qid iteration docid relevance` per line."""
    qrels: dict[str, dict[str, int]] = {}
    for qid, _, docid, relevance in read_columns(path, {"qid": str, "iteration": str, "docid": str, "relevance": int}):
        qrels.setdefault(qid, {})[docid] = relevance
    return qrels


def seed_ir_datasets_cache(seed: Path | None = None) -> Path:
    """Copy the files of a seed cache that the writable ir_datasets cache lacks (air-gapped runs).

    ir_datasets writes docstores beside its downloads, so a read-only seed must be copied, not linked.
    """
    home = Path(os.environ.setdefault("IR_DATASETS_HOME", str(Path.home() / ".ir_datasets")))
    seed = Path(os.environ.get("PIPELINE_IR_DATASETS_SEED", DEFAULT_SEED)) if seed is None else seed
    if seed.is_dir():
        for source in seed.rglob("*"):
            target = home / source.relative_to(seed)
            if source.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    return home


def _ir_dataset(name: str):
    seed_ir_datasets_cache()
    import ir_datasets

    return ir_datasets.load(name)


def load(spec: str) -> Dataset:
    """A dataset from a short name (`scifact`, `dl19`), an ir_datasets id, or a local BEIR folder."""
    if spec in SHORT_NAMES:
        return Dataset(SHORT_NAMES[spec])
    folder = Path(spec)
    if folder.is_dir():
        missing = [name for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv") if not (folder / name).is_file()]
        if missing:
            raise DataError(f"{folder}: not a BEIR folder, missing {', '.join(missing)}")
        return Dataset(str(folder), folder)
    import ir_datasets

    if spec in ir_datasets.registry:
        return Dataset(spec)
    raise DataError(
        f"unknown dataset {spec!r}. Accepted: a short name ({', '.join(SHORT_NAMES)}); an ir_datasets id "
        "(e.g. beir/scifact/test, beir/arguana, msmarco-passage/dev/small); or a BEIR folder holding "
        "corpus.jsonl, queries.jsonl and qrels/test.tsv"
    )
