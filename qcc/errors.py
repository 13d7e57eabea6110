"""Error types. A `QccError` is the user's to fix (CLI exit 2); anything else is our bug (exit 1)."""

from __future__ import annotations

__all__ = [
    "QccError",
    "ParseError",
    "UnsupportedOpError",
    "VerifyError",
    "ShapeError",
    "PassError",
    "LoweringError",
    "ModelImportError",
    "ModelExportError",
]


class QccError(Exception):
    """An error caused by the input or the options; its message is one clear line for the user.

    Control characters in the message (e.g. a newline inside a quoted name taken from the input) are
    shown escaped, so the message stays one line whatever the input holds.
    """

    def __init__(self, *args):
        super().__init__(*(_one_line(a) if isinstance(a, str) else a for a in args))


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


class ParseError(QccError):
    """Malformed text input, located by line and column (1-based)."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None,
                 source: str | None = None):
        self.reason = message
        self.line = line
        self.column = column
        self.source = source
        where = source or "<input>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")


class UnsupportedOpError(QccError):
    """An op type qcc has no definition for; names the op, the node and what is supported."""

    def __init__(self, op_type: str, node_name: str, supported: list[str]):
        self.op_type = op_type
        self.node_name = node_name
        super().__init__(
            f"unsupported op '{op_type}' at node '{node_name}'; supported ops: {', '.join(sorted(supported))}"
        )


class VerifyError(QccError):
    """The graph breaks an IR invariant (structure, types, shapes or annotations)."""


class ShapeError(VerifyError):
    """Shapes or dtypes that do not fit an op, or inputs that do not fit the graph."""


class ModelImportError(QccError):
    """A model file that cannot be imported (malformed, unsafe external data, bad opset)."""


class ModelExportError(QccError):
    """A graph that cannot be written in the requested model format (op, annotation or opset)."""


class PassError(QccError):
    """A pass failed; names the pass, the node and the passes that ran before it."""

    def __init__(self, pass_name: str, reason: str, *, node: str | None = None,
                 ran_before: tuple[str, ...] = ()):
        self.pass_name = pass_name
        self.reason = reason
        self.node = node
        self.ran_before = tuple(ran_before)
        where = f" at node '{node}'" if node else ""
        after = f" (after {', '.join(ran_before)})" if ran_before else " (first pass)"
        super().__init__(f"pass '{pass_name}' failed{where}: {reason}{after}")


class LoweringError(QccError):
    """A node a target cannot lower: names the target, the node, the reason and what would make it work.

    `remedy` is the user's next step (a supported bit-width, a config line, another target); every
    target refusal carries one, so the message is actionable without reading qcc's source.
    """

    def __init__(self, target: str, node: str, op: str, reason: str, remedy: str):
        self.target = target
        self.node = node
        self.op = op
        self.reason = reason
        self.remedy = remedy
        super().__init__(f"lowering to target '{target}' failed at {op} '{node}': {reason}; {remedy}")
