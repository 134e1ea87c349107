"""Datasets (ir_datasets ids, short BEIR/MS MARCO names, local BEIR folders) and their corpora, behind
one interface. A corpus is what is encoded and indexed, once for every dataset over it: datasets whose
ir_datasets documents are the same object (MS MARCO dev, DL19 and DL20; a BEIR corpus's splits) share
one, named by the shortest ir_datasets id holding those documents; local corpus files are their own.

Every reader streams records, checks them as it goes and names the file and line of a bad one:
malformed or truncated lines, missing fields, wrong types, invalid UTF-8, repeated ids, ids that
whitespace-separated formats (TREC runs and qrels, Anserini's vectors) cannot carry. Legal oddities
are handled and documented (README, "What happens when"): a UTF-8 BOM is skipped, CRLF is read as
LF, blank lines are skipped, unknown fields are ignored, a lone surrogate in a text becomes U+FFFD.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from pipeline.errors import DataError
from pipeline.files import atomic_path, count_lines, json_object, jsonl_records, record_lines, text_lines

log = logging.getLogger(__name__)

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
# TREC DL's passage tracks judge on a 0-3 scale where 1 means "related": recall and MAP count grade >= 2, as
# `trec_eval -l 2` (every ir_datasets id of them: msmarco-passage/trec-dl-2019, .../judged, trec-dl-hard...).
GRADED_COLLECTIONS = {"msmarco-passage", "msmarco-passage-v2"}
GRADED_TRACK = "trec-dl-"
# The BEIR corpora (in ir_datasets) whose published Pyserini runs (pyserini/2cr/beir.yaml, every
# condition) drop a query's own id from its ranking (`--remove-query`). BEIR's msmarco is not among them.
REMOVE_QUERY = {"arguana", "climate-fever", "cqadupstack", "dbpedia-entity", "fever", "fiqa", "hotpotqa", "nfcorpus",
                "nq", "quora", "scidocs", "scifact", "trec-covid", "webis-touche2020"}

DEFAULT_SEED = Path("../shared/ir_datasets")
DEFAULT_QRELS_SEED = Path("../shared/qrels")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Archive and network failures of ir_datasets while it reads (or downloads) a dataset's files; it
# reports a failed download as a RuntimeError ("All download sources failed").
READ_ERRORS = (EOFError, OSError, zlib.error, zipfile.BadZipFile, tarfile.TarError, RuntimeError)
# Local corpus files, each read by its name: JSON lines (BEIR or Pyserini records) or `id<TAB>text`.
CORPUS_SUFFIXES = (".jsonl", ".jsonl.gz", ".tsv", ".tsv.gz")


class Document(NamedTuple):
    id: str
    text: str


def check_id(value: object, where: str, what: str) -> str:
    """An id as the files downstream need it: a JSON string (or integer), one word of printable characters.

    TREC runs and qrels split their lines on whitespace and trec_eval reads C strings, so whitespace
    and control characters would split or cut an id; a lone surrogate cannot be written as UTF-8.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{where}: {what} must be a string, got {type(value).__name__} {value!r}")
    value = str(value)
    if not value:
        raise DataError(f"{where}: empty {what}")
    for char in value:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cs"):
            raise DataError(f"{where}: {what} {value!r} contains U+{ord(char):04X}, which ids cannot hold "
                            "(whitespace, control characters and lone surrogates break TREC runs and qrels)")
    return value


def _text(value: object, where: str, field: str) -> tuple[str, bool]:
    """A text field (missing or null reads as ""), with lone surrogates (legal in JSON as `\\ud800`,
    not encodable as UTF-8) replaced by U+FFFD; also says whether any was replaced."""
    if value is None:
        return "", False
    if not isinstance(value, str):
        raise DataError(f"{where}: {field} must be a string, got {type(value).__name__} {value!r}")
    cleaned, replaced = LONE_SURROGATE.subn("\ufffd", value)
    return cleaned, bool(replaced)


def _join(title: str, text: str) -> str:
    """BEIR's document text: title + " " + text (as Pyserini's BEIR indexes)."""
    return " ".join(part.strip() for part in (title, text) if part.strip())


def _unique(records: Iterable[tuple[str, str, object]], what: str) -> Iterator[tuple[str, str, object]]:
    """(where, id, value) records, refusing a repeated id with both places."""
    seen: dict[str, str] = {}
    for where, key, value in records:
        if key in seen:
            raise DataError(f"{where}: duplicate {what} {key!r} (first at {seen[key]})")
        seen[key] = where
        yield where, key, value


