"""ranx, as the eval stage calls it, against the official trec_eval on the official MS MARCO qrels."""

import random
import subprocess

import pytest

from pipeline.data import read_trec_qrels, seed_cache, trec_qrels_file
from pipeline.beir_eval import beir_eval
from pipeline.eval import evaluate, ranx_metrics

from conftest import write_beir_folder, write_trec


def synthetic_run(qrels, seed=0, depth=1000, drop=(), tied=False):
    """Judged documents at random ranks among random unjudged ones, as a retrieval system gives;
    `tied` scores are small integers, as impact scores often tie."""
    rng = random.Random(seed)
    hits = {}
    for qid, judged in qrels.items():
        if qid in drop:
            continue
        docs = [d for d in judged if rng.random() < 0.7] + [f"unjudged-{i}" for i in range(depth)]
        hits[qid] = [(docid, float(rng.randrange(20)) if tied else rng.random() * 10) for docid in docs[:depth]]
    return hits


def trec_eval_value(binary, args, qrels_path, run_path, measure):
    out = subprocess.run([str(binary), *args, str(qrels_path), str(run_path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: float(line.split()[2]) for line in out.splitlines() if line.split()[1] == "all"}[measure]


@pytest.mark.parametrize(("qrels_name", "dataset", "depth", "tied"),
                         [("dl19-passage", "dl19", 1000, False), ("dl19-passage", "dl19", 1000, True),
                          ("msmarco-passage-dev-subset", "msmarco-dev", 150, True)])
def test_metrics_match_trec_eval(qrels_name, dataset, depth, tied, trec_eval, tmp_path):
    qrels_path = trec_qrels_file(qrels_name)  # Pyserini's download cache, seeded from ../shared/qrels when present
    qrels = read_trec_qrels(qrels_path)
    run_path = tmp_path / "run.trec"
    write_trec(synthetic_run(qrels, depth=depth, tied=tied), run_path, "synthetic")
    ours = evaluate(dataset, {"run": run_path}, qrels_file=qrels_path)["metrics"]["run"]
    level = ["-l", "2"] if dataset == "dl19" else []
    assert ours["ndcg@10"] == pytest.approx(trec_eval_value(trec_eval, ["-c", "-m", "ndcg_cut.10"], qrels_path, run_path, "ndcg_cut_10"), abs=1e-4)
    assert ours["recall@100"] == pytest.approx(trec_eval_value(trec_eval, ["-c", *level, "-m", "recall.100"], qrels_path, run_path, "recall_100"), abs=1e-4)
    assert ours["recall@1000"] == pytest.approx(trec_eval_value(trec_eval, ["-c", *level, "-m", "recall.1000"], qrels_path, run_path, "recall_1000"), abs=1e-4)
    assert ours["mrr@10"] == pytest.approx(trec_eval_value(trec_eval, ["-c", *level, "-M", "10", "-m", "recip_rank"], qrels_path, run_path, "recip_rank"), abs=1e-4)
    if dataset == "dl19":
        assert ours["map"] == pytest.approx(trec_eval_value(trec_eval, ["-c", "-l", "2", "-m", "map"], qrels_path, run_path, "map"), abs=1e-4)


def test_relevance_level_applies_to_every_metric_but_ndcg():
    assert ranx_metrics(2) == {"ndcg@10": "ndcg@10", "recall@100": "recall@100-l2", "recall@1000": "recall@1000-l2",
                               "mrr@10": "mrr@10-l2", "map": "map-l2"}


def test_trec_dl_tables_show_map_beside_the_published_figures_and_beir_tables_do_not(tmp_path):
    qrels_path = trec_qrels_file("dl19-passage")
    write_trec(synthetic_run(read_trec_qrels(qrels_path)), tmp_path / "run.trec", "synthetic")
    evaluate("msmarco-passage/trec-dl-2019", {"run": tmp_path / "run.trec"}, qrels_file=qrels_path, out=tmp_path / "dl19.json")
    folder = write_beir_folder(tmp_path / "beir", qrels={"q1": {"d01": 1}})
    write_trec({"q1": [("d01", 1.0)]}, tmp_path / "beir.trec", "beir")
    evaluate(str(folder), {"run": tmp_path / "beir.trec"}, out=tmp_path / "beir.json")
    rows = beir_eval([tmp_path / "dl19.json", tmp_path / "beir.json"], tmp_path / "all.json", tmp_path / "all.md")
    dl19 = [row for row in rows if row["dataset"] == "msmarco-passage/trec-dl-2019"]
    # the unjudged id takes the judged queries' published rows (the same scores under trec_eval -c)
    assert {row["system"]: row["map"] for row in dl19 if row["source"] != "measured"}["BM25 (k1=0.9, b=0.4)"] == 0.3013
    assert 0 < dl19[0]["map"] < 1 and all("map" not in row for row in rows if row["dataset"] == str(folder))
    markdown = (tmp_path / "all.md").read_text().split("\n## ")
    assert "| system | nDCG@10 | R@100 | R@1000 | MRR@10 | MAP | source |" in markdown[1]
    assert "| system | nDCG@10 | R@100 | R@1000 | MRR@10 | source |" in markdown[2]


def test_run_and_qrels_with_different_queries(tmp_path, trec_eval):
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    folder = write_beir_folder(tmp_path / "beir", docs={d: ("", d) for d in ("d1", "d2", "d3")},
                               queries={q: q for q in qrels}, qrels=qrels)
    run_path = tmp_path / "run.trec"
    # q3 is judged but missing from the run; q9 is in the run but not judged.
    write_trec({"q1": [("d1", 2.0)], "q2": [("d9", 3.0), ("d2", 1.0)], "q9": [("d1", 1.0)]}, run_path, "partial")
    result = evaluate(str(folder), {"partial": run_path})
    assert result["queries"] == 3
    assert result["metrics"]["partial"]["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert any("1 judged queries have no results and score 0" in note and "q3" in note for note in result["notes"])
    assert any("1 queries have no judgments and are ignored" in note and "q9" in note for note in result["notes"])
    trec_qrels = tmp_path / "qrels.txt"
    trec_qrels.write_text("".join(f"{q} 0 {d} 1\n" for q, docs in qrels.items() for d in docs))
    assert result["metrics"]["partial"]["mrr@10"] == pytest.approx(
        trec_eval_value(trec_eval, ["-c", "-m", "recip_rank"], trec_qrels, run_path, "recip_rank"))


def test_seed_copies_are_atomic_and_replace_truncated_files(tmp_path):
    seed, cache = tmp_path / "seed", tmp_path / "cache"
    (seed / "beir").mkdir(parents=True)
    (seed / "beir" / "source.zip").write_bytes(b"x" * 1000)
    (cache / "beir").mkdir(parents=True)
    (cache / "beir" / "source.zip").write_bytes(b"x" * 10)  # an interrupted copy of an earlier version
    (cache / "beir" / "docs.pklz4").write_bytes(b"written by ir_datasets")
    seed_cache(seed, cache)
    assert (cache / "beir" / "source.zip").read_bytes() == b"x" * 1000
    assert sorted(p.name for p in (cache / "beir").iterdir()) == ["docs.pklz4", "source.zip"]  # no temporary left
