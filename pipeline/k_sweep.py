"""Stage `k-sweep`: which rescaling factor k suits a head inflated by F, and does `auto` pick it?

The default model's head is made sick by a surrogate of a large-norm backbone, then trained with
W <- W / k for each k of a grid (k = 1: no rescaling), with k = F, and with `auto`, for several seeds,
all on the same budget, and evaluated on the test collection. Surrogates (`SURROGATES`):
  inflate  W <- W * F: logits F times larger (the large-norm head); F = 1 is the model as released.
  dense    b <- b + DENSE_BIAS_SHIFT first: most of the vocabulary active at init (dense vectors),
           which scaling W cannot undo; its sweep also trains the healthy model as the reference.
Evaluation is an exact sparse dot product of the quantized vectors (`pipeline.exact_search`, equal to
Lucene's impact search) on a fixed part of the collection: every judged document and a seeded random
sample of the others, `eval_docs` in all, so that dozens of models are evaluated in minutes, not hours.
Each (F, k) cell is compared with the healthy reference (not inflated, not rescaled) by a paired
t-test over queries x seeds, and each F's rescaled cells with its unrescaled one.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ranx import Qrels
from ranx import evaluate as ranx_evaluate
from scipy import stats

from pipeline import data
from pipeline.eval import quiet_ranx, ranked_run
from pipeline.exact_search import active_terms, exact_search, sparse_vectors
from pipeline.files import atomic_path, write_json
from pipeline.splade.model import SpladeEncoder
from pipeline.splade.rescale import DENSE_BIAS_SHIFT, prepare_head
from pipeline.training.config import TrainConfig
from pipeline.train import auto_sample
from pipeline.training.examples import load_examples
from pipeline.training_runs import figure, plot_curves, save_figure, train_variant

log = logging.getLogger(__name__)

SURROGATES = {"inflate": 0.0, "dense": DENSE_BIAS_SHIFT}  # surrogate -> bias shift
DEFAULT_GRIDS = {"inflate": ([1.0, 4.0, 16.0, 64.0], [1.0, 4.0, 16.0, 64.0]), "dense": ([1.0], [1.0, 16.0])}
METRICS = ("ndcg@10", "recall@100")
# Documents are cut at 128 tokens (encode's default is 256): it halves each of the many evaluations,
# and the untrained reference is measured the same way.
QUERY_LENGTH, EVAL_DOC_LENGTH = 64, 128


@dataclass(frozen=True)
class Cell:
    factor: float  # W <- W * factor before training (1: as released)
    shift: float  # b <- b + shift before training (0: as released)
    k: float | str  # W <- W / k after that (1: not rescaled), or "auto"

    @property
    def name(self) -> str:
        return f"F{self.factor:g}-shift{self.shift:g}-k{self.k if self.k == 'auto' else format(self.k, 'g')}"

    @property
    def healthy(self) -> bool:
        return self.factor == 1 and self.shift == 0 and self.k == 1


def grid(factors: list[float], ks: list[float], surrogate: str = "inflate") -> list[Cell]:
    """Each F with each k, k = F and auto, once each; the healthy reference first."""
    shift = SURROGATES[surrogate]
    cells = [Cell(1.0, 0.0, 1.0)]
    for factor in factors:
        for k in [*sorted(set(ks) | {factor}), "auto"]:
            cell = Cell(float(factor), shift, k if k == "auto" else float(k))
            if cell not in cells:
                cells.append(cell)
    return cells


@dataclass
class EvalSet:
    """The queries, their judgments, and the documents the models are evaluated on."""

    dataset: str
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    remove_query: bool


def eval_set(dataset: str, docs: int | None, seed: int = 0) -> EvalSet:
    """The judged queries with every judged document and a seeded sample of the others, `docs` in all
    (the whole collection when None or larger)."""
    corpus = data.load(dataset)
    qrels = {qid: judged for qid, judged in corpus.qrels().items() if judged}
    judged = {doc_id for judgments in qrels.values() for doc_id in judgments}
    collection = list(corpus.docs())
    kept = [doc for doc in collection if doc.id in judged]
    others = [doc for doc in collection if doc.id not in judged]
    room = len(others) if docs is None else max(0, min(len(others), docs - len(kept)))
    kept += random.Random(seed).sample(others, room)
    queries = {qid: text for qid, text in corpus.queries().items() if qid in qrels}
    return EvalSet(corpus.name, [doc.id for doc in kept], [doc.text for doc in kept], queries, qrels,
                   corpus.queries_are_documents)


def evaluate_model(model: Path | str, target: EvalSet) -> dict:
    """Per-query nDCG@10 and R@100 of `model` on `target`, with the active terms of its vectors."""
    encoder = SpladeEncoder.load(model, device="cpu")
    docs = sparse_vectors(encoder, target.doc_texts, max_length=EVAL_DOC_LENGTH)
    query_ids = list(target.queries)
    queries = sparse_vectors(encoder, [target.queries[qid] for qid in query_ids], max_length=QUERY_LENGTH)
    hits = exact_search(query_ids, queries, target.doc_ids, docs, remove_query=target.remove_query)
    ranked = {qid: ranking for qid, ranking in hits.items() if ranking}
    active = {"eval_active_d": active_terms(docs), "eval_active_q": active_terms(queries)}
    if not ranked:  # no query shares a term with any document
        return {**_zero_scores(target), **active}
    qrels = Qrels(target.qrels)
    run = ranked_run(ranked, "run", target.qrels)  # a judged query without hits scores 0, as trec_eval -c
    with quiet_ranx():
        ranx_evaluate(qrels, run, list(METRICS))
    return {"per_query": {metric: dict(run.scores[metric]) for metric in METRICS},
            **{metric: float(np.mean(list(run.scores[metric].values()))) for metric in METRICS}, **active}


def _zero_scores(target: EvalSet) -> dict:
    """What retrieves nothing (a run that left no model, or vectors sharing no term) scores."""
    return {"per_query": {metric: dict.fromkeys(target.qrels, 0.0) for metric in METRICS},
            **dict.fromkeys(METRICS, 0.0), "eval_active_d": None, "eval_active_q": None}


def prepared_head(model: str, cell: Cell, sample: list[str]) -> tuple[str, dict]:
    """(fingerprint, rescaling record) of the head `cell` starts training with. Cells with the same
    fingerprint start from bitwise the same model: inflating by F then dividing by k multiplies W by
    F / k, exactly when both are powers of 2, and CPU training is deterministic, so they train alike."""
    encoder = SpladeEncoder.load(model, device="cpu")
    record = prepare_head(encoder.model, encoder.tokenizer, inflate=cell.factor, bias_shift=cell.shift,
                          rescale=_rescale_option(cell), sample=sample)
    head = encoder.model.head
    digest = hashlib.sha256(b"tied" if head.tied else b"untied")  # a tied decoder trains the embeddings too
    for tensor in (head.decoder.weight, head.decoder.bias):
        digest.update(b"no bias" if tensor is None else tensor.detach().numpy().tobytes())
    return digest.hexdigest(), record


def _rescale_option(cell: Cell) -> str | None:
    return None if cell.k == 1 else str(cell.k)


def _train_and_evaluate(cell: Cell, seed: int, base: TrainConfig, examples: list, target: EvalSet, work: Path) -> dict:
    folder = work / f"{cell.name}-seed{seed}"
    config = replace(base, out=str(folder), seed=seed, inflate=cell.factor, bias_shift=cell.shift,
                     rescale=_rescale_option(cell))
    started = time.perf_counter()
    history, reason = train_variant(config, folder.name, examples)
    trained = (folder / "model.safetensors").exists()
    scores = evaluate_model(folder, target) if trained else _zero_scores(target)
    # The optimizer states of the checkpoints are most of a run's bytes and no result needs them.
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    first, last = (history[0], history[-1]) if history else ({}, {})
    return {"seed": seed, "trained_as": cell.name,
            "active_d_init": first.get("active_d"), "active_q_init": first.get("active_q"),
            "active_d_end": last.get("active_d"), "active_q_end": last.get("active_q"),
            "flops_d_end": last.get("flops_d"), "flops_q_end": last.get("flops_q"),
            "peak_loss": max((row["loss"] for row in history), default=None), "collapsed": reason is not None,
            "collapse_reason": reason, "evaluated_model": "final" if trained and not reason else (
                "last good checkpoint" if trained else "none: scores 0"),
            "seconds": time.perf_counter() - started, "history": history, **scores}


def _paired(values: dict, against: dict, metric: str = "ndcg@10") -> dict | None:
    """Paired t-test over (seed, query) pairs of two cells' runs, matched by seed (the seeds both have)."""
    seeds = sorted(set(values) & set(against))
    pairs = [(row["per_query"][metric][qid], other["per_query"][metric][qid])
             for seed in seeds for row, other in [(values[seed], against[seed])] for qid in row["per_query"][metric]]
    if not pairs or all(first == second for first, second in pairs):
        return None
    first, second = np.array(pairs).T
    test = stats.ttest_rel(first, second)
    return {"difference": float(np.mean(first - second)), "p": float(test.pvalue), "pairs": len(pairs)}


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(cells: list[Cell], runs: list[dict], untrained: dict) -> list[dict]:
    """Per cell: mean and std over seeds, and paired tests against the released model untrained (its one
    evaluation paired with each seed: does training help?), against the healthy reference and, for a
    rescaled cell, against the same F not rescaled."""
    by_cell = {cell.name: {run["seed"]: run for run in runs if run["cell"] == cell.name} for cell in cells}
    reference = by_cell[cells[0].name]
    summary = []
    for cell in cells:
        seeded = by_cell[cell.name]
        unrescaled = Cell(cell.factor, cell.shift, 1.0).name
        row = {"cell": cell.name, "factor": cell.factor, "shift": cell.shift, "k": cell.k, "seeds": len(seeded),
               "trained_as": next(iter(seeded.values()))["trained_as"],
               "k_used": _spread([run["k_used"] for run in seeded.values()])[0],
               "collapsed": sum(run["collapsed"] for run in seeded.values()),
               "vs_untrained": _paired(seeded, dict.fromkeys(seeded, untrained)),
               "vs_reference": None if cell.healthy else _paired(seeded, reference),
               "vs_not_rescaled": _paired(seeded, by_cell[unrescaled]) if cell.k != 1 and unrescaled in by_cell else None}
        for key in (*METRICS, "active_d_init", "active_q_init", "active_d_end", "active_q_end", "eval_active_d",
                    "eval_active_q", "flops_d_end", "flops_q_end", "peak_loss"):
            known = [run[key] for run in seeded.values() if run[key] is not None]
            row[key] = dict(zip(("mean", "std"), _spread(known))) if known else None
        summary.append(row)
    return summary


