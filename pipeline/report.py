"""Stage `report`: one `runs/report.md`, with its figures, from whatever the other stages have left in
`runs/` and `models/`. A section whose inputs are missing says which command produces them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.beir_eval import table
from pipeline.files import atomic_path
from pipeline.training_runs import figure, plot_curves, read_train_log, save_figure

CURVES = (("loss", "loss", "symlog"), ("active_d", "active terms per document", "log"),
          ("active_q", "active terms per query", "log"), ("flops_d", "FLOPS regularizer (documents)", "log"))


def _missing(what: str, command: str) -> list[str]:
    return [f"No {what} yet: run `{command}`.", ""]


def _embedded(path: Path) -> list[str]:
    """A stage's own markdown, its headings moved two levels down, under the report's section."""
    return [f"##{line}" if line.startswith("#") else line for line in path.read_text().splitlines()] + [""]


def _retrieval(runs: Path) -> list[str]:
    path = runs / "beir-eval.json"
    if not path.exists():
        return _missing("retrieval evaluation (runs/beir-eval.json)", "make beir-eval")
    lines = []
    rows = json.loads(path.read_text())
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        lines += [f"### {dataset}", "", *table([row for row in rows if row["dataset"] == dataset]), ""]
    return lines


def _training(models: Path, out: Path) -> list[str]:
    logs = {folder.name: read_train_log(folder) for folder in sorted(models.glob("*/"))
            if (folder / "train_log.jsonl").exists()}
    logs = {name: history for name, history in logs.items() if history}
    if not logs:
        return _missing("training logs (models/*/train_log.jsonl)", "make train")
    fig, axes = figure(len(CURVES))
    for axis, (key, label, scale) in zip(axes[0], CURVES):
        plot_curves(axis, logs, key, ylabel=label, yscale=scale, title=label)
    axes[0][0].legend(fontsize=8)
    plot = out.parent / f"{out.stem}-training.png"
    save_figure(fig, plot)
    lines = [f"![training curves]({plot.name})", "", "| model | steps | last loss | active terms d / q | FLOPS d |",
             "|---|---:|---:|---:|---:|"]
    for name, history in logs.items():
        last = history[-1]
        lines.append(f"| {name} | {last['step']} | {last['loss']:.4f} | {last['active_d']:.1f} / {last['active_q']:.1f} | "
                     f"{last['flops_d']:.4g} |")
    return lines + [""]


def _stage_output(runs: Path, stem: str, figures: list[str], command: str, out: Path) -> list[str]:
    """A stage's markdown (`runs/<stem>.md`) with its figures (linked from `out`), or how to produce it."""
    if not (runs / f"{stem}.md").exists():
        return _missing(f"runs/{stem}.md", command)
    lines = _embedded(runs / f"{stem}.md")
    return lines + [f"![{name}]({os.path.relpath(runs / name, out.parent)})" for name in figures
                    if (runs / name).exists()] + [""]


def _search_speed(runs: Path) -> list[str]:
    path = runs / "search-bench.json"
    if not path.exists():
        return _missing("search speed figures (runs/search-bench.json)", "make search-bench")
    bench = json.loads(path.read_text())
    identical = all(bench[f"identical_rankings_{peer}"] for peer in ("pyserini_cli", "anserini_java"))
    lines = [f"{bench['documents']} documents, {bench['queries']} queries, k={bench['k']}, {bench['threads']} threads "
             f"({bench['cpus']} CPUs), median of {bench.get('repeats', 1)} runs each: "
             f"ours {bench['speedup_queries_per_second']:.1f}x Pyserini's CLI end to end, "
             f"{bench['speedup_marginal_queries_per_second']:.1f}x at the margin; rankings identical to Pyserini's "
             f"and Anserini's: {identical}.", "",
             "| search | seconds | queries/s |", "|---|---:|---:|"]
    for name in ("ours_in_stage", "ours_cli", "pyserini_cli", "anserini_java"):
        lines.append(f"| {name} | {bench[name]['seconds']:.2f} | {bench[name]['queries_per_second']:.1f} |")
    lines += ["", "| indexing | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in bench["indexing_seconds"].items()]
    return lines + [""]


def report(runs: Path, models: Path, out: Path) -> str:
    """Write `out` (markdown) and its figures beside it; return the markdown."""
    sections = [
        ("Retrieval: our runs beside the leaderboards", _retrieval(runs)),
        ("Training curves", _training(models, out)),
        ("Ablation: inflated head, with and without rescaling",
         _stage_output(runs, "ablation", ["ablation.png"], "make ablation", out)),
        ("k sweep: rescaling factor against head inflation",
         _stage_output(runs, "k-sweep", ["k-sweep-ndcg.png", "k-sweep-active.png"], "make k-sweep", out)),
        *(("k sweep on the dense surrogate" + ("" if stem == "k-sweep-dense" else f" ({stem})"),
           _stage_output(runs, stem, [f"{stem}-ndcg.png", f"{stem}-active.png"],
                         "make k-sweep K_SWEEP_ARGS='--surrogate dense'", out))
          for stem in sorted({"k-sweep-dense", *(path.stem for path in runs.glob("k-sweep-dense*.md"))})),
        ("Encoding speed", _stage_output(runs, "bench", [], "make bench", out)),
        ("Search and indexing speed", _search_speed(runs)),
    ]
    lines = ["# SPLADE pipeline report", "", f"Built from `{runs}/` and `{models}/*/train_log.jsonl`.", ""]
    for title, body in sections:
        lines += [f"## {title}", "", *body]
    text = "\n".join(lines)
    with atomic_path(out) as staging:
        staging.write_text(text)
    print(text)
    return text
