"""`qcc compile --explain` names, per node, what each target made of it and why."""

from __future__ import annotations

import pytest

from qcc.cli import main


def _explained(capsys, target: str) -> dict[str, str]:
    out = capsys.readouterr().out
    rows = out[out.index(f"{target} lowering"):].splitlines()[2:]
    return {line.split()[0]: line for line in rows if line.strip()}


@pytest.mark.parametrize("target, conv_text, other_text", [
    ("cim", "crossbar(s): 144x16 matrix", "digital unit"),
    ("cpu", "int8 conv (int32 accumulation)", "fused TIR in model.so"),
])
def test_explain_tells_where_each_layer_went(tmp_path, capsys, target, conv_text, other_text):
    assert main(["compile", "--target", target, "-o", str(tmp_path / "out"), "-q", "--explain"]) == 0
    rows = _explained(capsys, target)
    assert len(rows) == 13
    assert conv_text in rows["/conv2/Conv"]
    assert other_text in rows["/pool/MaxPool"]