def best_k(summary: list[dict]) -> list[dict]:
    """Per swept (F, shift): the fixed k with the best mean nDCG@10, and whether auto is within one seed
    standard deviation of it. The healthy reference alone (F = 1 not swept) is no such group: it has no auto."""
    verdicts = []
    for factor, shift in dict.fromkeys((row["factor"], row["shift"]) for row in summary if row["k"] == "auto"):
        rows = [row for row in summary if (row["factor"], row["shift"]) == (factor, shift)]
        fixed = [row for row in rows if row["k"] != "auto"]
        auto = next(row for row in rows if row["k"] == "auto")
        best = max(fixed, key=lambda row: row["ndcg@10"]["mean"])
        gap = best["ndcg@10"]["mean"] - auto["ndcg@10"]["mean"]
        verdicts.append({"factor": factor, "shift": shift, "best_k": best["k"], "best_ndcg@10": best["ndcg@10"],
                         "auto_k": auto["k_used"], "auto_ndcg@10": auto["ndcg@10"], "gap": gap,
                         "auto_within_one_std": gap <= best["ndcg@10"]["std"]})
    return verdicts


def _fmt(value: dict | None, digits: int = 4) -> str:
    return "" if value is None else f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def _test(result: dict | None) -> str:
    return "" if result is None else f"{result['difference']:+.4f} (p={result['p']:.2g})"


