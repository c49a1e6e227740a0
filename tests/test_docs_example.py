"""Runs every ```python block of docs/writing-a-pass.md, in order, in one namespace."""

from __future__ import annotations

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "writing-a-pass.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_writing_a_pass_doc_runs(capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    # the promise of the doc: a whole fusion rule, registered as a pass, in <= 20 lines
    rule_lines = [line for line in blocks[0].splitlines() if line.strip()]
    assert len(rule_lines) <= 20, f"the fusion-rule example has {len(rule_lines)} lines"
    namespace: dict = {"__name__": "docs_writing_a_pass"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{DOC.name}[python block {i + 1}]", "exec")
        exec(code, namespace)
    printed = capsys.readouterr().out
    assert "silu(%x)" in printed and "first bad rewrite" in printed
