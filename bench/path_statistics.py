"""Time path_statistics and a sampled path quantile on a large sparse MLP (target: under 2 s).

Usage: python bench/path_statistics.py [--density 0.1] [--samples 100000] [--repeats 3]
                                      [--layout dense|csr] [--threads N]

Builds the normalised-weight matrices A_k (input x output) of a 3072-2000-2000-2000-2000-10 network
with random masks at the given density and random magnitudes, then prints the best wall time of
each step over the repeats and the number of connections.
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import torch
from timing import best_time

from evosparse.criteria.path_weight import path_quantile, path_statistics

WIDTHS = (3072, 2000, 2000, 2000, 2000, 10)


def random_layers(density: float, layout: str, generator: torch.Generator) -> list[torch.Tensor]:
    """Random masked magnitudes, one (n_in x n_out) float32 matrix per layer (masked backend)."""
    layers = []
    for n_in, n_out in itertools.pairwise(WIDTHS):
        mask = torch.rand(n_in, n_out, generator=generator) < density
        matrix = torch.rand(n_in, n_out, generator=generator) * mask
        layers.append(matrix.to_sparse_csr() if layout == "csr" else matrix)
    return layers


def main() -> None:
    """Parse options, build the network, time both steps, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layout", choices=("dense", "csr"), default="dense")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

    generator = torch.Generator().manual_seed(0)
    layers = random_layers(args.density, args.layout, generator)
    connections = sum(int((m.values() if m.layout == torch.sparse_csr else m).count_nonzero()) for m in layers)
    stats_time, stats = best_time(args.repeats, lambda: path_statistics(layers))
    quantile_time, quantile = best_time(
        args.repeats, lambda: path_quantile(layers, 0.1, samples=args.samples, generator=generator)
    )
    print(
        f"network {'-'.join(map(str, WIDTHS))}, density {args.density}, layout {args.layout}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"connections          {connections}")
    print(f"paths                {stats.total_paths:.4g}")
    print(f"path_statistics      {stats_time:.3f} s")
    print(f"path_quantile ({args.samples} samples) {quantile_time:.3f} s  (q=0.1 -> {quantile:.4g})")
    print(f"total                {stats_time + quantile_time:.3f} s  (target < 2 s)")


if __name__ == "__main__":
    main()