def _markdown(result: dict) -> str:
    settings, lines = result["settings"], []
    lines += [f"# k sweep ({settings['surrogate']} surrogate): {settings['steps']} steps of {settings['batch_size']} "
              f"queries, lr {settings['lr']:g}, FLOPS lambda q/d {settings['lambda_q']:g}/{settings['lambda_d']:g}, seeds {settings['seeds']}, on {settings['data']}; "
              f"training stops as collapsed above {settings['collapse_max_fraction']:.0%} of the vocabulary active", "",
              f"Evaluated on {result['eval']['dataset']}: {result['eval']['queries']} queries, "
              f"{result['eval']['docs']} documents (every judged one and a seeded sample of the others), exact "
              f"sparse dot product of the quantized vectors. Wall time {result['seconds'] / 60:.1f} min.", "",
              "Untrained references on the same documents:", ""]
    lines += [f"- {row['name']}: nDCG@10 {row['ndcg@10']:.4f}, R@100 {row['recall@100']:.4f}, active terms "
              f"{row['eval_active_d']:.1f} per document, {row['eval_active_q']:.1f} per query" for row in result["untrained"]]
    lines += ["", "| F | bias shift | k | k used | trained as | nDCG@10 | R@100 | active d init -> end | active q init -> end | "
              "FLOPS d end | peak loss | collapsed | nDCG vs untrained (p) | nDCG vs healthy (p) | nDCG vs same F, k=1 (p) |",
              "|---:|---:|---|---:|---|---|---|---|---|---:|---:|---:|---|---|---|"]
    for row in result["summary"]:
        active = {side: f"{row[f'active_{side}_init']['mean']:.0f} -> {row[f'active_{side}_end']['mean']:.0f}"
                  if row[f"active_{side}_init"] and row[f"active_{side}_end"] else "" for side in "dq"}
        shared = "" if row["trained_as"] == row["cell"] else row["trained_as"]
        lines.append(f"| {row['factor']:g} | {row['shift']:g} | {row['k']} | {row['k_used']:.3g} | {shared} | {_fmt(row['ndcg@10'])} | "
                     f"{_fmt(row['recall@100'])} | {active['d']} | {active['q']} | "
                     f"{row['flops_d_end']['mean'] if row['flops_d_end'] else float('nan'):.3g} | "
                     f"{row['peak_loss']['mean'] if row['peak_loss'] else float('nan'):.3g} | {row['collapsed']}/{row['seeds']} | "
                     f"{_test(row['vs_untrained'])} | {_test(row['vs_reference'])} | {_test(row['vs_not_rescaled'])} |")
    lines += ["", "Best fixed k per F against auto (auto within one seed standard deviation of the best?):", "",
              "| F | bias shift | best k | its nDCG@10 | auto's k | auto's nDCG@10 | gap | within one std |",
              "|---:|---:|---:|---|---:|---|---:|---|"]
    lines += [f"| {v['factor']:g} | {v['shift']:g} | {v['best_k']:g} | {_fmt(v['best_ndcg@10'])} | {v['auto_k']:.3g} | "
              f"{_fmt(v['auto_ndcg@10'])} | {v['gap']:+.4f} | {v['auto_within_one_std']} |" for v in result["best_k"]]
    auto = result["auto_rule"]
    if auto:
        lines += ["", f"auto: `{auto['rule']}`; target {auto['target_spread']:.4g} ({auto['target_source']}). "
                      f"On {auto['sample_texts']} training documents the un-inflated head's spread is "
                      f"{auto['projection_spread']:.4g}, ratio {auto['ratio']:.3g}."]
    lines += ["", "Paired t-tests over queries x seeds (runs matched by seed). A run that collapsed is evaluated "
                  "at its last good checkpoint; one that left none scores 0."]
    return "\n".join(lines) + "\n"


