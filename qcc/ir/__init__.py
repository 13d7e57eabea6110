"""The quantization-aware graph IR."""

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import SCHEMES, Bipolar, Codebook, QuantSpec, Region, Thresholds, Uniform
from qcc.ir.types import DTYPES, TensorType

__all__ = ["Graph", "Node", "Value", "TensorType", "DTYPES", "QuantSpec", "Uniform", "Codebook",
           "Thresholds", "Bipolar", "Region", "SCHEMES"]
