"""The k-sweep stage end to end on the tiny collection: F in {1, 4}, k in {4} with k = F and auto, one
seed, two steps; its cells, shared trainings, auto's k, statistics, tables and plots."""

import json

import pytest

from pipeline.k_sweep import best_k, grid, k_sweep, summarize

PNG = b"\x89PNG\r\n\x1a\n"


def test_k_sweep_trains_evaluates_and_reports_the_grid(model_path, triples, beir_folder, tmp_path):
    out = tmp_path / "k-sweep"
    # Training triples need no BM25 index: the negatives index is never opened.
    result = k_sweep(model_path, str(triples), tmp_path / "no-index", str(beir_folder), out, factors=[1, 4], ks=[4],
                     seeds=1, steps=2, batch_size=4, eval_docs=None)
    names = [cell.name for cell in grid([1, 4], [4])]
    assert names == ["F1-shift0-k1", "F1-shift0-k4", "F1-shift0-kauto", "F4-shift0-k4", "F4-shift0-kauto"]
    summary = {row["cell"]: row for row in result["summary"]}
    assert list(summary) == names and all(row["seeds"] == 1 for row in summary.values())
    runs = {run["cell"]: run for run in result["runs"]}
    # auto's k: the un-inflated head's spread below theory's target gives the floor, 1; inflated by 4,
    # 4 times that ratio.
    ratio = runs["F1-shift0-kauto"]["auto"]["ratio"]
    assert 0.4 < ratio < 0.9 and runs["F1-shift0-kauto"]["k_used"] == 1.0
    assert runs["F4-shift0-kauto"]["k_used"] == pytest.approx(4 * ratio, rel=1e-6)
    # W * 4 / 4 is bitwise W, untied, as auto's W / 1: one training; the released head is tied (it
    # trains its input embeddings too), so it trains on its own.
    assert runs["F4-shift0-k4"]["trained_as"] == "F1-shift0-kauto"
    assert runs["F4-shift0-k4"]["history"] == runs["F1-shift0-kauto"]["history"]
    assert len({run["trained_as"] for run in runs.values()}) == 4
    for run in runs.values():
        assert 0 <= run["ndcg@10"] <= 1 and 0 <= run["recall@100"] <= 1, run["cell"]
        assert run["active_d_init"] > 0 and run["active_q_init"] > 0 and run["peak_loss"] > 0
        assert len(run["history"]) == 2 and not run["collapsed"] and run["evaluated_model"] == "final"
    # Dividing W by 4 shrinks every weight: a smaller FLOPS regularizer at the first step.
    assert runs["F1-shift0-k4"]["history"][0]["flops_d"] < runs["F1-shift0-k1"]["history"][0]["flops_d"] / 2
    assert result["untrained"][0]["ndcg@10"] > 0.5  # the released model ranks the tiny collection well
    for row in summary.values():
        test = row["vs_reference"]
        assert row["cell"] == "F1-shift0-k1" or test is None or (test["pairs"] == 5 and 0 <= test["p"] <= 1)
        # against the untrained model: one pair per judged query and seed, the difference of the means
        test = row["vs_untrained"]
        assert test is None or (test["pairs"] == 5 and 0 <= test["p"] <= 1 and test["difference"] == pytest.approx(
            runs[row["cell"]]["ndcg@10"] - result["untrained"][0]["ndcg@10"]))
    assert [verdict["factor"] for verdict in result["best_k"]] == [1, 4]
    assert json.loads(out.with_suffix(".json").read_text())["summary"] == json.loads(json.dumps(result["summary"]))
    markdown = out.with_suffix(".md").read_text()
    assert all(f"| {factor} | 0 | {k} |" in markdown for factor, k in [(1, 1.0), (4, 4.0), (4, "auto")])
    for plot in ("k-sweep-ndcg.png", "k-sweep-active.png"):
        assert (tmp_path / plot).read_bytes()[:8] == PNG


@pytest.mark.parametrize("factors, judged", [([1.0, 4.0], [1.0, 4.0]), ([4.0, 16.0], [4.0, 16.0])])
def test_best_k_judges_each_swept_inflation_and_not_the_healthy_reference_alone(factors, judged):
    """With F = 1 not swept (`--factors 4 16`), the healthy reference is a group of one cell and no auto."""
    cells = grid(factors, [1.0, 4.0, 16.0])
    qrels = ["q1", "q2"]
    runs = []
    for number, cell in enumerate(cells):
        for seed in range(2):
            per_query = {metric: {qid: number / 100 + (number + 1) * (seed + 2 * at + 1) % 11 / 2000 for at, qid in enumerate(qrels)}
                         for metric in ("ndcg@10", "recall@100")}
            runs.append({"cell": cell.name, "seed": seed, "trained_as": cell.name, "collapsed": False, "per_query": per_query,
                         "k_used": 2.0 if cell.k == "auto" else cell.k, **{metric: sum(by_query.values()) / len(qrels)
                                                                          for metric, by_query in per_query.items()},
                         **dict.fromkeys(["active_d_init", "active_q_init", "active_d_end", "active_q_end", "eval_active_d",
                                          "eval_active_q", "flops_d_end", "flops_q_end", "peak_loss"], 1.0)})
    untrained = {"per_query": {metric: dict.fromkeys(qrels, 0.5) for metric in ("ndcg@10", "recall@100")}}
    verdicts = best_k(summarize(cells, runs, untrained))
    assert [verdict["factor"] for verdict in verdicts] == judged
    for verdict in verdicts:  # later cells score higher here (by 0.01 a cell, give or take 0.005): the largest fixed k wins
        assert verdict["best_k"] == 16.0 and verdict["auto_k"] == 2.0
