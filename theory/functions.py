"""The one table of elementary functions: what a spec may call, and what each becomes in every backend.

A spec expression (see :mod:`theory.spec`) is parsed into a sympy tree; that tree is evaluated
by several backends: torch (the numeric decoder, :mod:`proofs_check.bridge`), mpmath (the
extended-precision reference path and the evaluation of derived coefficients in
:mod:`theory.expansions`), numpy (lambdified predictions) and, later, python-flint's ``arb``
balls (a certified backend).  Every one of them is derived from :data:`FUNCTIONS` below, so a
function is added, renamed or removed in exactly one place.

Each :class:`ElementaryFunction` row holds

* ``name``: the name a spec calls (``"abs"``, ``"sigmoid"``) and ``arity``;
* ``build``: the sympy constructor the parser applies to the parsed arguments;
* ``sympy_class``: the class of the node that ``build`` leaves in a sympy tree (``sp.Abs`` for
  ``abs``).  ``None`` for a *composite* (``sigmoid`` = 1/(1 + exp(−a)), ``softplus``,
  ``log1p``), which sympy writes with other rows' nodes, so no backend ever sees it, and for
  ``sqrt``, which sympy writes as ``Pow(a, 1/2)`` (``node_name`` is then "sqrt", the name
  sympy's code printers use for that power);
* the *names* of the counterparts: ``torch`` (attribute of the ``torch`` module), ``mpmath``,
  ``numpy``, ``math`` (the standard library, used for numpy where numpy has no such
  function, e.g. erf), and ``python_flint_arb`` (the method of python-flint's ``arb`` type).
  Names are plain strings, so this module imports neither torch nor python-flint; ``None``
  where a backend has no counterpart.
* ``spec``: whether a spec may call it.  ``loggamma`` (the Student-t normalizer) and ``sign``
  (the derivative of ``abs``, which appears in derived coefficients) are produced by the
  suite itself and are not callable from a spec (sympy evaluates ``loggamma`` of a rational
  exactly, which never finishes for large half-integers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import mpmath
import numpy as np
import sympy as sp

__all__ = [
    "ElementaryFunction",
    "FUNCTIONS",
    "SPEC_FUNCTIONS",
    "by_node",
    "backend_functions",
    "lambdify_namespace",
    "unsupported_functions",
    "lambdify",
]


@dataclass(frozen=True)
class ElementaryFunction:
    """One row of the function table (see the module docstring)."""

    name: str
    build: Callable[..., sp.Expr]
    arity: int
    sympy_class: type | None
    torch: str | None
    mpmath: str | None
    numpy: str | None
    math: str | None
    python_flint_arb: str | None
    spec: bool = True

    @property
    def node_name(self) -> str | None:
        """The name of this function's node in sympy trees and in lambdified code (None: composite)."""
        if self.sympy_class is not None:
            return self.sympy_class.__name__
        return "sqrt" if self.name == "sqrt" else None

    @property
    def composite(self) -> bool:
        """True when sympy writes this function with other rows' nodes (no backend sees it)."""
        return self.node_name is None


def _row(name: str, build: Callable[..., sp.Expr], cls: type | None, torch: str | None, mp: str | None,
         np_: str | None, math_: str | None, arb: str | None, spec: bool = True) -> ElementaryFunction:
    return ElementaryFunction(name, build, 1, cls, torch, mp, np_, math_, arb, spec)


#: The table.  Columns: spec name, sympy constructor, sympy node class, then the names in
#: torch, mpmath, numpy, math and python-flint's arb.
FUNCTIONS: tuple[ElementaryFunction, ...] = (
    _row("sin", sp.sin, sp.sin, "sin", "sin", "sin", "sin", "sin"),
    _row("cos", sp.cos, sp.cos, "cos", "cos", "cos", "cos", "cos"),
    _row("tan", sp.tan, sp.tan, "tan", "tan", "tan", "tan", "tan"),
    _row("exp", sp.exp, sp.exp, "exp", "exp", "exp", "exp", "exp"),
    _row("log", sp.log, sp.log, "log", "log", "log", "log", "log"),
    _row("sqrt", sp.sqrt, None, "sqrt", "sqrt", "sqrt", "sqrt", "sqrt"),
    _row("tanh", sp.tanh, sp.tanh, "tanh", "tanh", "tanh", "tanh", "tanh"),
    _row("sinh", sp.sinh, sp.sinh, "sinh", "sinh", "sinh", "sinh", "sinh"),
    _row("cosh", sp.cosh, sp.cosh, "cosh", "cosh", "cosh", "cosh", "cosh"),
    _row("atan", sp.atan, sp.atan, "atan", "atan", "arctan", "atan", "atan"),
    _row("asinh", sp.asinh, sp.asinh, "asinh", "asinh", "arcsinh", "asinh", "asinh"),
    _row("erf", sp.erf, sp.erf, "erf", "erf", None, "erf", "erf"),
    _row("abs", sp.Abs, sp.Abs, "abs", "fabs", "abs", "fabs", "__abs__"),
    _row("sigmoid", lambda a: 1 / (1 + sp.exp(-a)), None, None, None, None, None, None),
    _row("softplus", lambda a: sp.log(1 + sp.exp(a)), None, None, None, None, None, None),
    _row("log1p", lambda a: sp.log(1 + a), None, None, None, None, None, None),
    # produced by the suite, not callable from a spec
    _row("loggamma", sp.loggamma, sp.loggamma, "lgamma", "loggamma", None, "lgamma", "lgamma", spec=False),
    _row("sign", sp.sign, sp.sign, "sign", "sign", "sign", None, "sgn", spec=False),
)

