"""Rendering (theory/report.py) and the import hygiene of the theory package."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

from theory.expansions import expand_at
from theory.report import derivation_text, derivations_markdown, expansion_latex, expansion_rows, main, method_markdown
from theory.spec import loads_spec

ROOT = Path(__file__).resolve().parents[2]
TRI = 'name = "triangular"\ndecoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "gaussian"\nlatents = [[0.3, -0.5]]\n'
EMB = 'name = "embedding"\ndecoder = ["z1", "z2", "0.3*z1*z2"]\nprior = "logistic"\nlatents = [[0.3, -0.5], [1.0, 0.2]]\n'


def test_derivation_text_plain_and_latex() -> None:
    m = loads_spec(TRI)
    plain = derivation_text(m)
    assert "Model triangular: n = 2, d = 2" in plain
    assert "log((16*z2**2 + 25)/25)/2" in plain  # c_IMA at a general z0
    assert "At z0 = (3/10, -1/2)" in plain and "-3288/21025" in plain  # a1 there
    assert "s2 equals the paper's refined formula: no" in plain
    assert "internal checks: all passed" in plain
    one = derivation_text(m, point=(1, 2))
    assert "At z0 = (1, 2)" in one and "z2**2" not in one.split("At z0")[1]
    tex = derivation_text(m, latex=True)
    assert r"\begin{aligned}" in tex and r"c_{\mathrm{IMA}}" in tex


def test_one_renderer_for_expansions() -> None:
    """Expansion.latex() and the derivation report render the same rows with the same code."""
    m = loads_spec(EMB)
    e = expand_at(m, m.points[0])
    tex = e.latex()
    assert tex == expansion_latex(e) and tex.startswith("\\begin{align*}") and tex.endswith("\\end{align*}")
    report = derivation_text(m, point=m.points[0], latex=True)
    rows = expansion_rows(e, latex=True)
    assert len(rows) == 2 + 4 * m.d + 6
    for _, sym, val in rows:
        assert f"{sym} &= {val}" in tex and f"{sym} &= {val} \\\\" in report


def test_derivations_markdown_is_generated_and_fast() -> None:
    """The brief's target: the whole derivation of a 2-D model in under 30 s."""
    models = [loads_spec(TRI), loads_spec(EMB)]
    t = time.perf_counter()
    md = derivations_markdown(models)
    elapsed = time.perf_counter() - t
    assert md.startswith("# Derivations (generated)")
    assert "## Method" in md and "### triangular" in md and "### embedding" in md
    assert "NOT verified" not in md and "FAILED" not in md
    assert r"\ell_{1}'(z_{1})" in md  # logistic prior derivatives appear as named atoms
    assert elapsed < 60, elapsed


def test_method_section_mentions_conventions() -> None:
    text = method_markdown()
    assert r"\varepsilon = \gamma^{-2}" in text and "Reduced" in text
    assert r"\frac{3 f''^{2}}{4 f'^{4}}" in text  # generic 1-D gap coefficient


def test_main_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "tri.toml"
    spec.write_text(TRI)
    assert main(["--text", str(spec)]) == 0
    assert "Model triangular" in capsys.readouterr().out


ALLOWED_THIRD_PARTY = {"sympy", "mpmath", "numpy"}


def test_theory_imports_only_sympy_mpmath_numpy_stdlib() -> None:
    for path in sorted((ROOT / "theory").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import inside theory/
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ok = top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names or top == "tomli"
                assert ok, f"{path.name} imports {name}"


def test_importing_theory_loads_no_torch_or_siblings() -> None:
    code = (
        "import sys, theory.spec, theory.exact, theory.moments, theory.expansions, theory.report; "
        "bad = [m for m in ('torch', 'numerics', 'proofs_check', 'scipy') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
