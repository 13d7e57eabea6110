"""The ONNX frontend: import ONNX / QDQ / QONNX models as qcc Graphs and export Graphs back.

`import_model(path_or_proto)` reads a model (external data confined to its folder, opsets 11 to 21),
folds the constant and shape computations exporters emit, and turns quantizer nodes into
annotations. `export_model(graph, opset=17, format="qdq"|"qonnx")` writes a model onnxruntime runs
(QDQ) or QONNX tools read; `save_model` writes it to a file atomically.
"""

from qcc.frontend.onnx.exporter import export_model, save_model
from qcc.frontend.onnx.importer import import_model, supported_ops
from qcc.frontend.onnx.loading import OPSET_MAX, OPSET_MIN, load_proto

__all__ = ["import_model", "export_model", "save_model", "load_proto", "supported_ops", "OPSET_MIN",
           "OPSET_MAX"]