#: The functions a spec may call, by name (the parser's whitelist).
SPEC_FUNCTIONS: dict[str, ElementaryFunction] = {f.name: f for f in FUNCTIONS if f.spec}

Backend = Literal["torch", "mpmath", "numpy", "math", "python_flint_arb"]


def by_node() -> dict[str, ElementaryFunction]:
    """Rows by the name of their sympy node (``"Abs"``, ``"loggamma"``, ``"sqrt"``); composites excluded."""
    return {f.node_name: f for f in FUNCTIONS if f.node_name is not None}


def backend_functions(backend: Backend, module: Any) -> dict[type, Callable[..., Any]]:
    """{sympy node class: ``getattr(module, name)``} for every row with a node class and a name in
    ``backend`` (``module`` is that backend's module, e.g. ``torch`` or ``mpmath``).  ``sqrt``
    (a power node) is not included: look it up with :func:`by_node` ``()["sqrt"]``."""
    out: dict[type, Callable[..., Any]] = {}
    for f in FUNCTIONS:
        name = getattr(f, backend)
        if f.sympy_class is not None and name is not None:
            out[f.sympy_class] = getattr(module, name)
    return out


def _numpy_from_math(fn: Callable[[float], float]) -> Callable[..., Any]:
    """A float64 numpy ufunc-like wrapper of a scalar :mod:`math` function (numpy has no erf/lgamma)."""
    vec = np.vectorize(fn, otypes=[np.float64])

    def wrapped(x: Any) -> Any:
        out = vec(x)
        return out[()] if np.ndim(out) == 0 else out

    wrapped.__name__ = fn.__name__
    return wrapped


def lambdify_namespace(backend: Literal["mpmath", "numpy"]) -> dict[str, Callable[..., Any]]:
    """The explicit module dict for ``sympy.lambdify`` with ``backend``: {node name: function}.

    numpy rows without a numpy name use the :mod:`math` function, vectorized."""
    if backend not in ("mpmath", "numpy"):
        raise ValueError(f"lambdify backend must be 'mpmath' or 'numpy', got {backend!r}")
    ns: dict[str, Callable[..., Any]] = {}
    for node, f in by_node().items():
        if backend == "mpmath":
            if f.mpmath is not None:
                ns[node] = getattr(mpmath, f.mpmath)
        elif f.numpy is not None:
            ns[node] = getattr(np, f.numpy)
        elif f.math is not None:
            ns[node] = _numpy_from_math(getattr(math, f.math))
    return ns


def unsupported_functions(exprs: Iterable[sp.Basic]) -> set[str]:
    """Names of the function nodes in ``exprs`` that the table does not hold (empty: all supported)."""
    known = {f.sympy_class for f in FUNCTIONS if f.sympy_class is not None}
    bad: set[str] = set()
    for e in exprs:
        for node in sp.sympify(e).atoms(sp.Function):
            if type(node) not in known:
                bad.add(type(node).__name__)
    return bad


def lambdify(args: Sequence[sp.Symbol], expr: Any, backend: Literal["mpmath", "numpy"]) -> Callable[..., Any]:
    """``sympy.lambdify`` with the table's functions for ``backend`` (then the backend's own
    namespace for arithmetic, constants and rationals).  Refuses, naming them, function nodes
    the table does not hold, instead of failing with a NameError when the result is called."""
    items = expr if isinstance(expr, (list, tuple)) else [expr]
    bad = unsupported_functions(items)
    if bad:
        raise ValueError(f"cannot evaluate function(s) {', '.join(sorted(bad))} with {backend}: not in theory.functions.FUNCTIONS")
    return sp.lambdify(args, expr, modules=[lambdify_namespace(backend), backend])
