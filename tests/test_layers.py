"""The direction of imports between the three packages (docs/theory.md's house plan):

- theory/ is sympy only: never torch, numerics or proofs_check;
- numerics/ is numpy/scipy/torch: never sympy, theory or proofs_check;
- proofs_check/ joins the two;
- tests/numerics import only numerics, tests/theory only theory.

Every import statement of every module is read (also imports inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "theory": {"torch", "numerics", "proofs_check"},
    "numerics": {"sympy", "theory", "proofs_check"},
    "tests/theory": {"numerics", "proofs_check", "torch"},
    "tests/numerics": {"theory", "proofs_check", "sympy"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_import_direction(folder: str) -> None:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        hit = _imports(path) & FORBIDDEN[folder]
        if hit:
            bad.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(hit))}")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_the_check_can_fail(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("def f():\n    import torch.nn\n    from numerics.models import Model\n")
    assert {"torch", "numerics"} <= _imports(p)
