"""mpmath's global precision is never changed: every extended-precision evaluation uses
``mpmath.workdps`` (issue #7), so a caller's ``mpmath.mp.dps`` is the same after the call.

A static check finds any assignment to ``mp.dps`` / ``mp.prec`` in theory/, numerics/ and
proofs_check/; a dynamic check calls every function of those packages that works in mpmath
with an unusual working precision and checks that it is left as it was.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mpmath
import pytest
import sympy as sp

ROOT = Path(__file__).resolve().parents[1]

#: Files that still set the precision globally, each known and fixed elsewhere: the strict xfail
#: turns into a failure once the assignment is gone, so the entry is removed then (claims.py
#: is split into proofs_check/checks/ on main, where C5 already uses mpmath.workdps).
KNOWN_GLOBAL_SETTERS = {
    "proofs_check/claims.py": "C5's 30-digit closed-form check sets mpmath.mp.dps = 30 (not edited in this branch)",
}


def _global_precision_assignments(path: Path) -> list[str]:
    """Lines of ``path`` that assign (or augment) an attribute ``dps``/``prec`` of ``mp`` or ``*.mp``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    hits = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr in ("dps", "prec"):
                owner = t.value
                if (isinstance(owner, ast.Name) and owner.id == "mp") or (isinstance(owner, ast.Attribute) and owner.attr == "mp"):
                    hits.append(f"{path.name}:{node.lineno}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            args = node.args
            if len(args) >= 2 and isinstance(args[1], ast.Constant) and args[1].value in ("dps", "prec"):
                hits.append(f"{path.name}:{node.lineno}")
    return hits


def _sources() -> list:
    out = []
    for pkg in ("theory", "numerics", "proofs_check"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_GLOBAL_SETTERS[rel])] if rel in KNOWN_GLOBAL_SETTERS else []
            out.append(pytest.param(path, id=rel, marks=marks))
    return out


@pytest.mark.parametrize("path", _sources())
def test_no_global_precision_assignment(path: Path) -> None:
    assert _global_precision_assignments(path) == [], "use `with mpmath.workdps(...)` instead"


def test_the_static_check_sees_assignments(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text("import mpmath\nfrom mpmath import mp\nmpmath.mp.dps = 30\nmp.prec += 10\nsetattr(mpmath.mp, 'dps', 5)\nwith mpmath.workdps(30):\n    pass\n")
    assert _global_precision_assignments(bad) == ["probe.py:3", "probe.py:4", "probe.py:5"]


def test_mpmath_calls_leave_the_precision_unchanged() -> None:
    from numerics.mpref import elbo_mp, elbo_star_mp, log_marginal_mp
    from proofs_check.bridge import mpmath_functions
    from theory.expansions import _vanishes, expand_at, numeric, prediction_functions
    from theory.spec import loads_spec

    m2 = loads_spec('decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\nlatents = [[0.3, -0.5]]\n')
    m1 = loads_spec('decoder = ["z1 + 0.1*z1**3"]\nprior = "gaussian"\n')
    big = sp.Add(*[sp.exp(sp.Rational(k, 7)) * sp.tanh(sp.Rational(k, 3)) for k in range(1, 80)])  # > _EVALF_OPS: the tree evaluator
    with mpmath.workdps(23):
        calls = {
            "numeric (evalf)": lambda: numeric(sp.exp(sp.Rational(3, 10)) + sp.pi),
            "numeric (mpmath tree)": lambda: numeric(big),
            "_vanishes": lambda: _vanishes(sp.log(sp.Rational(6)) - sp.log(2) - sp.log(3)),
            "expand_at + as_floats": lambda: expand_at(m2, m2.points[0]).as_floats(),
            "prediction_functions (mpmath)": lambda: prediction_functions(m2, "mpmath")["a1"](mpmath.mpf("0.3"), mpmath.mpf("-0.5")),
            "mpmath_functions": lambda: [fn([mpmath.mpf("0.3"), mpmath.mpf("0.2")]) for fn in mpmath_functions(m2)],
        }
        f_mp, ell_mp = mpmath_functions(m1)
        x = [0.5 + 0.1 * 0.5**3]
        calls["log_marginal_mp"] = lambda: log_marginal_mp(f_mp, ell_mp, x, 100.0, [0.5], [0.08], dps=20)
        calls["elbo_mp"] = lambda: elbo_mp(f_mp, ell_mp, x, 100.0, [0.5], [0.008], 1, 1, dps=20)
        calls["elbo_star_mp"] = lambda: elbo_star_mp(f_mp, ell_mp, x, 100.0, [0.5], [0.008], 1, 1, dps=20, max_iter=2)
        for name, call in calls.items():
            call()
            assert mpmath.mp.dps == 23, f"{name} changed mpmath.mp.dps to {mpmath.mp.dps}"
