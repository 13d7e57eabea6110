"""qcc: a quantization compiler for neural networks."""

from qcc.errors import QccError
from qcc.ir import Graph, Node, TensorType, Value

__version__ = "0.1.0"
__all__ = ["Graph", "Node", "Value", "TensorType", "QccError", "__version__"]