def _collect_qrels(records: Iterable[tuple[str, str, str, int]], source: str) -> dict[str, dict[str, int]]:
    """{qid: {docid: grade}}; a repeated judgment is kept once (and counted in a warning) when its grades
    agree, refused when they differ."""
    qrels: dict[str, dict[str, int]] = {}
    places: dict[tuple[str, str], str] = {}
    repeated = 0
    for where, qid, docid, grade in records:
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            if judged[docid] != grade:
                raise DataError(f"{where}: query {qid!r} judges document {docid!r} {grade}, but "
                                f"{judged[docid]} at {places[qid, docid]}")
            repeated += 1
        judged[docid] = grade
        places[qid, docid] = where
    if not qrels:
        raise DataError(f"{source}: no judgments")
    if repeated:
        log.warning("%s: %d repeated judgments (same query, document and grade) counted once", source, repeated)
    return qrels


def _json_document(where: str, line: str) -> tuple[str, tuple[str, bool]]:
    """A JSON-lines document: BEIR's `_id`, `title`, `text` (joined as BEIR's text) or Pyserini's `id`, `contents`."""
    row = json_object(where, line)
    if "_id" in row:
        title, title_fixed = _text(row.get("title"), where, "title")
        text, text_fixed = _text(row.get("text"), where, "text")
        return check_id(row["_id"], where, "document id"), (_join(title, text), title_fixed or text_fixed)
    if "id" in row:
        return check_id(row["id"], where, "document id"), _text(row.get("contents"), where, "contents")
    raise DataError(f"{where}: expected a JSON object with keys ['_id'] (BEIR: _id, title, text) "
                    "or ['id', 'contents'] (Pyserini)")


def _tsv_document(where: str, line: str) -> tuple[str, tuple[str, bool]]:
    """An MS MARCO-style `id<TAB>text` line (the text may hold further tabs)."""
    doc_id, tab, text = line.partition("\t")
    if not tab:
        raise DataError(f"{where}: expected 'id<TAB>text', got {line[:80]!r}")
    return check_id(doc_id, where, "document id"), _text(text, where, "text")


def corpus_files(path: Path) -> tuple[Path, ...]:
    """A corpus file, or a folder's corpus files (CORPUS_SUFFIXES) in name order."""
    if not path.is_dir():
        return (path,)
    files = tuple(sorted(file for file in path.iterdir() if file.is_file() and file.name.endswith(CORPUS_SUFFIXES)))
    if not files:
        raise DataError(f"{path}: no corpus files ({', '.join('*' + suffix for suffix in CORPUS_SUFFIXES)})")
    return files


@dataclass(frozen=True)
class Corpus:
    """Documents to encode and index: an ir_datasets id's (`name` is the shortest id holding them), or
    local `files` (`name` is their path), read as a stream in corpus order."""

    name: str
    files: tuple[Path, ...] = ()

    def docs(self, start: int = 0, stop: int | None = None) -> Iterator[Document]:
        """The documents from position `start` to `stop` (all by default), in corpus order; raises
        DataError on a bad line, an id repeated within them, or an empty corpus."""
        count = replaced = 0
        for _, doc_id, (text, fixed) in _unique(self._raw_docs(start, stop), "document id"):
            count += 1
            replaced += fixed
            yield Document(doc_id, text)
        if not count and start == 0:
            raise DataError(f"{self.name}: no documents")
        if replaced:
            log.warning("%s: %d documents had lone surrogates, each replaced by U+FFFD", self.name, replaced)

    def docs_count(self) -> int:
        """The number of documents, for planning parts and progress bars (local files: non-blank lines)."""
        if self.files:
            return count_lines(self.files)
        with _reading(self.name):
            dataset = _ir_dataset(self.name)
            # Known from ir_datasets' metadata for its own datasets; another (a plugin's) is counted by reading.
            count = dataset.docs_count()
            return count if count is not None else sum(1 for _ in dataset.docs_iter())

    def check(self) -> int:
        """Read every document once, before any long work: a bad line near the end of the corpus fails
        in seconds instead of after hours of encoding. Returns the count."""
        return sum(1 for _ in self.docs())

    def _raw_docs(self, start: int, stop: int | None) -> Iterator[tuple[str, str, tuple[str, bool]]]:
        if self.files:
            for path, where, line in record_lines(self.files, start, stop):
                parse = _tsv_document if path.name.endswith((".tsv", ".tsv.gz")) else _json_document
                yield where, *parse(where, line)
            return
        with _reading(self.name):
            docs = _ir_dataset(self.name).docs_iter()[start:stop]  # a docstore seeks, not reads, to `start`
            for position, doc in enumerate(docs, start=start + 1):
                where = f"{self.name} document #{position}"
                title, title_fixed = _text(getattr(doc, "title", None), where, "title")
                text, text_fixed = _text(doc.text, where, "text")
                yield where, check_id(doc.doc_id, where, "document id"), (_join(title, text), title_fixed or text_fixed)


