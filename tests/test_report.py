"""The report stage on a real training log and real stage outputs: sections present are rendered with
their figures, missing ones say which command produces them."""

import json

from pipeline.report import report
from pipeline.training.config import TrainConfig
from pipeline.training_runs import train_variant

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_renders_what_exists_and_names_the_command_for_the_rest(model_path, triples, tmp_path):
    runs, models = tmp_path / "runs", tmp_path / "models"
    runs.mkdir()
    history, reason = train_variant(TrainConfig(model=model_path, data=str(triples), out=str(models / "tiny-trained"),
                                                steps=2, batch_size=4, save_every=2), "tiny-trained")
    assert reason is None and len(history) == 2
    (runs / "beir-eval.json").write_text(json.dumps([
        {"dataset": "beir/scifact/test", "system": "splade-tiny", "ndcg@10": 0.6436, "recall@100": 0.9, "recall@1000": 0.97,
         "mrr@10": 0.6, "source": "measured"},
        {"dataset": "beir/scifact/test", "system": "BM25 flat", "ndcg@10": 0.672, "recall@100": 0.908, "recall@1000": None,
         "mrr@10": None, "source": "Pyserini 2CR <https://example.org>"}]))
    (runs / "k-sweep.md").write_text("# k sweep\n\n| F | k |\n|---|---|\n| 1 | 1 |\n")
    (runs / "k-sweep-ndcg.png").write_bytes(PNG)

    text = report(runs, models, runs / "report.md")

    assert (runs / "report.md").read_text() == text
    assert "| splade-tiny | 0.6436 | 0.9000 | 0.9700 | 0.6000 | measured |" in text
    assert "| BM25 flat | 0.6720 | 0.9080 |  |  | Pyserini 2CR |" in text
    last = history[-1]
    assert f"| tiny-trained | 2 | {last['loss']:.4f} |" in text
    assert (runs / "report-training.png").read_bytes()[:8] == PNG
    assert "### k sweep\n" in text and "![k-sweep-ndcg.png](k-sweep-ndcg.png)" in text
    for command in ("make ablation", "make k-sweep K_SWEEP_ARGS='--surrogate dense'", "make bench", "make search-bench"):
        assert f"run `{command}`" in text
