"""Time the AWS graph metrics (evosparse.analysis) on a small MLP, a large MLP and a recurrent matrix.

Usage: python bench/graph_metrics.py [--repeats 3] [--path-sources 256] [--skip-large]

Cases (random masks, seed 0):
  mlp        784-300-100-10 at 5% density: 1,194 nodes, exact values (dense eigensolver, all sources)
  large      10000-10000-10000-10000 at 1%: 40,000 nodes, 3M edges, sparse eigensolver, sampled paths
  recurrent  one 1500x1500 hidden-to-hidden matrix at 10% (LSTM weight_hh block): triangles counted
Prints the best wall time over the repeats (one run for the large case), the graph size and the values.
"""

from __future__ import annotations

import argparse
import itertools

import torch
from timing import best_time

from evosparse.analysis import graph_metrics, matrix_graph_metrics


def random_masks(widths: tuple[int, ...], density: float, generator: torch.Generator) -> list[torch.Tensor]:
    """One random (n_out, n_in) boolean mask per layer, nn.Linear.weight orientation."""
    pairs = itertools.pairwise(widths)
    return [torch.rand(n_out, n_in, generator=generator) < density for n_in, n_out in pairs]


def report(name: str, seconds: float, metrics: dict) -> None:
    """One line per case: time, graph size, how the values were obtained, and the values."""
    print(
        f"{name:<10} {seconds:8.3f} s  nodes={metrics['nodes']:,} edges={metrics['edges']:,} "
        f"exact={metrics['exact']} sampled_sources={metrics['sampled_sources']}  "
        f"lambda2={metrics['algebraic_connectivity']:.6g} gini={metrics['degree_gini']:.4f} "
        f"clustering={metrics['clustering']:.4f} avg_path={metrics['avg_shortest_path']:.4f}"
    )


def main() -> None:
    """Parse options, build each case, time graph_metrics / matrix_graph_metrics, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--path-sources", type=int, default=256)
    parser.add_argument("--skip-large", action="store_true", help="leave out the 40,000-node case")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)

    mlp = random_masks((784, 300, 100, 10), 0.05, generator)
    report("mlp", *best_time(args.repeats, lambda: graph_metrics(mlp, path_sources=args.path_sources)))

    recurrent = torch.rand(1500, 1500, generator=generator) < 0.1
    seconds, metrics = best_time(
        args.repeats,
        lambda: matrix_graph_metrics(recurrent, square_as_recurrent=True, path_sources=args.path_sources),
    )
    report("recurrent", seconds, metrics)

    if not args.skip_large:
        large = random_masks((10_000, 10_000, 10_000, 10_000), 0.01, generator)
        report("large", *best_time(1, lambda: graph_metrics(large, path_sources=args.path_sources)))


if __name__ == "__main__":
    main()