def _docs_owner(name: str) -> str:
    """The shortest ir_datasets id (a prefix of `name`) whose documents are `name`'s very documents."""
    import ir_datasets

    documents = ir_datasets.load(name).docs_handler()
    parts = name.split("/")
    for end in range(1, len(parts)):
        prefix = "/".join(parts[:end])
        if prefix in ir_datasets.registry:
            owner = ir_datasets.load(prefix)
            if owner.has_docs() and owner.docs_handler() is documents:
                return prefix
    return name


@dataclass(frozen=True)
class Dataset:
    """A corpus with queries and qrels: `name` is an ir_datasets id or a local BEIR folder."""

    name: str
    folder: Path | None = None

    @property
    def relevance_level(self) -> int:
        collection, _, track = self.name.partition("/")
        return 2 if collection in GRADED_COLLECTIONS and track.startswith(GRADED_TRACK) else 1

    @property
    def queries_are_documents(self) -> bool:
        """Whether search drops a query's own id from its ranking by default (Pyserini's
        `--remove-query`): only on the BEIR corpora whose published Pyserini runs do so. In a local
        folder or elsewhere (MS MARCO, Cranfield) query and document ids may coincide by numbering
        alone, and removing would silently lose a document; search's `--remove-query` asks for it."""
        parts = self.name.split("/")
        return self.folder is None and parts[0] == "beir" and len(parts) > 1 and parts[1] in REMOVE_QUERY

    @cached_property
    def corpus(self) -> Corpus:
        """The documents: a BEIR folder's corpus.jsonl, or those shared by the ir_datasets ids over them."""
        if self.folder is not None:
            return Corpus(str(self.folder / "corpus.jsonl"), (self.folder / "corpus.jsonl",))
        with _reading(self.name):
            return Corpus(_docs_owner(self.name))

    def docs(self, start: int = 0, stop: int | None = None) -> Iterator[Document]:
        return self.corpus.docs(start, stop)

    def queries(self) -> dict[str, str]:
        """{qid: text}; raises DataError on a bad line, a repeated id or no queries at all."""
        queries, replaced = {}, 0
        for _, qid, (text, fixed) in _unique(self._raw_queries(), "query id"):
            queries[qid] = text
            replaced += fixed
        if not queries:
            raise DataError(f"{self.folder / 'queries.jsonl' if self.folder is not None else self.name}: no queries")
        if replaced:
            log.warning("%s: %d queries had lone surrogates, each replaced by U+FFFD", self.name, replaced)
        return queries

    def qrels(self) -> dict[str, dict[str, int]]:
        if self.folder is not None:
            path = self.folder / "qrels" / "test.tsv"
            return _collect_qrels(_qrels_tsv(path), str(path))
        with _reading(self.name):
            return _collect_qrels(
                ((f"{self.name} judgment #{n}", check_id(q.query_id, f"{self.name} judgment #{n}", "query id"),
                  check_id(q.doc_id, f"{self.name} judgment #{n}", "document id"), q.relevance)
                 for n, q in enumerate(_ir_dataset(self.name).qrels_iter(), start=1)), self.name)

    def docs_count(self) -> int:
        return self.corpus.docs_count()

    def check(self) -> dict[str, int]:
        """Read every query and judgment once, before any long work (`Corpus.check` reads the documents)."""
        return {"queries": len(self.queries()), "judged_queries": len(self.qrels())}

    def check_source(self, output: Path, what: str, *, known_from: Path | None = None) -> None:
        """Refuse an output of ours recorded as made from another corpus (an index) or from another
        dataset's queries (encoded queries). The dataset's corpus is read from the output itself, or
        from `known_from`, when that records this dataset and its corpus (encode's queries do): ir_datasets'
        import and lookup are then spared."""
        for key in ("corpus", "dataset"):
            theirs = recorded(output, key)
            if theirs is None:
                continue
            ours = self._corpus_name(known_from or output) if key == "corpus" else self.name
            if _canonical(theirs) != _canonical(ours):
                raise DataError(f"{output}: {what} of {key} {theirs!r}, not of {ours!r}")

    def _corpus_name(self, known_from: Path) -> str:
        dataset = recorded(known_from, "dataset")
        if dataset is not None and _canonical(dataset) == _canonical(self.name):
            return recorded(known_from, "corpus") or self.corpus.name
        return self.corpus.name

    def _raw_queries(self) -> Iterator[tuple[str, str, tuple[str, bool]]]:
        if self.folder is not None:
            for where, row in jsonl_records(self.folder / "queries.jsonl"):
                _require(row, where, ("_id", "text"))
                yield where, check_id(row["_id"], where, "query id"), _text(row["text"], where, "text")
            return
        with _reading(self.name):
            for position, query in enumerate(_ir_dataset(self.name).queries_iter(), start=1):
                where = f"{self.name} query #{position}"
                yield where, check_id(query.query_id, where, "query id"), _text(query.text, where, "text")


