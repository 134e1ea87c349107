"""search-bench end to end on a tiny replicated corpus: our CLI, Pyserini's CLI and Anserini's Java
alone (real processes, real Lucene) rank the same hits, and every figure is there."""

import json

from pipeline.report import report
from pipeline.search_bench import search_bench

from test_search import QUERY_VECTORS, VECTORS


def test_search_bench_compares_ours_with_pyserini_and_anserini_alone(beir_folder, tmp_path):
    encoded = tmp_path / "encoded"
    (encoded / "docs").mkdir(parents=True)
    (encoded / "docs" / "part-00000.jsonl").write_text(
        "".join(json.dumps({"id": docid, "contents": "", "vector": vector}) + "\n" for docid, vector in VECTORS.items()))
    (encoded / "queries.jsonl").write_text(
        "".join(json.dumps({"id": qid, "vector": vector}) + "\n" for qid, vector in QUERY_VECTORS.items()))
    out = tmp_path / "search-bench.json"
    results = search_bench(encoded, encoded / "queries.jsonl", str(beir_folder), tmp_path / "work", out, copies=2, k=5,
                           threads=1, repeats=2)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["documents"] == 2 * len(VECTORS) and results["queries"] == len(QUERY_VECTORS)
    assert results["identical_rankings_pyserini_cli"] and results["identical_rankings_anserini_java"]
    for contender in ("ours_cli", "pyserini_cli", "anserini_java"):
        assert results[contender]["seconds"] > 0 and results[contender]["one_query_seconds"] > 0
        assert results[contender]["queries_per_second"] > 0
        each = results[contender]["seconds_each_run"]
        assert len(each) == 2 and results[contender]["seconds"] == sum(each) / 2  # the median of two
    assert len(results["indexing_seconds"]) == 3 and all(seconds > 0 for seconds in results["indexing_seconds"].values())
    assert results["speedup_queries_per_second"] > 0 and results["fraction_of_anserini_java_queries_per_second"] > 0
    hits = (tmp_path / "work" / "ours_cli.trec").read_text().split()
    assert "d7#0" in hits and "d7#1" in hits  # both copies of the best document for q2
    # make report renders this output (runs/search-bench.json) as written
    text = report(tmp_path, tmp_path / "no-models", tmp_path / "report.md")
    assert f"ours {results['speedup_queries_per_second']:.1f}x Pyserini's CLI end to end" in text
    assert "rankings identical to Pyserini's and Anserini's: True." in text and "median of 2 runs each" in text
    assert all(f"| {name} | {results[name]['seconds']:.2f} |" in text for name in ("ours_cli", "pyserini_cli", "anserini_java"))
