"""The JVM's class-data archive: built from the stages' own Java paths, mapped by the JVMs the stages
start, and never matched with a changed jar."""

import os
import shutil
import subprocess
import sys

from pipeline import lucene
from pipeline.jvm_archive import build_jvm_archive

from conftest import ROOT


def test_the_archive_holds_the_classes_of_lucene_anserini_and_jackson(tmp_path):
    archive = tmp_path / "classes.jsa"
    stats = build_jvm_archive(archive)
    assert stats["classes"] > 3000 and archive.stat().st_size > 10 * 2**20
    listing = subprocess.run(
        [str(lucene.find_java_home() / "bin" / "java"), f"-XX:SharedArchiveFile={archive}", "-XX:+PrintSharedArchiveAndExit",
         "-cp", str(lucene.anserini_jar())], capture_output=True, text=True).stdout
    assert "archive is valid" in listing
    for name in ("org.apache.lucene.search.IndexSearcher", "io.anserini.search.SearchCollection",
                 "io.anserini.index.IndexCollection", "io.anserini.search.query.BagOfWordsQueryGenerator",
                 "com.fasterxml.jackson.databind.ObjectMapper"):
        assert f" {name} " in listing, name


def test_a_stage_jvm_maps_the_archive_that_setup_built():
    assert lucene.class_archive(lucene.find_java_home(), lucene.anserini_jar()).is_file(), "make setup builds it"
    script = "from pipeline import lucene; print(lucene.start_jvm()('java.lang.System').getProperty('java.vm.info'))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert "sharing" in result.stdout, result.stdout + result.stderr[-2000:]


def test_anserini_run_by_java_alone_maps_the_archive_too(tmp_path):
    """search-bench's peer: Anserini's SearchCollection by `java` alone starts as our stages' JVMs do."""
    command = lucene.search_collection_command(tmp_path / "index", tmp_path / "topics.tsv", tmp_path / "run.trec", k=10,
                                               threads=1, remove_query=False, tag="t")
    java = command[: command.index("io.anserini.search.SearchCollection")]
    result = subprocess.run([*java, "-Xshare:on", "-version"], capture_output=True, text=True)  # fails where it cannot map it
    assert result.returncode == 0 and "sharing" in result.stderr, result.stderr[-2000:]


def test_a_changed_jar_is_never_matched_with_the_old_archive(tmp_path):
    java_home = lucene.find_java_home()
    jar = tmp_path / "anserini.jar"
    shutil.copyfile(lucene.anserini_jar(), jar)
    before = lucene.class_archive(java_home, jar)
    os.utime(jar, ns=(jar.stat().st_atime_ns, jar.stat().st_mtime_ns + 10**9))
    assert lucene.class_archive(java_home, jar) != before
    assert before != lucene.class_archive(java_home, lucene.anserini_jar())