def _require(row: dict, where: str, keys: tuple[str, ...]) -> None:
    if any(key not in row for key in keys):
        raise DataError(f"{where}: expected a JSON object with keys {list(keys)}")


def _qrels_tsv(path: Path) -> Iterator[tuple[str, str, str, int]]:
    """BEIR's `query-id<TAB>corpus-id<TAB>score` (header optional)."""
    for where, line in text_lines(path):
        fields = line.split("\t")
        if where.endswith(":1") and fields[0] == "query-id":
            continue
        if not line.strip():
            continue
        try:
            qid, docid, grade = fields
            yield where, check_id(qid, where, "query id"), check_id(docid, where, "document id"), int(grade)
        except ValueError:
            raise DataError(f"{where}: expected 'query-id<TAB>corpus-id<TAB>score' (an integer score), got {line!r}") from None


def read_columns(path: Path, columns: dict[str, type]) -> Iterator[tuple]:
    """Whitespace-separated records, one a line (blank lines skipped), each field converted by its type;
    the first field of each record is `path:line`."""
    for where, line in text_lines(path):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != len(columns):
                raise ValueError
            record = tuple(kind(value) for kind, value in zip(columns.values(), fields))
        except ValueError:
            raise DataError(f"{where}: expected '{' '.join(columns)}', got {line.strip()!r}") from None
        yield (where, *record)


