"""Published baselines (`leaderboards.json`, each figure with its source) for a dataset."""

from __future__ import annotations

import functools
import json
from pathlib import Path

FILE = Path(__file__).with_name("leaderboards.json")


@functools.cache
def _table() -> dict:
    return json.loads(FILE.read_text())


def rows(dataset: str) -> list[dict]:
    """Rows `{"system", "metrics", "source"}` for an ir_datasets id; `source` gives title and url. A TREC DL id
    without `/judged` takes its judged subset's rows: judged queries alone are scored (`trec_eval -c`), the same."""
    table, judged = _table(), f"{dataset}/judged"
    named = judged if any(row["dataset"] == judged for row in table["rows"]) else dataset
    return [
        {"system": row["system"], "metrics": row["metrics"], "source": table["sources"][row["source"]]}
        for row in table["rows"]
        if row["dataset"] == named
    ]
