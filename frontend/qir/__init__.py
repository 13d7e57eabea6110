"""qcc's text IR (.qir): a canonical, diffable form of a Graph, with weights in a side .npz.

Why: every pass can be tested and debugged from text alone, and a saved graph round-trips exactly
(`print_graph(parse_graph(print_graph(g), w)) == print_graph(g)`).

Format (version 1)::

    qir 1
    graph "digits_cnn" (%input: f32[N,1,8,8]) -> (%logits) {
      %c0: f32[16,1,3,3] quant uniform{bits = 4, scale = [0.1, 0.2], axis = 0} = const "conv1.weight"
      %c1: f32[16] = const "conv1.bias"
      %0: f32[N,16,8,8] = Conv "/conv1/Conv" (%input, %c0, %c1) {auto_pad = "NOTSET", group = 1, ...}
      %1: f32[N,16,8,8] quant uniform{bits = 4, signed = false} crop region{top = 1} = Relu "/relu" (%0)
      %a: f32[2], %b: f32[2] = SomeMultiOutputOp "name" (%x, _)
      ...
    }
    attributes {
      sensitivity = {"/conv1/Conv" = {4 = 0.91, 8 = 0.99}}
    }

- The header names the graph, its inputs (with types and annotations) and its outputs.
- Values are `%name`, or `%"any name"` (JSON string) when the name is not [A-Za-z0-9_]+. Graph
  inputs and outputs keep their names; constants are renumbered %c0, %c1, ... in order of first use
  and other values %0, %1, ... in definition order (skipping names taken by inputs and outputs).
  When parsing, a constant's value is named by its handle and other values by their label.
- `= const "<handle>"` defines a constant whose array is stored under <handle> (its value name) in
  the .npz next to the .qir file; weights never appear in the text.
- `= Op "node name" (operands) {attributes}` is the generic form of every op: the node name is a
  string (layer keys users rely on), `_` marks an absent optional input, several results are
  separated by commas, attributes (all of them, defaults filled in) are sorted by name.
- Types are `<dtype>[dims]` with the short dtype names of qcc.ir.types.DTYPES; a symbolic dim is a
  name (`N`); a scalar is `f32[]`.
- Annotations follow the type: `quant <scheme>{field = value, ...}` (uniform, codebook,
  thresholds, bipolar; fields as in qcc.ir.quant.spec_to_dict, fields at their default left out)
  and `crop region{top = .., bottom = .., left = .., right = ..}`.
- Attribute values: integers, floats (Python repr, so exact; `inf`, `-inf`, `nan`), strings (JSON
  syntax and escapes), `true`/`false`, `none`, lists `[...]` and dictionaries `{key = value}` whose
  keys are names, strings or integers (sorted: integers first, then strings).
- An optional `attributes {...}` block after the graph holds the graph-level attributes.
- `#` starts a comment that runs to the end of the line.

Errors are qcc.errors.ParseError with 1-based line and column; an unknown op type raises
`UnknownOpError`, which is both an UnsupportedOpError and a ParseError.
"""

from qcc.frontend.qir.parser import VERSION, UnknownOpError, declared_constants, load, parse_graph
from qcc.frontend.qir.printer import format_attr, print_graph, save

__all__ = ["VERSION", "UnknownOpError", "print_graph", "parse_graph", "save", "load", "format_attr",
           "declared_constants"]
