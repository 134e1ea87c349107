"""`make bench` on a tiny input: every encoder runs in its own process, ours equals the reference, the
roofline and the flat-memory runs are measured, and the report says so."""

import json

from pipeline.bench import bench, median_run, projection_rate, replicated_folder
from pipeline.peer_encoders import compare
from pipeline.files import count_lines
from pipeline.splade import screen_kernels

from conftest import DOCS


def test_compare_counts_differing_missing_and_extra_entries():
    ours = [{1: 0.5, 2: 1.004}, {7: 0.3}]
    reference = [{1: 0.5, 2: 1.006, 3: 0.2}, {8: 0.004}]
    assert compare(ours, reference) == {"reference_nonzero_entries": 3, "differing_quantized_entries": 3,
                                        "max_float_difference": 0.3}


def test_an_encoders_runs_count_as_their_median_time_and_largest_memory():
    runs = [{"docs": 10, "seconds": seconds, "docs_per_second": 10 / seconds, "peak_rss_mb": peak}
            for seconds, peak in ((1.0, 500), (4.0, 700), (2.0, 600))]
    assert median_run(runs) == {"docs": 10, "seconds": 2.0, "docs_per_second": 5.0, "peak_rss_mb": 700,
                                "rounds_docs_per_second": [10.0, 2.5, 5.0]}


def test_the_body_flops_are_its_layers_products_and_attention_over_every_batch(model_path, encoder):
    texts = [" ".join(parts) for parts in DOCS.values()]
    counted = projection_rate(model_path, texts, max_length=48, batch_size=3)["body_flops"]
    config = encoder.model.mlm.config
    hidden, layers = config.hidden_size, config.num_hidden_layers
    expected = 0
    for first in range(0, len(texts), 3):  # the batches' padded lengths do not depend on their order
        batch, _ = encoder.tokenize(sorted(texts, key=len, reverse=True)[first : first + 3], 48)
        documents, length = batch["input_ids"].shape
        per_token = 2 * (layers * (4 * hidden**2 + 2 * hidden * config.intermediate_size) + hidden**2) + layers * 4 * length * hidden
        expected += documents * length * per_token
    assert counted == expected


def test_replicated_folder_suffixes_ids(beir_folder, tmp_path):
    folder = replicated_folder(str(beir_folder), 3, tmp_path / "x3")
    assert count_lines([folder / "corpus.jsonl"]) == 3 * len(DOCS)
    ids = [json.loads(line)["_id"] for line in open(folder / "corpus.jsonl")]
    assert len(set(ids)) == len(ids) and "d01-r2" in ids


def test_bench_on_a_tiny_input(model_path, beir_folder, tmp_path):
    results = bench(model_path, str(beir_folder), tmp_path / "bench.json", tmp_path / "bench.md", docs=8, replicas=2,
                    rounds=2)
    assert set(results["encoders"]) == {"ours", "sentence-transformers", "pyserini", "reference"}
    for run in results["encoders"].values():
        assert run["docs"] == 8 and run["docs_per_second"] > 0 and run["peak_rss_mb"] > 100
        assert len(run["rounds_docs_per_second"]) == 2
    assert results["exactness"]["differing_quantized_entries"] == 0
    assert results["exactness"]["reference_nonzero_entries"] > 8 * 20
    assert results["exactness"]["max_float_difference"] < 1e-5
    assert all(rate > 0 for rates in results["roofline"]["gflops"].values() for rate in rates.values())
    assert results["projection"]["projection_fraction_of_best_gemm"] > 0 and results["projection"]["screen_fraction_of_best_gemm"] > 0
    assert results["projection"]["screen_kernel"] == screen_kernels.fused_screen()  # "amx", "avx512_vnni" or None
    # SPLADE-tiny's two layers cost ~1.1 MFLOP per token (attention counted), its projection 7.8
    assert 0 < results["projection"]["body_flops"] < results["projection"]["projection_flops"]
    limit = results["exact_limit"]
    assert limit["ours_fraction"] == results["encoders"]["ours"]["docs_per_second"] / limit["docs_per_second"] > 0
    one, replicated = results["encode_stage"]
    assert (one["docs"], replicated["docs"]) == (len(DOCS), 2 * len(DOCS))
    assert json.loads((tmp_path / "bench.json").read_text())["speedup"].keys() == {"sentence-transformers", "pyserini", "reference"}
    report = (tmp_path / "bench.md").read_text()
    assert "| ours |" in report and "Exact limit of this machine" in report
