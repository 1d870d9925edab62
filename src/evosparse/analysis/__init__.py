"""Analysis of sparse networks: graph metrics of their connectivity (Adaptive Weight Sparsity, Section 5.2)."""

from evosparse.analysis.graph import (
    degree_gini,
    graph_metrics,
    layered_adjacency,
    matrix_adjacency,
    matrix_graph_metrics,
)

__all__ = [
    "degree_gini",
    "graph_metrics",
    "layered_adjacency",
    "matrix_adjacency",
    "matrix_graph_metrics",
]
