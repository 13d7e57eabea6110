"""Public hypothesis strategies for testing passes and targets against the reference interpreter.

- `qcc.testing.tensors`: shapes and finite float arrays;
- `qcc.testing.ops`: a valid case (input arrays + attributes) for every registered op (`OP_CASES`);
- `qcc.testing.graphs`: small random graphs with every quantization scheme, and inputs for them.
"""

from qcc.testing.graphs import (
    ALL_SCHEMES,
    GraphOptions,
    activation_annotations,
    graph_inputs,
    graphs,
    weight_annotations,
)
from qcc.testing.ops import OP_CASES, OpCase
from qcc.testing.tensors import arrays, shapes

__all__ = ["ALL_SCHEMES", "GraphOptions", "OP_CASES", "OpCase", "activation_annotations", "arrays",
           "graph_inputs", "graphs", "shapes", "weight_annotations"]
