"""Stage `index`: Lucene indexes through Anserini (Pyserini's jar).

- impact: the `docs/` folder of `encode` (JsonVectorCollection), indexed `-impact -pretokenized`;
- BM25: the dataset's text ({"id", "contents"} JsonCollection), indexed as Pyserini's BEIR "flat" indexes.
  Lucene cannot index a blank text and BM25 could never retrieve it: blank documents are left out,
  counted and reported (as in Pyserini's indexes, so that BM25's document count and IDF match theirs).

The stats file beside the index (`<index>.json`) is written last; the stage fails if Lucene holds
a different number of documents than the collection (Anserini skips some documents silently).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from pipeline import data, lucene
from pipeline.errors import PipelineError
from pipeline.files import ShardWriter, atomic_path, write_json


log = logging.getLogger(__name__)


class IndexCountError(PipelineError, RuntimeError):
    pass


def _write_text_collection(dataset: data.Dataset, folder: Path) -> tuple[int, int]:
    """Write the {"id", "contents"} collection; return (written, blank documents left out)."""
    shards, blank = ShardWriter(folder, shard_size=500_000), 0
    try:
        for doc in tqdm(dataset.docs(), total=dataset.docs_count(), desc="collection", unit="docs"):
            if doc.text.strip():
                shards.write({"id": doc.id, "contents": doc.text})
            else:
                blank += 1
    finally:
        shards.close()
    return shards.written, blank


def index(out: Path, *, vectors: Path | None = None, dataset: str | None = None, threads: int = 2) -> dict:
    """Build the impact index of `vectors`, or else the BM25 index of `dataset`, at `out`."""
    if (vectors is None) == (dataset is None):
        raise ValueError("index takes either vectors (an impact index) or dataset (a BM25 index)")
    started, blank = time.perf_counter(), 0
    with atomic_path(out, directory=True) as staging:
        if vectors is not None:
            expected = data.check_vectors(vectors)  # Anserini would skip a bad record silently
            lucene.build_index(vectors, staging, "JsonVectorCollection", impact=True, threads=threads)
            source = str(vectors)
        else:
            with tempfile.TemporaryDirectory(dir=out.parent) as collection:
                expected, blank = _write_text_collection(data.load(dataset), Path(collection))
                lucene.build_index(Path(collection), staging, "JsonCollection", impact=False, threads=threads)
            source = dataset
        indexed = lucene.count_documents(staging)
        if indexed != expected:
            raise IndexCountError(f"{source}: {expected} documents in the collection but {indexed} in the index")
    stats = {"index": str(out), "source": source, "kind": "bm25" if dataset else "impact",
             "documents": indexed, "blank_documents_left_out": blank, "seconds": time.perf_counter() - started}
    if blank:
        log.warning("%s: %d blank documents left out of the BM25 index", source, blank)
    write_json(out.with_name(out.name + ".json"), stats)
    return stats
