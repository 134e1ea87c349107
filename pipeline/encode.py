"""Stage `encode`: a corpus's documents, and a dataset's queries -> SPLADE impact vectors in Anserini's formats.

A corpus is encoded once for every dataset over it (`data.Corpus`); each dataset's queries on their own.
Output folder of the documents (resumable parts, `pipeline.parts`):
  docs/part-NNNNN.jsonl   JsonVectorCollection: {"id", "contents", "vector": {term: int}}, part_size
                          documents each, in corpus order of parts
  settings.json, done/, manifest.json   what the parts come from, each part's record, all of them
  queries.jsonl           the same record per query (its text in "contents"), when encoding a dataset
                          (encoded again by each such call, the documents being done or not)
  stats.json              corpus (and dataset), counts, truncations, empty vectors, timing (written last)
Query sets may go to files of their own, e.g. queries/<dataset>.jsonl, with their stats (dataset,
corpus, counts) in queries/<dataset>.jsonl.json: in the same process as their corpus (the model loaded
once), or alone. Documents already encoded (their manifest and stats.json there) are not encoded again.

Weights are quantized as int(round(w * scale)) here, because Anserini truncates them to integers.
A blank (empty or whitespace-only) text gets an empty vector. Anserini silently drops a document whose
vector is empty, so such a document (blank, or all its weights rounding to 0) gets the reserved term
EMPTY_VECTOR_TERM with weight 1: it stays in the index (counts match) and no query can match it.
A blank query keeps its empty vector and retrieves nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import torch

from pipeline import data
from pipeline.background import Sink, prefetch
from pipeline.errors import OutputError, PipelineError
from pipeline.files import STORAGE_ERRORS, atomic_path, json_line, write_json
from pipeline.parts import PartStore, Plan
from pipeline.progress import Progress
from pipeline.ranks import join
from pipeline.splade.model import SpladeEncoder
from pipeline.splade.screened_projection import SparseWeights
from pipeline.train import refuse_collapsed

log = logging.getLogger(__name__)

EMPTY_VECTOR_TERM = "[EMPTY-VECTOR]"
# The settings of a documents folder that name its inputs: where one changed, its parts are stale (`--fresh-if-changed`).
INPUTS = ("corpus_source", "model_files")
# Documents are sorted by length inside windows of this many batches: most of the padding saved,
# memory bounded whatever the corpus size.
SORT_WINDOW_BATCHES = 64


def vocabulary_terms(tokenizer, vocab_size: int) -> list[str]:
    """Index term for each vocabulary id: whitespace-free, unique (Anserini splits on whitespace) and short enough
    for Lucene (`data.MAX_TERM_UNITS`).

    A whitespace character becomes `<U+XXXX>`; an empty, missing or clashing token gets `#<id>` added; a token
    longer than Lucene takes (a run of 31+ spaces, as code-trained vocabularies hold) is `#<id>` alone.
    """
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    taken, terms = {EMPTY_VECTOR_TERM}, []
    for token_id, token in enumerate(tokens):
        term = "".join(f"<U+{ord(c):04X}>" if c.isspace() else c for c in token or "")
        if data.utf16_units(term) > data.MAX_TERM_UNITS:
            term = ""
        if not term or term in taken:
            term = f"{term}#{token_id}"
        taken.add(term)
        terms.append(term)
    return terms


class Quantized(NamedTuple):
    """The non-zero entries of quantized [batch, vocab] weights, row by row, as Python lists."""

    counts: list[int]  # entries per row
    columns: list[int]
    values: list[int]


def quantized_weights(weights: torch.Tensor, scale: float) -> torch.Tensor:
    """int(round(w * scale)) of each weight (half to even), as an int64 [batch, vocab] tensor.

    Refuses weights that are not finite, or whose quantized sum in a row exceeds what Lucene stores
    (an int): the cast would wrap them into garbage."""
    if not torch.isfinite(weights).all():
        raise PipelineError("the model produced weights that are not finite numbers (NaN or Inf)")
    scaled = torch.round(weights * scale)
    if scaled.double().sum(dim=1).gt(data.MAX_IMPACT).any():
        raise _too_large(scale)
    return scaled.to(torch.int64)


def _too_large(scale: float) -> PipelineError:
    return PipelineError(f"--scale {scale:g} makes a vector's weights add up to more than 2^31 - 1, which "
                         "Lucene cannot store: use a smaller scale (100 is usual)")


def quantized_entries(weights: torch.Tensor | SparseWeights, scale: float) -> Quantized:
    """The non-zero entries of `quantized_weights`, from dense or sparse weights; computed where the
    weights are (a GPU sends back the few hundred entries per row, not the [batch, vocab] tensor)."""
    if isinstance(weights, torch.Tensor):
        documents, terms = weights.nonzero(as_tuple=True)
        weights = SparseWeights(documents, terms, weights[documents, terms], tuple(weights.shape))
    if not torch.isfinite(weights.values).all():
        raise PipelineError("the model produced weights that are not finite numbers (NaN or Inf)")
    scaled = torch.round(weights.values * scale)
    sums = torch.zeros(weights.shape[0], dtype=torch.float64, device=scaled.device)
    if sums.index_add_(0, weights.documents, scaled.double()).gt(data.MAX_IMPACT).any():
        raise _too_large(scale)
    kept = scaled != 0
    counts = torch.bincount(weights.documents[kept], minlength=weights.shape[0])
    return Quantized(counts.tolist(), weights.terms[kept].tolist(), scaled[kept].to(torch.int64).tolist())


def term_vectors(entries: Quantized, terms: list[str]) -> list[dict[str, int]]:
    """One {term: weight} per row."""
    vectors, start = [], 0
    for count in entries.counts:
        end = start + count
        vectors.append(dict(zip([terms[column] for column in entries.columns[start:end]], entries.values[start:end])))
        start = end
    return vectors


def quantize(weights: torch.Tensor, terms: list[str], scale: float) -> list[dict[str, int]]:
    """[batch, vocab] float weights -> one {term: int(round(w * scale))} per row, zeros left out."""
    return term_vectors(quantized_entries(weights, scale), terms)


@dataclass
class Counts:
    texts: int = 0
    truncated: int = 0
    empty: int = 0
    terms: int = 0
    seconds: float = 0.0


def length_sorted_batches(items: Iterable[data.Document], batch_size: int) -> Iterator[list[data.Document]]:
    """Length-sorted batches, sorted within windows so memory stays bounded."""
    items = iter(items)
    while window := list(islice(items, batch_size * SORT_WINDOW_BATCHES)):
        window.sort(key=lambda doc: len(doc.text), reverse=True)
        for start in range(0, len(window), batch_size):
            yield window[start : start + batch_size]


def _tokenized(encoder, batches: Iterable[list[data.Document]], max_length: int):
    """(batch, positions of its non-blank texts, their tokens or None, truncations) per batch.
    A blank text has no terms: its vector is empty, not the model's reading of [CLS] [SEP] (as one of zero-width
    or control characters alone, which `SpladeEncoder.sparse_weights` gives no weight)."""
    for batch in batches:
        filled = [i for i, item in enumerate(batch) if item.text.strip()]
        tokens, truncated = encoder.host_batch([batch[i].text for i in filled], max_length) if filled else (None, 0)
        yield batch, filled, tokens, truncated


def encode_texts(encoder, texts, terms, *, max_length, scale, batch_size, write, what, total=None, label="") -> Counts:
    """Encode `texts` (`what` they are, the progress bar's unit; `label` goes on after it in the bar's title).
    Reading and tokenizing run ahead in one thread, the model in this one, and building and writing the
    records behind in another (`pipeline.background`)."""
    counts, started = Counts(), time.perf_counter()

    def emit(job: tuple[list[data.Document], list[int], Quantized | None]) -> None:
        batch, filled, entries = job
        vectors: list[dict[str, int]] = [{} for _ in batch]
        if entries is not None:
            for i, vector in zip(filled, term_vectors(entries, terms)):
                vectors[i] = vector
        for item, vector in zip(batch, vectors):
            counts.terms += len(vector)
            counts.empty += not vector
            write(item, vector)
        counts.texts += len(batch)
        progress.update(len(batch))

    with Progress(total=total, desc=f"encode {what}{label}", unit=what) as progress, Sink(emit) as sink:
        for batch, filled, tokens, truncated in prefetch(_tokenized(encoder, length_sorted_batches(texts, batch_size), max_length)):
            entries = None if tokens is None else quantized_entries(encoder.sparse_weights(tokens), scale)
            counts.truncated += truncated
            sink.put((batch, filled, entries))
    counts.seconds = time.perf_counter() - started
    return counts


def _corpus_fingerprint(corpus: data.Corpus) -> dict:
    if not corpus.files:
        return {"ir_datasets": corpus.name}
    return {str(path.resolve()): {"bytes": path.stat().st_size, "modified_ns": path.stat().st_mtime_ns}
            for path in corpus.files}


def _model_fingerprint(model: str) -> dict:
    """sha256 of a local model's config and weights (a few seconds at most); a hub id as given."""
    folder = Path(model)
    if not (folder / "config.json").is_file():
        return {"hub_id": model}
    files = [folder / "config.json", *sorted(folder.glob("*.safetensors"))]
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def encode(
    model: str,
    out: Path | None = None,
    *,
    corpus: str | None = None,
    dataset: str | None = None,
    queries: Mapping[str, Path] | None = None,
    scale: float = 100,
    max_doc_length: int = 256,
    max_query_length: int = 64,
    batch_size: int = 32,
    part_size: int = 10_000,
    shard: str | None = None,
    fresh: bool = False,
    fresh_if_changed: bool = False,
    device: str | None = None,
    body_precision: str = "fp32",
    accept_collapsed: bool = False,
) -> dict | None:
    """Encode with SPLADE `model` the documents of `corpus` (`data.load_corpus`) into the folder `out`,
    or `dataset`'s corpus into `out` and its queries into `out`/queries.jsonl; then the queries of each
    dataset of `queries` ({dataset: file}) into its file. `queries` alone encodes no documents.

    Documents go in parts of `part_size` (`pipeline.parts`): a killed run continues from its last
    complete part, and a finished `out` (made with the same settings) is not encoded again; one made with other
    settings is refused, unless `fresh` (start again) or `fresh_if_changed` and the corpus's files or the model's
    differ (its parts are stale: start again). Under
    torchrun each rank encodes the parts i with i % world == rank and rank 0 finishes; with `shard`
    ("i/N") this process encodes its parts and stops, and a run without `shard` then verifies the parts
    and finishes. Finishing verifies every part, encodes the dataset's queries (if any) and writes
    `stats.json` last. Returns the documents' stats, with each query file's under "query_files" (None
    for a rank or shard that does not finish).
    `body_precision` "bf16" runs the transformer layers in bf16 (`SpladeEncoder`): faster on a GPU, and
    weights no longer equal to the fp32 model's. A model whose training collapsed is refused unless
    `accept_collapsed`."""
    if (corpus is not None and dataset is not None) or (corpus is None and dataset is None and not queries):
        raise ValueError("encode takes a corpus or a dataset, and query files, or query files alone")
    if (corpus is not None or dataset is not None) and out is None:
        raise ValueError("encode needs an output folder for the documents")
    query_set = data.load(dataset) if dataset is not None else None
    query_files = [(data.load(name), Path(path)) for name, path in (queries or {}).items()]
    documents = query_set.corpus if query_set is not None else data.load_corpus(corpus) if corpus is not None else None
    refuse_collapsed(model, accept_collapsed)
    ranks = join(shard)
    try:
        resolved = torch.device(device) if device else ranks.device
        # a bad model fails before any output
        encoder = SpladeEncoder.load(model, device=str(resolved), body_precision=body_precision)
        terms = vocabulary_terms(encoder.tokenizer, encoder.model.vocab_size)
        # model_files: what search compares between an index's documents and the queries searched in it
        settings = {"model": model, "model_files": _model_fingerprint(model), "scale": scale,
                    "max_query_length": max_query_length, "batch_size": batch_size, "body_precision": body_precision}
        if ranks.rank == 0:
            for query_file_set, _ in query_files:
                query_file_set.check()  # before hours of documents
        stats = {}
        if documents is not None:
            stats = _encode_documents(out, documents, query_set, ranks, encoder, terms, settings, shard=shard,
                                      fresh=fresh, fresh_if_changed=fresh_if_changed, device=resolved.type, max_doc_length=max_doc_length,
                                      part_size=part_size)
        if stats is None or ranks.rank != 0:
            return None
        if query_files:
            stats["query_files"] = {query_file_set.name: _encode_query_file(query_file_set, path, encoder, terms, settings)
                                    for query_file_set, path in query_files}
        return stats
    finally:
        ranks.close()