def _plot_ndcg(summary: list[dict], path: Path) -> None:
    fig, axes = figure(1)
    axis = axes[0][0]
    for factor in dict.fromkeys(row["factor"] for row in summary[1:]):
        rows = [row for row in summary if row["factor"] == factor and row["shift"] == summary[-1]["shift"]]
        fixed = sorted((row for row in rows if row["k"] != "auto"), key=lambda row: row["k"])
        line = axis.errorbar([row["k"] for row in fixed], [row["ndcg@10"]["mean"] for row in fixed],
                             yerr=[row["ndcg@10"]["std"] for row in fixed], marker="o", capsize=3, label=f"F={factor:g}")
        for row in rows:
            if row["k"] == "auto":
                axis.plot(row["k_used"], row["ndcg@10"]["mean"], marker="*", markersize=14, color=line[0].get_color())
    axis.axhline(summary[0]["ndcg@10"]["mean"], color="grey", linestyle=":", label="healthy (F=1, k=1)")
    axis.set(xscale="log", xlabel="k (W <- W / k); star: auto's k", ylabel="nDCG@10 (mean ± std over seeds)",
             title="nDCG@10 against k per inflation F")
    axis.legend(fontsize=8)
    save_figure(fig, path)


def _mean_curve(histories: list[list[dict]], key: str) -> list[dict]:
    steps = min(len(history) for history in histories)
    return [{"step": histories[0][i]["step"], key: statistics.fmean(history[i][key] for history in histories)}
            for i in range(steps)]


def _plot_active(cells: list[Cell], runs: list[dict], path: Path) -> None:
    factors = list(dict.fromkeys(cell.factor for cell in cells[1:]))
    fig, axes = figure(len(factors))
    for axis, factor in zip(axes[0], factors):
        curves = {}
        for cell in cells:
            histories = [run["history"] for run in runs if run["cell"] == cell.name and run["history"]]
            if cell.factor == factor and histories:
                curves[f"k={cell.k}" + (f" shift {cell.shift:g}" if cell.shift else "")] = _mean_curve(histories, "active_d")
        plot_curves(axis, curves, "active_d", ylabel="active terms per document (mean over seeds)", yscale="log",
                    title=f"F={factor:g}")
        axis.legend(fontsize=7)
    save_figure(fig, path)


