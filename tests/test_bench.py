"""`make bench` on a tiny input: every encoder runs in its own process, ours equals the reference, the
roofline and the flat-memory runs are measured, and the report says so."""

import json

from pipeline.bench import bench, replicated_folder
from pipeline.peer_encoders import compare
from pipeline.files import count_lines
from pipeline.splade import screen_kernels

from conftest import DOCS


def test_compare_counts_differing_missing_and_extra_entries():
    ours = [{1: 0.5, 2: 1.004}, {7: 0.3}]
    reference = [{1: 0.5, 2: 1.006, 3: 0.2}, {8: 0.004}]
    assert compare(ours, reference) == {"reference_nonzero_entries": 3, "differing_quantized_entries": 3,
                                        "max_float_difference": 0.3}


def test_replicated_folder_suffixes_ids(beir_folder, tmp_path):
    folder = replicated_folder(str(beir_folder), 3, tmp_path / "x3")
    assert count_lines([folder / "corpus.jsonl"]) == 3 * len(DOCS)
    ids = [json.loads(line)["_id"] for line in open(folder / "corpus.jsonl")]
    assert len(set(ids)) == len(ids) and "d01-r2" in ids


def test_bench_on_a_tiny_input(model_path, beir_folder, tmp_path):
    results = bench(model_path, str(beir_folder), tmp_path / "bench.json", tmp_path / "bench.md", docs=8, replicas=2)
    assert set(results["encoders"]) == {"ours", "sentence-transformers", "pyserini", "reference"}
    for run in results["encoders"].values():
        assert run["docs"] == 8 and run["docs_per_second"] > 0 and run["peak_rss_mb"] > 100
    assert results["exactness"]["differing_quantized_entries"] == 0
    assert results["exactness"]["reference_nonzero_entries"] > 8 * 20
    assert results["exactness"]["max_float_difference"] < 1e-5
    assert all(rate > 0 for rates in results["roofline"]["gflops"].values() for rate in rates.values())
    assert results["projection"]["projection_fraction_of_best_gemm"] > 0 and results["projection"]["screen_fraction_of_best_gemm"] > 0
    assert results["projection"]["screen_kernel"] == screen_kernels.fused_screen()  # "amx", "avx512_vnni" or None
    one, replicated = results["encode_stage"]
    assert (one["docs"], replicated["docs"]) == (len(DOCS), 2 * len(DOCS))
    assert json.loads((tmp_path / "bench.json").read_text())["speedup"].keys() == {"sentence-transformers", "pyserini", "reference"}
    assert "| ours |" in (tmp_path / "bench.md").read_text()