def _encode_documents(out: Path, documents: data.Corpus, query_set: data.Dataset | None, ranks, encoder, terms,
                      settings: dict, *, shard, fresh, fresh_if_changed, device, max_doc_length, part_size) -> dict | None:
    """The documents' parts (and `query_set`'s queries.jsonl beside them); their stats on the rank that
    finishes, else None."""
    scale, batch_size = settings["scale"], settings["batch_size"]
    plan = Plan(documents.docs_count(), part_size)
    store = PartStore(out, {
        "corpus": documents.name, "corpus_source": _corpus_fingerprint(documents), "model": settings["model"],
        "model_files": settings["model_files"], "device": device, "scale": float(scale),
        "max_doc_length": max_doc_length, "batch_size": batch_size, "part_size": part_size,
        # recorded when not the default, so that outputs made before the option stay valid
        **({"body_precision": settings["body_precision"]} if settings["body_precision"] != "fp32" else {}),
    }, products=("stats.json", "queries.jsonl"))
    if not fresh and store.finished() and (out / "stats.json").is_file():
        log.info("%s: its documents are encoded already (manifest.json, stats.json)", out)
        stats = json.loads((out / "stats.json").read_text())
        if query_set is None or ranks.rank != 0:
            return stats
        query_set.check()  # its queries are encoded again (seconds): their settings or texts may have changed
        _encode_query_set(out, stats, query_set, encoder, terms, settings)
        write_json(out / "stats.json", stats)
        return stats
    if ranks.rank == 0:
        documents.check()  # a bad line anywhere fails now, not after hours of encoding
        if query_set is not None:
            query_set.check()
        store.open(fresh=fresh, fresh_if_changed=INPUTS if fresh_if_changed else ())
    ranks.barrier()
    if ranks.rank != 0:
        store.open()
    try:
        _encode_parts(store, plan, ranks, documents, encoder, terms, scale=scale, max_doc_length=max_doc_length,
                      batch_size=batch_size)
    except BaseException as error:
        kept = store.discard_if_empty()
        if isinstance(error, KeyboardInterrupt) and kept:
            log.warning("interrupted: the complete parts stay in %s; the same command continues from them", out)
        if isinstance(error, OSError) and error.errno in STORAGE_ERRORS:
            raise OutputError(f"cannot write {out}: {error.strerror} "
                              f"({'complete parts kept: rerun to continue' if kept else 'nothing was left there'})") from None
        raise
    ranks.barrier()
    if ranks.rank != 0 or (shard is not None and ranks.world > 1):
        if shard is not None:
            log.info("shard %s done; run again without --shard to verify all parts and finish", shard)
        return None
    return _finish(store, plan, documents, query_set, encoder, terms, settings, max_doc_length=max_doc_length)


