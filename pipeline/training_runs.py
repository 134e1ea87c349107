"""Pieces shared by the stages that train many variants and compare them (`ablation`, `k-sweep`) and
by `report`: a training run that may collapse, its logged curves, and figures written atomically."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.files import atomic_path
from pipeline.train import CollapseError, train
from pipeline.training.config import TrainConfig

log = logging.getLogger(__name__)


def read_train_log(folder: Path) -> list[dict]:
    """The per-step records of `folder/train_log.jsonl` ([] when there is none)."""
    path = folder / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train_variant(config: TrainConfig, name: str, examples: list | None = None) -> tuple[list[dict], str | None]:
    """Train; a collapse is a result here, not a failure: (per-step history, collapse reason or None).
    A collapsed run's folder holds its last good checkpoint, if one was saved."""
    try:
        return train(config, examples=examples)["history"], None
    except CollapseError as err:
        log.warning("%s: %s", name, err)
        return read_train_log(Path(config.out)), str(err)


def plot_curves(axis, histories: dict[str, list[dict]], key: str, **style) -> None:
    """One line per named history: `key` against the step; `style` goes to the axis (labels, scales)."""
    for name, history in histories.items():
        axis.plot([row["step"] for row in history], [row[key] for row in history], label=name)
    axis.set(xlabel="step", **style)


def figure(columns: int, rows: int = 1, *, size: tuple[float, float] = (5.5, 4)):
    """A matplotlib figure (Agg: no display) of rows x columns axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as staging:
        fig.savefig(staging, format="png", dpi=110)
    plt.close(fig)
