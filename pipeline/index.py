"""Stage `index`: Lucene indexes through Anserini (Pyserini's jar).

- impact: the `docs/` folder of `encode` (JsonVectorCollection), as Anserini's `-impact -pretokenized`
  index, written with impacts as term frequencies (`pipeline.impact_index`);
- BM25: a corpus's text ({"id", "contents"} JsonCollection), indexed by Anserini's IndexCollection as
  Pyserini's BEIR "flat" indexes. Lucene cannot index a blank text and BM25 could never retrieve it:
  blank documents are left out, counted and reported (as in Pyserini's indexes, so that BM25's
  document count and IDF match theirs). IndexCollection indexes each file on one thread: a collection
  of fewer files than threads is split at line boundaries into a temporary folder beside the index
  (a copy of the collection) so that every thread has a part to index.

The stats file beside the index (`<index>.json`) is written last and names the corpus (which search
checks); the stage fails if Lucene holds a different number of documents than the collection
(Anserini skips some documents silently).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

from pipeline import data, lucene, parts
from pipeline.errors import PipelineError
from pipeline.files import ShardWriter, atomic_path, count_newlines, scratch_folder, write_json
from pipeline.impact_index import write_impact_index
from pipeline.progress import Progress


log = logging.getLogger(__name__)


class IndexCountError(PipelineError, RuntimeError):
    pass


# What Java's String.trim() takes off: Anserini skips a document whose text it leaves empty.
JAVA_TRIMMED = "".join(map(chr, range(0x21)))


def _write_text_collection(corpus: data.Corpus, folder: Path) -> tuple[int, int]:
    """Write the {"id", "contents"} collection; return (written, blank documents left out): whitespace, and control
    characters alone (which Anserini would skip, and the index's count with it)."""
    shards, blank = ShardWriter(folder, shard_size=500_000), 0
    try:
        for doc in Progress(corpus.docs(), total=corpus.docs_count(), desc="collection", unit="docs"):
            if doc.text.strip() and doc.text.strip(JAVA_TRIMMED):
                shards.write({"id": doc.id, "contents": doc.text})
            else:
                blank += 1
    finally:
        shards.close()
    return shards.written, blank


def _split_lines(part: Path, pieces: int, folder: Path) -> None:
    """`part` cut into `pieces` files of consecutive whole lines, as many lines in each (the last one less)."""
    per_piece = max(1, math.ceil(count_newlines(part) / pieces))
    with open(part, "rb") as lines:
        for piece in itertools.count():
            target = folder / f"{part.stem}-{piece:03d}.jsonl"
            with open(target, "wb") as out:
                out.writelines(itertools.islice(lines, per_piece))
            if target.stat().st_size == 0:
                target.unlink()
                return


def split_for_threads(collection: Path, threads: int, folder: Path) -> Path:
    """`collection` itself when it has at least `threads` parts, else `folder` filled with its parts cut
    into at least `threads` pieces (each part into a number in proportion to its size)."""
    parts = sorted(collection.glob("*.jsonl"))
    if len(parts) >= threads:
        return collection
    total = sum(part.stat().st_size for part in parts) or 1
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        _split_lines(part, max(1, math.ceil(threads * part.stat().st_size / total)), folder)
    return folder


def index(out: Path, *, vectors: Path | None = None, corpus: str | None = None, threads: int = 2) -> dict:
    """Build the impact index of `vectors`, or else the BM25 index of `corpus` (`data.load_corpus`), at `out`."""
    if (vectors is None) == (corpus is None):
        raise ValueError("index takes either vectors (an impact index) or corpus (a BM25 index)")
    if vectors is not None and (why := parts.unfinished(vectors)):  # its complete parts alone would pass for the corpus
        raise parts.PartsError(why)
    started, blank = time.perf_counter(), 0
    with atomic_path(out, directory=True) as staging, scratch_folder(out) as work:
        indexing = time.perf_counter()
        if vectors is not None:
            impact, source, corpus_name = True, str(vectors), data.recorded(vectors, "corpus")
            expected, processes = write_impact_index(vectors, staging, threads=threads)
            # the model that encoded the documents, which search compares with the queries'
            spread = {"processes": processes, **{key: data.recorded(vectors, key) for key in ("model", "model_files")}}
        else:
            written, documents = Path(work) / "text", data.load_corpus(corpus)
            expected, blank = _write_text_collection(documents, written)
            impact, source, corpus_name = False, corpus, documents.name
            collection = split_for_threads(written, threads, Path(work) / "parts")
            spread = {"parts": len(list(collection.glob("*.jsonl")))}
            indexing = time.perf_counter()
            lucene.build_index(collection, staging, "JsonCollection", impact=False, threads=threads)
        indexing = time.perf_counter() - indexing
        indexed = lucene.count_documents(staging)
        if indexed != expected:
            raise IndexCountError(f"{source}: {expected} documents in the collection but {indexed} in the index")
    stats = {"index": str(out), "source": source, "corpus": corpus_name, "kind": "impact" if impact else "bm25",
             "documents": indexed, "blank_documents_left_out": blank, "threads": threads, **spread,
             "indexing_seconds": indexing, "seconds": time.perf_counter() - started}
    if blank:
        log.warning("%s: %d blank documents left out of the BM25 index", source, blank)
    write_json(out.with_name(out.name + ".json"), stats)
    return stats
