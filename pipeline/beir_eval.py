"""Stage `beir-eval`: one table per dataset (our SPLADE and BM25 runs beside the published
leaderboard rows), from the JSON files of the `eval` stage; written as JSON rows and markdown."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.eval import METRICS
from pipeline.files import atomic_path, write_json

HEADERS = {"ndcg@10": "nDCG@10", "recall@100": "R@100", "recall@1000": "R@1000", "mrr@10": "MRR@10", "map": "MAP"}


def _rows(evaluation: dict) -> list[dict]:
    """The measured rows, then the leaderboard's; MAP too where judgments are graded (TREC DL publishes it)."""
    metrics = (*METRICS, "map") if evaluation["relevance_level"] > 1 else METRICS
    rows = [
        {"dataset": evaluation["dataset"], "system": system, **{m: scores.get(m) for m in metrics}, "source": "measured"}
        for system, scores in evaluation["metrics"].items()
    ]
    rows += [
        {"dataset": evaluation["dataset"], "system": row["system"], **{m: row["metrics"].get(m) for m in metrics},
         "source": f'{row["source"]["title"]} <{row["source"]["url"]}>' if row["source"].get("url") else row["source"]["title"]}
        for row in evaluation["leaderboard"]
    ]
    return rows


def table(rows: list[dict]) -> list[str]:
    """The markdown table of one dataset's rows: a column for each metric they hold, sources without their url."""
    columns = [metric for metric in HEADERS if any(metric in row for row in rows)]
    lines = ["| system | " + " | ".join(HEADERS[metric] for metric in columns) + " | source |",
             "|---|" + "---:|" * len(columns) + "---|"]
    for row in rows:
        cells = ["" if row.get(metric) is None else f"{row[metric]:.4f}" for metric in columns]
        lines.append(f'| {row["system"]} | ' + " | ".join(cells) + f' | {row["source"].split(" <")[0]} |')
    return lines


def _markdown(evaluation: dict, rows: list[dict]) -> str:
    level = evaluation["relevance_level"]
    lines = [f'## {evaluation["dataset"]} ({evaluation["queries"]} judged queries'
             + (f", all but nDCG count relevance >= {level})" if level > 1 else ")"), "", *table(rows)]
    lines += [f"- {note}" for note in evaluation["notes"]]
    if "comparison" in evaluation:
        comparison = evaluation["comparison"]
        lines += ["", f'Measured runs compared ({comparison["test"]}, p < {comparison["max_p"]}; '
                  "a superscript letter marks a significant win over that run):", "", "```",
                  comparison["report"], "```"]
    return "\n".join(lines) + "\n"


def beir_eval(evaluations: list[Path], out_json: Path, out_markdown: Path) -> list[dict]:
    """Gather `eval` outputs into rows {dataset, system, metrics..., source}; print and write them."""
    all_rows, sections = [], ["# BEIR evaluation", ""]
    for path in evaluations:
        evaluation = json.loads(Path(path).read_text())
        rows = _rows(evaluation)
        all_rows += rows
        sections.append(_markdown(evaluation, rows))
    report = "\n".join(sections)
    print(report)
    write_json(out_json, all_rows)
    with atomic_path(out_markdown) as staging:
        staging.write_text(report)
    return all_rows
