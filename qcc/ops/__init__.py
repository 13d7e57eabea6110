"""Op definitions. Importing this package registers every op."""

from qcc.ops import activation, elementwise, nn, pool, quantize, shape  # noqa: F401  (registers ops)
from qcc.ops.registry import REQUIRED, AttrSpec, OpDef, all_ops, get_op, has_op, register

__all__ = ["AttrSpec", "OpDef", "REQUIRED", "all_ops", "get_op", "has_op", "register"]
