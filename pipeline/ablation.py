"""Stage `ablation`: the collapse mechanism and its fix, offline.

The default model's head is inflated by a factor (16) to imitate a large-norm backbone, then trained
with the same budget as (a) inflated, no rescale; (b) inflated, fixed rescale by the same factor;
(c) inflated, auto rescale; (d) not inflated, no rescale. Each variant reports its head stats at
init, its loss and active-term curves, and nDCG@10 / R@100 of the trained model on a test set.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pipeline.encode import encode
from pipeline.eval import evaluate
from pipeline.files import atomic_path, write_json
from pipeline.head_stats import SAMPLE_TEXTS, measure
from pipeline.index import index
from pipeline.search import search
from pipeline.splade.model import SpladeEncoder
from pipeline.splade.rescale import prepare_head
from pipeline.training.config import TrainConfig
from pipeline.training_runs import figure, plot_curves, save_figure, train_variant


def variants(inflate: float) -> list[tuple[str, float, str | None]]:
    return [
        ("a-inflated-no-rescale", inflate, None),
        ("b-inflated-fixed-rescale", inflate, f"{inflate:g}"),
        ("c-inflated-auto-rescale", inflate, "auto"),
        ("d-not-inflated-no-rescale", 1.0, None),
    ]


def _init_stats(model: str, inflate: float, rescale: str | None, sample: list[str]) -> dict:
    """Head stats of the variant's model as training starts (inflated, then rescaled)."""
    encoder = SpladeEncoder.load(model, device="cpu")
    record = prepare_head(encoder.model, encoder.tokenizer, inflate=inflate, rescale=rescale, sample=sample)
    return {**measure(encoder, SAMPLE_TEXTS), "k": record["k"]}


def _retrieval(model_dir: Path, dataset: str, work: Path, name: str) -> dict:
    """nDCG@10 and R@100 of a variant's trained model (a collapsed one's last good checkpoint, which its row marks
    as collapsed), encoded afresh: each run of the stage trains its models anew."""
    encode(str(model_dir), work / "encoded", dataset=dataset, fresh=True, accept_collapsed=True)
    index(work / "lucene", vectors=work / "encoded" / "docs")
    search(work / "lucene", work / f"{name}.trec", dataset, queries=work / "encoded" / "queries.jsonl")
    return evaluate(dataset, {name: work / f"{name}.trec"})["metrics"][name]


def _plot(histories: dict[str, list[dict]], path: Path) -> None:
    fig, axes = figure(2)
    plot_curves(axes[0][0], histories, "rank_loss", ylabel="ranking loss", yscale="symlog", title="loss")
    plot_curves(axes[0][1], histories, "active_d", ylabel="active terms per document", yscale="log", title="active terms")
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def _markdown(rows: list[dict], inflate: float, config: TrainConfig, dataset: str) -> str:
    lines = [f"# Ablation: head inflated x{inflate:g}, {config.steps} steps of {config.batch_size} queries on "
             f"{config.data}, evaluated on {dataset}", "",
             "| variant | inflate | rescale | k | nDCG@10 | R@100 | active terms at init | collapsed |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for row in rows:
        ndcg, recall = ("" if row[key] is None else f"{row[key]:.4f}" for key in ("ndcg@10", "recall@100"))
        lines.append(f"| {row['variant']} | {row['inflate']:g} | {row['rescale'] or 'none'} | {row['k']:.3g} | "
                     f"{ndcg} | {recall} | {row['active_terms_init']:.1f} | {row['collapsed']} |")
    lines += ["", "Head stats at init (sample texts of pipeline.head_stats):", ""]
    keys = ["decoder_frobenius", "projection_rms", "active_terms_mean", "weight_mean", "weight_max", "flops",
            "cosine_unrelated_mean"]
    lines += ["| variant | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for row in rows:
        lines.append(f"| {row['variant']} | " + " | ".join(f"{row['init'][key]:.4g}" for key in keys) + " |")
    for row in rows:
        if row["collapse_reason"]:
            lines.append(f"\n{row['variant']}: {row['collapse_reason']}")
    return "\n".join(lines) + "\n"


def ablation(model: str, data: str, negatives_index: Path, dataset: str, out: Path, *, inflate: float = 16,
             steps: int = 50, batch_size: int = 8, lr: float = 5e-5) -> list[dict]:
    """Train and evaluate the four variants under `out/`; write `out`.json, .md and .png beside it."""
    base = TrainConfig(model=model, data=data, out="", negatives_index=str(negatives_index), steps=steps,
                       batch_size=batch_size, lr=lr, save_every=max(1, steps // 5), flops_warmup=steps // 2)
    rows, histories = [], {}
    sample = None
    for name, factor, rescale in variants(inflate):
        work = out / name
        config = replace(base, out=str(work / "model"), inflate=factor, rescale=rescale)
        if sample is None:
            from pipeline.training.examples import load_examples

            sample = [e.positives[0][1] for e in load_examples(data, negatives_index=negatives_index)[:64]]
        init = _init_stats(model, factor, rescale, sample)
        history, reason = train_variant(config, name)
        histories[name] = history
        trained = Path(config.out)
        metrics = _retrieval(trained, dataset, work, name) if (trained / "model.safetensors").exists() else {}
        rows.append({"variant": name, "inflate": factor, "rescale": rescale, "k": init["k"],
                     "ndcg@10": metrics.get("ndcg@10"), "recall@100": metrics.get("recall@100"),
                     "active_terms_init": init["active_terms_mean"], "collapsed": reason is not None,
                     "collapse_reason": reason, "init": init,
                     "final_active_terms": history[-1]["active_d"] if history else None})
    write_json(out.with_suffix(".json"), rows)
    with atomic_path(out.with_suffix(".md")) as staging:
        staging.write_text(_markdown(rows, inflate, base, dataset))
    _plot(histories, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return rows
