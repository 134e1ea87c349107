"""Training examples: a query, its positive documents and hard negatives, from
- a BEIR/ir_datasets split with qrels (`beir/scifact/train`), negatives mined with BM25 from the
  spine's index of that corpus;
- ir_datasets document pairs (`msmarco-passage/train/triples-small`);
- a local TSV of text triples `query<TAB>positive<TAB>negative`.
Batches are drawn from (seed, step) alone, so a resumed run sees the very batches it would have seen.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from pipeline import data, lucene
from pipeline.data import DataError
from pipeline.files import text_lines

log = logging.getLogger(__name__)

Doc = tuple[str, str]  # (id, text)


@dataclass(frozen=True)
class Example:
    qid: str
    query: str
    positives: tuple[Doc, ...]
    negatives: tuple[Doc, ...]


def from_qrels(dataset: str, negatives_index: Path, *, depth: int = 100, threads: int = 2) -> list[Example]:
    """Judged positives; hard negatives = BM25's top `depth` minus every judged document (random
    unjudged documents for a query whose BM25 hits are all judged)."""
    corpus = data.load(dataset)
    queries, qrels = corpus.queries(), corpus.qrels()
    without = [qid for qid in queries if not any(rel > 0 for rel in qrels.get(qid, {}).values())]
    if without:
        log.warning("%s: %d of %d queries have no positive document and are left out (e.g. %s)",
                    dataset, len(without), len(queries), without[:3])
    kept = {qid: text for qid, text in queries.items() if qid not in set(without)}
    texts = {doc.id: doc.text for doc in corpus.docs()}
    unknown = sorted({d for qid in kept for d in qrels[qid] if d not in texts})
    if unknown:
        raise DataError(f"{dataset}: {len(unknown)} judged documents are not in the corpus (e.g. {unknown[:3]})")
    hits = lucene.bm25_search(negatives_index, kept, k=depth, threads=threads, k1=0.9, b=0.4)
    examples, random_negatives = [], 0
    for qid, text in kept.items():
        judged = qrels[qid]
        positives = tuple((d, texts[d]) for d, rel in judged.items() if rel > 0)
        # A BEIR query can be a document itself (ArguAna, Quora): never its own negative.
        negatives = tuple((d, texts[d]) for d, _ in hits.get(qid, []) if d not in judged and d != qid)
        if not negatives:  # BM25 matched only judged documents: random ones, seeded by the query
            random_negatives += 1
            pool = [d for d in texts if d not in judged and d != qid]
            negatives = tuple((d, texts[d]) for d in random.Random(qid).sample(pool, min(depth, len(pool))))
        examples.append(Example(qid, text, positives, negatives))
    if random_negatives:
        log.warning("%s: %d queries have no unjudged BM25 hit; their negatives are random documents",
                    dataset, random_negatives)
    return examples


def from_docpairs(dataset: str, limit: int | None = None) -> list[Example]:
    """ir_datasets training pairs (query_id, positive doc_id, negative doc_id), e.g. MS MARCO triples."""
    import ir_datasets

    data.seed_ir_datasets_cache()
    source = ir_datasets.load(dataset)
    queries = {q.query_id: q.text for q in source.queries_iter()}
    store = source.docs_store()
    examples = []
    for pair in islice(source.docpairs_iter(), limit):
        docs = store.get_many([pair.doc_id_a, pair.doc_id_b])
        examples.append(Example(pair.query_id, queries[pair.query_id], ((pair.doc_id_a, docs[pair.doc_id_a].text),),
                                ((pair.doc_id_b, docs[pair.doc_id_b].text),)))
    return examples


def from_tsv(path: Path) -> list[Example]:
    """`query<TAB>positive<TAB>negative` text triples; ids are the file's line numbers."""
    examples = []
    for where, line in text_lines(path):
        if not line:
            continue
        row = line.split("\t")
        if len(row) != 3 or not all(field.strip() for field in row):
            raise DataError(f"{where}: expected 'query<TAB>positive<TAB>negative', got {len(row)} fields")
        number = where.rsplit(":", 1)[1]
        query, positive, negative = row
        examples.append(Example(number, query, ((f"{number}+", positive),), ((f"{number}-", negative),)))
    if not examples:
        raise DataError(f"{path}: no triples")
    return examples


def load_examples(source: str, *, negatives_index: Path | None = None, limit: int | None = None) -> list[Example]:
    if Path(source).is_file():
        return from_tsv(Path(source))[:limit]
    import ir_datasets

    data.seed_ir_datasets_cache()
    dataset_id = data.SHORT_NAMES.get(source, source)
    if dataset_id in ir_datasets.registry and ir_datasets.load(dataset_id).has_docpairs():
        return from_docpairs(dataset_id, limit)
    if negatives_index is None:
        raise DataError(f"{source}: training on qrels needs --negatives-index (a BM25 index of its corpus)")
    return from_qrels(dataset_id, negatives_index)[:limit]


def read_teacher(path: Path) -> dict[tuple[str, str], float]:
    """Teacher scores, `qid docid score` per line; a pair scored twice or a score that is not finite is refused."""
    scores, places = {}, {}
    for where, qid, docid, score in data.read_columns(path, {"qid": str, "docid": str, "score": float}):
        if not math.isfinite(score):
            raise DataError(f"{where}: score {score} is not a finite number")
        if (qid, docid) in places:
            raise DataError(f"{where}: query {qid!r} and document {docid!r} scored twice (first at {places[qid, docid]})")
        scores[qid, docid], places[qid, docid] = score, where
    return scores


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, count: int) -> list[int]:
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


@dataclass
class Batch:
    queries: list[str]
    docs: list[str]  # `group` per query, the positive first
    teacher: list[list[float]] | None
    group: int


def draw_batch(examples: list[Example], step: int, size: int, negatives: int, seed: int,
               teacher: dict | None = None, shard: tuple[int, int] = (0, 1)) -> Batch:
    """The global batch of `step` (epochs are seeded permutations), this process's `shard` of it."""
    start = step * size
    picked = []
    for position in range(start, start + size):
        epoch, offset = divmod(position, len(examples))
        picked.append((position, examples[_epoch_order(seed, epoch, len(examples))[offset]]))
    rank, world = shard
    queries, docs, scores = [], [], []
    for position, example in picked[rank::world]:
        rng = random.Random(seed * 7_919 + position)
        group = [rng.choice(example.positives)] + [rng.choice(example.negatives) for _ in range(negatives)]
        queries.append(example.query)
        docs += [text for _, text in group]
        if teacher is not None:
            missing = [doc_id for doc_id, _ in group if (example.qid, doc_id) not in teacher]
            if missing:
                raise DataError(f"teacher scores lack query {example.qid} with documents {missing}")
            scores.append([teacher[(example.qid, doc_id)] for doc_id, _ in group])
    return Batch(queries, docs, scores if teacher is not None else None, 1 + negatives)
