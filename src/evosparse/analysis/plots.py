"""Plots of a run: accuracy and loss per epoch."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from evosparse.files import atomic_write_bytes  # noqa: E402
from evosparse.metrics import ACCURACY, Metric  # noqa: E402


def save_png(figure: Figure, path: Path) -> None:
    """Write ``figure`` to ``path`` as a 100-dpi PNG, atomically (no half-written image), and release it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def plot_run_curves(path: Path, epochs: Sequence[dict], title: str, metric: Metric) -> None:
    """Write a two-panel PNG: the test metric (accuracy, or a VAE's −ELBO), and train/test loss, per epoch."""
    numbers = [e["epoch"] for e in epochs]
    figure, (acc_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    acc_axis.plot(numbers, [e["test_acc"] for e in epochs], marker="o", markersize=3)
    acc_axis.set(xlabel="epoch", ylabel=f"test {metric.label}", title=title)
    loss_axis.plot(numbers, [e["train_loss"] for e in epochs], label="train")
    loss_axis.plot(numbers, [e["test_loss"] for e in epochs], label="test")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy" if metric is ACCURACY else metric.label, title="loss")
    loss_axis.legend()
    for axis in (acc_axis, loss_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_png(figure, path)