def read_trec_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A TREC qrels file: `qid iteration docid relevance` per line."""
    columns = {"qid": str, "iteration": str, "docid": str, "relevance": int}
    return _collect_qrels(((where, check_id(qid, where, "query id"), check_id(docid, where, "document id"), grade)
                           for where, qid, _, docid, grade in read_columns(path, columns)), str(path))


# Anserini reads impact weights as Java ints, and a document's weights add up to its length, an int too.
MAX_IMPACT = 2**31 - 1


# A term must not hold whitespace (Lucene splits terms on it), the impact index's delimiter, nor a lone surrogate
# (not text: Java cannot take it).
_TERM_BREAK = re.compile("[\\s\x01\ud800-\udfff]")
# Lucene's whitespace tokenizer cuts a token at 255 UTF-16 units, and the impact index's token is
# term + \x01 + weight (10 digits at most): a longer term would be cut, its weight's digits split off.
MAX_TERM_UNITS = 255 - 1 - len(str(MAX_IMPACT))


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def checked_vectors(paths: Iterable[Path], start: int = 0, stop: int | None = None) -> Iterator[tuple[str, str, dict[str, int]]]:
    """(where, id, vector) of records `start` to `stop` of JsonVectorCollection files, checked as an
    index needs them: Anserini would skip a bad record silently or truncate a weight, Lucene split a term."""
    for _, where, line in record_lines(list(paths), start, stop):
        record = json_object(where, line)
        doc_id = check_id(record.get("id"), where, "document id")
        vector = record.get("vector")
        if not isinstance(vector, dict) or not vector:
            raise DataError(f"{where}: expected a non-empty JSON object 'vector' of term: weight (Anserini drops an empty one)")
        if "" in vector or _TERM_BREAK.search("".join(vector)):
            term = next(term for term in vector if not term or _TERM_BREAK.search(term))
            raise DataError(f"{where}: term {term!r} is empty or holds whitespace, \\x01 (Lucene splits terms on them) "
                            "or a lone surrogate")
        if 2 * max(map(len, vector)) > MAX_TERM_UNITS and (long := [t for t in vector if utf16_units(t) > MAX_TERM_UNITS]):
            raise DataError(f"{where}: term {long[0][:40]!r}... is {utf16_units(long[0])} UTF-16 units long: Lucene cuts "
                            f"terms at {MAX_TERM_UNITS} (with the weight, 255)")
        for term, weight in vector.items():
            if type(weight) is not int or not 0 < weight <= MAX_IMPACT:
                raise DataError(f"{where}: weight of term {term!r} must be a positive integer below 2^31, got {weight!r}")
        if sum(vector.values()) > MAX_IMPACT:
            raise DataError(f"{where}: the weights add up to more than 2^31 - 1, which Lucene cannot store (lower --scale)")
        yield where, doc_id, vector


def recorded(output: Path, key: str):
    """What the stage writing `output` recorded it was made from (`key`: "corpus", "dataset", "model_files"...), in
    the stats file beside it (`<output>.json`: an index, encoded queries) or in encode's stats.json in
    its folder. None for a file we did not write."""
    for stats in (output.with_name(output.name + ".json"), output / "stats.json", output.parent / "stats.json"):
        if stats.is_file():
            return json.loads(stats.read_text()).get(key)
    return None


def _canonical(spec: str) -> str:
    """One name per dataset or corpus: short names as ir_datasets ids, local paths as absolute paths."""
    return str(Path(spec).resolve()) if Path(spec).exists() else SHORT_NAMES.get(spec, spec)


def seed_cache(seed: Path, cache: Path) -> None:
    """Copy the files of a seed folder that a cache lacks, or holds at another size (an older,
    interrupted copy), each written under a temporary name and renamed when complete."""
    if not seed.is_dir():
        return
    for source in seed.rglob("*"):
        target = cache / source.relative_to(seed)
        if source.is_file() and not (target.is_file() and target.stat().st_size == source.stat().st_size):
            with atomic_path(target) as staging:
                shutil.copyfile(source, staging)


def seed_ir_datasets_cache(seed: Path | None = None) -> Path:
    """Seed the writable ir_datasets cache from a read-only one (air-gapped runs).

    ir_datasets writes docstores beside its downloads, so a read-only seed must be copied, not linked.
    """
    home = Path(os.environ.setdefault("IR_DATASETS_HOME", str(Path.home() / ".ir_datasets")))
    seed_cache(Path(os.environ.get("PIPELINE_IR_DATASETS_SEED", DEFAULT_SEED)) if seed is None else seed, home)
    return home


def trec_qrels_file(name: str) -> Path:
    """Official TREC qrels by their Anserini name (`dl19-passage`, `msmarco-passage-dev-subset`), through
    Pyserini's helper, which downloads them into its cache (~/.cache/pyserini/topics-and-qrels). The
    files of PIPELINE_QRELS_SEED (default ../shared/qrels), which keep Anserini's names, seed that cache."""
    from pipeline import lucene

    autoclass = lucene.start_jvm()
    from pyserini.search._base import get_qrels_file, qrels_mapping

    if name not in qrels_mapping:
        raise DataError(f"unknown qrels {name!r}: Pyserini knows e.g. dl19-passage, dl20-passage, msmarco-passage-dev-subset")
    cache = Path(str(autoclass("io.anserini.eval.RelevanceJudgments").getCacheDir()))
    seed_cache(Path(os.environ.get("PIPELINE_QRELS_SEED", DEFAULT_QRELS_SEED)), cache)
    try:
        return Path(get_qrels_file(name))
    except Exception as err:  # jnius.JavaException: Anserini could not download the file
        raise DataError(f"cannot get qrels {name!r} into {cache}: {str(err).splitlines()[0]}") from None


@contextmanager
def _reading(name: str):
    """ir_datasets' failures to read (or fetch) a dataset's files, as one DataError naming the cache."""
    try:
        yield
    except READ_ERRORS as err:
        home = os.environ.get("IR_DATASETS_HOME")
        raise DataError(f"{name}: cannot read or download its files in the ir_datasets cache {home} "
                        f"({type(err).__name__}: {str(err)[:300]}); a truncated file there must be deleted (it is "
                        "copied again from IR_DATASETS_SEED, or downloaded); offline, seed it (README, Air-gapped use)") from None


def _ir_dataset(name: str):
    seed_ir_datasets_cache()
    import ir_datasets

    return ir_datasets.load(name)


def load_corpus(spec: str) -> Corpus:
    """Documents to encode and index: a dataset's (a short name, an ir_datasets id, a BEIR folder), or
    local files, a file or a folder of them: JSON lines in BEIR (`_id`, `title`, `text`) or Pyserini
    (`id`, `contents`) form, or `id<TAB>text` TSV (`*.tsv`), each gzip'd or not (`.gz`)."""
    path = Path(spec)
    if (path / "corpus.jsonl").is_file():  # a BEIR folder: its corpus file
        path = path / "corpus.jsonl"
    if path.exists():
        return Corpus(str(path), corpus_files(path))
    try:
        return load(spec).corpus
    except DataError as error:
        raise DataError(f"{spec}: no such corpus file or folder; {error}") from None


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
