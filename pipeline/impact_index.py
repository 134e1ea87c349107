"""A Lucene impact index of JsonVectorCollection files, written with each term's impact as its term
frequency (`lucene.ImpactIndexWriter`) instead of the term repeated that many times, as Anserini's
IndexCollection does: the same index for search (the same runs), and one token per posting, not
~70 (SciFact's SPLADE vectors).

Python feeds Lucene one document at a time and holds a core doing it, so a large collection is shared
out to up to `threads` processes by record ranges (whatever its number of files), each writing an
index of its own; those are then added to the output whole (segments copied, not re-inverted).
Every record is checked as it is read (`data.checked_vectors`).

The index ends as one segment sorted by id, so that Lucene's own tie-break (lower docid first) is
Anserini's (lower id first), and `impact_search` can search it with Lucene's pruning.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipeline import data, lucene
from pipeline.files import count_newlines, scratch_folder
from pipeline.progress import Progress

# A process costs about a second to start (Python, the JVM): below this many documents each, fewer.
DOCS_PER_PROCESS = 20_000
# The index's ids, one per line in docid order (`impact_search` reads hits' ids from it).
DOCIDS = "docids.txt"


def _write(files: list[Path], folder: Path, start: int, stop: int, process: int = 0, processes: int = 1) -> int:
    """Records `start` to `stop` of `files` into a new index at `folder` (the last process to the end,
    whatever `stop`); their count. Each process shows its progress on a line of its own. A process
    alone writes the whole index, merged into one segment."""
    count, label = 0, f"impact index {process + 1}/{processes}" if processes > 1 else "impact index"
    last = process == processes - 1
    with lucene.ImpactIndexWriter(folder) as writer, Progress(desc=label, unit="docs", total=stop - start,
                                                          position=process) as bar:
        for _, doc_id, vector in data.checked_vectors(files, start, None if last else stop):
            writer.add(doc_id, vector)
            count += 1
            bar.update()
        if processes == 1:
            writer.merge_segments()
    return count


def write_impact_index(vectors: Path, out: Path, *, threads: int, docs_per_process: int = DOCS_PER_PROCESS) -> tuple[int, int]:
    """The index of the `*.jsonl` files of the folder (or the file) `vectors`, at `out`, in one segment
    sorted by id, with its docid table (`DOCIDS`); returns (documents, processes that wrote it)."""
    files = sorted(vectors.glob("*.jsonl")) if vectors.is_dir() else [vectors]
    if not files:
        raise data.DataError(f"{vectors}: no *.jsonl files")
    # Ranges by line breaks, not decoded records (a pass over the bytes alone): a blank line or a last
    # line without a break makes a range a record longer or shorter, and the last range reads to the end.
    total = sum(count_newlines(file) for file in files)
    processes = max(1, min(threads, total // docs_per_process))
    if processes == 1:
        count = _write(files, out, 0, total)
    else:
        bounds = [total * process // processes for process in range(processes + 1)]
        with scratch_folder(out) as work, ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn")) as pool:  # a JVM does not survive fork
            folders = [Path(work) / f"range-{process}" for process in range(processes)]
            count = sum(pool.map(_write, [files] * processes, folders, bounds[:-1], bounds[1:], range(processes),
                                 [processes] * processes))
            with lucene.ImpactIndexWriter(out) as writer:
                writer.add_indexes(folders)
                writer.merge_segments()
    if (ids := lucene.write_docids(out, out / DOCIDS)) != count:
        raise data.DataError(f"{vectors}: {count} documents but {ids} distinct ids (a TREC run could not tell them apart)")
    return count, processes