def _encode_parts(store: PartStore, plan: Plan, ranks, corpus: data.Corpus, encoder, terms, *, scale,
                  max_doc_length, batch_size) -> None:
    """This rank's parts that are not complete yet."""
    todo = [part for part in plan.of_rank(ranks.rank, ranks.world) if not store.complete(part)]
    if todo:
        log.info("rank %d/%d: %d parts of %d documents to encode", ranks.rank, ranks.world, len(todo), plan.part_size)
    for part in todo:
        span = plan.span(part)
        with store.writer(part, span) as writer:
            counts = encode_texts(
                encoder, corpus.docs(*span), terms, max_length=max_doc_length, scale=scale, batch_size=batch_size,
                write=lambda doc, vector: writer.add(
                    {"id": doc.id, "contents": doc.text, "vector": vector or {EMPTY_VECTOR_TERM: 1}}),
                what="docs", label=f", part {part + 1}/{plan.parts}", total=span[1] - span[0],
            )
            writer.extra = {"counts": asdict(counts)}


def _encode_queries(dataset: data.Dataset, path: Path, encoder, terms, settings: dict) -> dict:
    """`dataset`'s queries into the JSON-lines file `path`; their stats."""
    queries_in = [data.Document(qid, text) for qid, text in dataset.queries().items()]
    with open(path, "wb") as stream:
        counts = encode_texts(
            encoder, queries_in, terms, max_length=settings["max_query_length"], scale=settings["scale"],
            batch_size=settings["batch_size"], write=lambda q, v: stream.write(json_line({"id": q.id, "contents": q.text, "vector": v})),
            what="queries", total=len(queries_in),
        )
    _warn("queries", counts, settings["max_query_length"])
    return {"queries": asdict(counts), "mean_terms_per_query": counts.terms / counts.texts if counts.texts else 0.0}


