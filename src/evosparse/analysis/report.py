"""``evosparse analyze RUN_DIR``: graph metrics of a run's topology over its epochs, as CSV and plots.

The whole network is analysed as one layered graph when its sparse layers form a chain of 2-D weights
(an MLP); every square recurrent matrix (``weight_hh`` of an LSTM) is also analysed on its own, as in the
Adaptive Weight Sparsity paper's Figure 5.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from evosparse.analysis.graph import graph_metrics, layered_adjacency, matrix_adjacency, matrix_graph_metrics  # noqa: E402
from evosparse.analysis.plots import save_png  # noqa: E402
from evosparse.analysis.snapshots import list_snapshots, load_snapshot  # noqa: E402
from evosparse.errors import UsageError  # noqa: E402
from evosparse.files import atomic_write_text, check_writable  # noqa: E402

METRICS = ("algebraic_connectivity", "degree_gini", "clustering", "avg_shortest_path")
COLUMNS = ("epoch", "scope", *METRICS, "nodes", "edges", "exact", "sampled_sources")
NETWORK = "network"


def forms_chain(masks: Sequence[torch.Tensor]) -> bool:
    """Whether the masks are 2-D and consecutive ones connect (outputs of one are inputs of the next)."""
    return all(m.dim() == 2 for m in masks) and all(a.shape[0] == b.shape[1] for a, b in zip(masks, masks[1:]))


def recurrent_matrices(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The square hidden-to-hidden masks (``weight_hh``), split per LSTM gate when stacked 4·h × h."""
    found = {}
    for name, mask in masks.items():
        if "weight_hh" not in name or mask.dim() != 2:
            continue
        rows, cols = mask.shape
        if rows == cols:
            found[name] = mask
        elif rows % cols == 0:
            for gate, block in enumerate(mask.split(cols, dim=0)):
                found[f"{name}[gate{gate}]"] = block
    return found


def epoch_metrics(epoch: int, masks: dict[str, torch.Tensor], seed: int = 0) -> list[dict[str, Any]]:
    """One row per analysed scope (the layered network and each recurrent matrix) of one snapshot."""
    rows = []
    ordered = list(masks.values())
    if forms_chain(ordered):
        rows.append({"epoch": epoch, "scope": NETWORK, **graph_metrics(ordered, seed=seed)})
    for name, mask in recurrent_matrices(masks).items():
        rows.append({"epoch": epoch, "scope": name, **matrix_graph_metrics(mask, square_as_recurrent=True, seed=seed)})
    return [{key: row[key] for key in COLUMNS} for row in rows]


def degrees(masks: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Node degrees of each analysed graph of one snapshot."""
    graphs = {}
    ordered = list(masks.values())
    if forms_chain(ordered):
        graphs[NETWORK] = layered_adjacency(ordered)
    for name, mask in recurrent_matrices(masks).items():
        graphs[name] = matrix_adjacency(mask, square_as_recurrent=True)
    return {name: np.asarray(adjacency.sum(axis=1)).ravel() for name, adjacency in graphs.items()}


def analyze_run(run_dir: Path) -> list[dict[str, Any]]:
    """Write ``analysis/graph_metrics.csv``, ``graph_metrics.png`` and ``degrees.png`` for a run."""
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise UsageError(f"{run_dir} has no topology snapshots (a sparse run of evosparse train writes them)")
    out = run_dir / "analysis"
    check_writable(out, "analyze writes to")
    rows: list[dict[str, Any]] = []
    every = [load_snapshot(path) for _, path in snapshots]
    for (epoch, _), masks in zip(snapshots, every):
        rows += epoch_metrics(epoch, masks)
    first, last = every[0], every[-1]
    if not rows:
        raise UsageError(f"{run_dir}: the sparse layers form no layered chain and hold no recurrent matrix")
    _write_csv(out / "graph_metrics.csv", rows)
    _plot_metrics(out / "graph_metrics.png", rows)
    _plot_degrees(out / "degrees.png", degrees(first), degrees(last), snapshots[0][0], snapshots[-1][0])
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _plot_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4), layout="constrained")
    scopes = sorted({row["scope"] for row in rows})
    for axis, metric in zip(axes, METRICS):
        for scope in scopes:
            series = [(row["epoch"], row[metric]) for row in rows if row["scope"] == scope]
            axis.plot(*zip(*series), marker="o", markersize=3, label=scope)
        axis.set(xlabel="epoch", title=metric.replace("_", " "))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    save_png(figure, path)


def _plot_degrees(path: Path, before: dict[str, np.ndarray], after: dict[str, np.ndarray], e0: int, e1: int) -> None:
    figure, axes = plt.subplots(1, len(after), figsize=(5 * len(after), 3.6), layout="constrained", squeeze=False)
    for axis, scope in zip(axes[0], after):
        top = int(max(before[scope].max(initial=0), after[scope].max(initial=0))) + 1
        bins = np.arange(top + 1) - 0.5 if top <= 60 else 40
        axis.hist(before[scope], bins=bins, alpha=0.5, label=f"epoch {e0}")
        axis.hist(after[scope], bins=bins, alpha=0.5, label=f"epoch {e1}")
        axis.set(xlabel="node degree", ylabel="nodes", title=f"degree distribution: {scope}", yscale="log")
        axis.legend()
    save_png(figure, path)