def k_sweep(model: str, data_source: str, negatives_index: Path, dataset: str, out: Path, *,
            factors: list[float], ks: list[float], seeds: int = 3, surrogate: str = "inflate", steps: int = 48,
            batch_size: int = 8, lr: float = 2e-5, max_doc_length: int = 64,
            lambda_q: float = TrainConfig.lambda_q, lambda_d: float = TrainConfig.lambda_d,
            collapse_max_fraction: float = TrainConfig.collapse_max_fraction, eval_docs: int | None = 800,
            threads: int = 1) -> dict:
    """Train and evaluate every cell of the grid for `seeds` seeds under `out/`; write `out`.json, .md,
    -ndcg.png and -active.png beside it. Returns what the JSON holds."""
    started = time.perf_counter()
    # One torch thread by default: on a loaded 2-core machine two intra-op threads wait on each other
    # whenever one is descheduled (a training step measured 2 s on one thread, 7 to 19 s on two), and
    # the bitwise sharing of trainings holds for one thread count.
    torch.set_num_threads(threads)
    cells = grid(factors, ks, surrogate)
    base = TrainConfig(model=model, data=data_source, out="", negatives_index=str(negatives_index), steps=steps,
                       batch_size=batch_size, lr=lr, max_doc_length=max_doc_length, lambda_q=lambda_q, lambda_d=lambda_d,
                       collapse_max_fraction=collapse_max_fraction, warmup_steps=max(1, steps // 10),
                       flops_warmup=steps // 2, save_every=max(1, steps // 4))
    examples = load_examples(data_source, negatives_index=negatives_index)
    target = eval_set(dataset, eval_docs)
    untrained = [{"name": "released model, untrained", **evaluate_model(model, target)}]
    if SURROGATES[surrogate]:  # the surrogate's own symptom, before any training
        sick = SpladeEncoder.load(model, device="cpu")
        prepare_head(sick.model, sick.tokenizer, bias_shift=SURROGATES[surrogate])
        sick.model.save_pretrained(out / "untrained-surrogate", sick.tokenizer)
        untrained.append({"name": f"bias shifted by {SURROGATES[surrogate]:g}, untrained",
                          **evaluate_model(out / "untrained-surrogate", target)})
    trained: dict[str, list[dict]] = {}  # fingerprint of the head at init -> its runs, one per seed
    runs = []
    for cell in cells:
        fingerprint, record = prepared_head(model, cell, auto_sample(examples))
        if fingerprint not in trained:
            trained[fingerprint] = [_train_and_evaluate(cell, seed, base, examples, target, out) for seed in range(seeds)]
        for run in trained[fingerprint]:
            runs.append({**run, "cell": cell.name, "factor": cell.factor, "shift": cell.shift, "k": cell.k,
                         "k_used": record["k"], "auto": record if "rule" in record else None})
            log.info("%s seed %d (trained as %s): nDCG@10 %.4f", cell.name, run["seed"], run["trained_as"], run["ndcg@10"])
    summary = summarize(cells, runs, untrained[0])
    auto = next((run["auto"] for run in runs if run["auto"] and run["factor"] == 1), None)
    result = {"settings": {"model": model, "data": data_source, "surrogate": surrogate, "bias_shift": SURROGATES[surrogate],
                           "factors": factors, "ks": ks, "seeds": seeds, "steps": steps, "batch_size": batch_size, "lr": lr,
                           "lambda_q": lambda_q, "lambda_d": lambda_d, "collapse_max_fraction": collapse_max_fraction,
                           "torch_threads": threads,
                           "max_doc_length": max_doc_length, "eval_doc_length": EVAL_DOC_LENGTH},
              "eval": {"dataset": target.dataset, "docs": len(target.doc_ids), "queries": len(target.queries)},
              "untrained": [{key: value for key, value in row.items() if key != "per_query"} for row in untrained],
              "auto_rule": auto, "summary": summary, "best_k": best_k(summary),
              "runs": [{key: value for key, value in run.items() if key != "per_query"} for run in runs],
              "seconds": time.perf_counter() - started}
    write_json(out.with_suffix(".json"), result)
    with atomic_path(out.with_suffix(".md")) as staging:
        staging.write_text(_markdown(result))
    _plot_ndcg(summary, out.parent / f"{out.name}-ndcg.png")
    _plot_active(cells, runs, out.parent / f"{out.name}-active.png")
    print(out.with_suffix(".md").read_text())
    return result
