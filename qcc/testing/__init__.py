"""Public hypothesis strategies for testing passes and targets against the reference interpreter."""

from qcc.testing.graphs import (
    ALL_SCHEMES,
    GraphOptions,
    activation_annotations,
    graph_inputs,
    graphs,
    weight_annotations,
)

__all__ = ["ALL_SCHEMES", "GraphOptions", "activation_annotations", "graph_inputs", "graphs",
           "weight_annotations"]