def _encode_query_file(dataset: data.Dataset, out: Path, encoder, terms, settings: dict) -> dict:
    """`dataset`'s queries alone into the file `out`, their stats (naming the dataset and its corpus,
    which search checks) beside it in `out`.json, written first: `out` appears complete or not at all."""
    with atomic_path(out) as staging:
        stats = {"dataset": dataset.name, "corpus": dataset.corpus.name, **settings,
                 **_encode_queries(dataset, staging, encoder, terms, settings)}
        write_json(out.with_name(out.name + ".json"), stats)
    return stats


def _finish(store: PartStore, plan: Plan, corpus: data.Corpus, dataset: data.Dataset | None, encoder, terms,
            settings: dict, *, max_doc_length: int) -> dict:
    """Verify the parts, encode the dataset's queries (if any), write the manifest and then stats.json."""
    records = store.verify(plan)
    docs = Counts()
    for record in records:
        for name, value in record["counts"].items():
            setattr(docs, name, getattr(docs, name) + value)
    stats = {
        "corpus": corpus.name, "model": settings["model"], "model_files": settings["model_files"], "scale": settings["scale"],
        "empty_vector_term": EMPTY_VECTOR_TERM,
        "max_doc_length": max_doc_length, "body_precision": settings["body_precision"], "parts": len(records),
        "docs": asdict(docs),
        "docs_per_second": docs.texts / docs.seconds if docs.seconds else None,
        "mean_terms_per_doc": docs.terms / docs.texts if docs.texts else 0.0,
    }
    if dataset is not None:
        _encode_query_set(store.folder, stats, dataset, encoder, terms, settings)
    store.finish(records, {"documents": plan.count})
    write_json(store.folder / "stats.json", stats)
    _warn("documents", docs, max_doc_length)
    return stats


def _encode_query_set(folder: Path, stats: dict, dataset: data.Dataset, encoder, terms, settings: dict) -> None:
    """`dataset`'s queries into queries.jsonl beside its corpus's documents, their stats into `stats`."""
    with atomic_path(folder / "queries.jsonl") as staging:
        stats.update(dataset=dataset.name, max_query_length=settings["max_query_length"],
                     **_encode_queries(dataset, staging, encoder, terms, settings))


def _warn(what: str, counts: Counts, limit: int) -> None:
    if counts.truncated:
        log.warning("%d of %d %s were longer than %d tokens and truncated", counts.truncated, counts.texts, what, limit)
    if counts.empty:
        log.warning("%d of %d %s have an empty vector%s", counts.empty, counts.texts, what,
                    f" (indexed with the reserved term {EMPTY_VECTOR_TERM})" if what == "documents" else " (they retrieve nothing)")
