"""Safe parsing of TOML model specs into symbolic models (docs/theory.md, "Model and notation").

A spec is *data, never code*.  ``sympify`` evaluates strings with ``eval``, so no user string
ever reaches it: every expression is parsed with :mod:`ast`, checked node by node against a
whitelist (numbers, the latent symbols, arithmetic, a fixed set of elementary functions), and
the sympy expression is built from the checked tree by this module.  Decimal literals become
exact rationals (``0.4`` -> ``2/5``) so that derivations in :mod:`theory.expansions` are exact
symbolic algebra with numbers substituted only at the end.

Every resource a spec can ask for is bounded by a hard limit (the ``MAX_*`` constants below,
listed in docs/spec.md, "Limits"), checked *before* the work it bounds: the size of the file,
of each expression (characters, operators, nesting depth), the length of number literals, the
growth of nested powers, the number of latents, outputs, points and decoder precisions, and the
range of γ² and of the prior parameters.  Each refusal is a :class:`SpecError` with one line
that names the field (and, for a file, starts with its path) and never echoes more than
:data:`MAX_ECHO` characters of the user's text.

Spec format (see docs/spec.md)::

    name = "my model"                      # optional
    decoder = ["z1 + 0.4*z2**2", "z2"]     # n expressions in z1..zd
    prior = "logistic"                     # "gaussian", "gaussian(0, 2)", "logistic(0, 1)",
                                           # "student_t(5)", "laplace(0, 1)",
                                           # {logpdf = "-z**2/2"}, or a list
                                           # of those, one per latent coordinate
    gamma2 = [1.0, 10.0, 100.0, 1e4]       # decoder precisions gamma^2 in [1e-8, 1e12]
    latents = [[0.3, 1.1], [-0.8, -0.5]]   # points z0; evaluated at x = f(z0)
"""

from __future__ import annotations

import ast
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import mpmath
import numpy as np
import sympy as sp

from .functions import SPEC_FUNCTIONS, lambdify

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]


class SpecError(ValueError):
    """A model spec is malformed; the message names the offending field and the problem."""


# ----------------------------------------------------------------------------------------
# Hard limits (docs/spec.md, "Limits")
# ----------------------------------------------------------------------------------------

#: A spec file is read up to this many bytes; a larger one (or /dev/zero) is refused.
MAX_SPEC_BYTES = 1 << 20
#: Characters of one expression.
MAX_EXPR_CHARS = 20_000
#: Operators and opening brackets of one expression (an upper bound on the depth of Python's
#: syntax tree, so that the parser itself never recurses too deeply: a sum of 1000 terms is
#: 999 operators).
MAX_EXPR_OPERATORS = 2_000
#: Nesting depth of one expression, with sums, products and runs of signs counted as one level.
MAX_EXPR_DEPTH = 100
#: Numeric exponents beyond this are refused (exact powers like 9**9**9 would never finish),
#: and so is exponent growth: the product of the numeric exponents along a chain of nested
#: powers, e.g. ((z1**1000)**1000)**1000.
MAX_EXPONENT = 1000
#: Characters of one number literal (float64 needs 17 significant digits).
MAX_LITERAL_CHARS = 100
#: Largest magnitude of a number anywhere in an expression (float64 overflows at 1.8e308).
MAX_MAGNITUDE = 1e300
#: Latent dimension d and number of decoder outputs n.
MAX_LATENTS = 6
MAX_OUTPUTS = 64
#: Latent points, decoder precisions, and (point, γ²) evaluations of one spec.
MAX_POINTS = 1000
MAX_GAMMA2 = 100
MAX_EVALUATIONS = 10_000
#: |coordinate| of a latent point.
MAX_COORDINATE = 1e6
#: The γ² range in which float64 honours the stated accuracy (docs/spec.md, "Limits"): below
#: GAMMA2_MIN the scaled Hessians of the estimators lose all precision (γ² = 1e-300 ends in a
#: failed eigendecomposition); above GAMMA2_MAX the rounding of x − f(z) (relative 1e-16,
#: amplified by γ) exceeds the stated stability.
GAMMA2_MIN = 1e-8
GAMMA2_MAX = 1e12
#: Location parameters of the named priors: |m| <= MAX_PRIOR_LOCATION.
MAX_PRIOR_LOCATION = 1e6
#: Scale parameters (variance, scale b) of the named priors lie in this range.
PRIOR_SCALE_RANGE = (1e-6, 1e6)
#: Degrees of freedom ν of the Student-t prior.
STUDENT_T_NU_RANGE = (1e-2, 1e6)
#: Characters of the user's text that a message may echo.
MAX_ECHO = 200


def clip(text: Any, limit: int = MAX_ECHO) -> str:
    """``repr`` of the user's ``text``, shortened to about ``limit`` characters (one line)."""
    s = text if isinstance(text, str) else repr(text)
    if len(s) <= limit:
        return repr(s) if isinstance(text, str) else s
    head = repr(s[:limit]) if isinstance(text, str) else s[:limit]
    return f"{head}… ({len(s)} characters)"


#: Elementary functions a spec may call, by name: the parser's whitelist, derived from the one
#: function table :data:`theory.functions.FUNCTIONS` (which also names each function's torch,
#: mpmath, numpy and arb counterparts).
ALLOWED_FUNCTIONS: dict[str, Callable[..., sp.Expr]] = {name: f.build for name, f in SPEC_FUNCTIONS.items()}
_ARITY: dict[str, int] = {name: f.arity for name, f in SPEC_FUNCTIONS.items()}

#: Named constants a spec may use.
ALLOWED_CONSTANTS: dict[str, sp.Expr] = {"pi": sp.pi, "E": sp.E}

#: Sympy node classes that are not differentiable where their argument vanishes (kinks).
KINK_NODES: tuple[type, ...] = (sp.Abs, sp.sign)

def exact_number(value: float | int | str) -> sp.Rational:
    """Turn a spec number into an exact rational: ``0.4`` -> ``2/5`` (via its shortest repr)."""
    if isinstance(value, bool):
        raise SpecError(f"expected a number, got the boolean {value!r}")
    if isinstance(value, int):
        if abs(value) > MAX_MAGNITUDE:
            raise SpecError(f"number {clip(str(value), 40)} is larger than {MAX_MAGNITUDE:g}")
        return sp.Integer(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"expected a finite number, got {value!r}")
        return sp.Rational(repr(value))
    if isinstance(value, str):
        try:
            return exact_number(float(value))
        except ValueError:
            raise SpecError(f"expected a number, got the string {clip(value)}") from None
    raise SpecError(f"expected a number, got {type(value).__name__} {clip(value)}")


# ----------------------------------------------------------------------------------------
# Expressions
# ----------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"(?P<space>\s+)"
    r"|(?P<name>[^\W\d]\w*)"
    r"|(?P<num>(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?[\d_]+)?[jJ]?)"
    r"|(?P<close>[)\]},])"
    r"|(?P<op>\*\*|//|<<|>>|[<>=!]=|.)",
    re.S,
)


def _scan(text: str, where: str) -> None:
    """Lexical limits, checked before Python's parser sees ``text``: literal length and the
    operator count (an upper bound on the depth of the syntax tree: each operator or opening
    bracket adds at most one level)."""
    ops = 0
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "num":
            if len(m.group()) > MAX_LITERAL_CHARS:
                raise SpecError(f"{where}: number literal {clip(m.group(), 40)} has {len(m.group())} characters "
                                f"(limit {MAX_LITERAL_CHARS})")
        elif kind == "op":
            if m.group() == "#":
                raise SpecError(f"{where}: '#' (a comment) is not allowed in an expression, in {clip(text)}")
            ops += 1
    if ops > MAX_EXPR_OPERATORS:
        raise SpecError(f"{where}: expression has {ops} operators and brackets (limit {MAX_EXPR_OPERATORS})")


def _parse_tree(text: Any, where: str) -> ast.Expression:
    """Python's syntax tree of ``text`` after the size checks; nothing is evaluated."""
    if not isinstance(text, str):
        raise SpecError(f"{where}: expected a string expression, got {type(text).__name__} {clip(text)}")
    if len(text) > MAX_EXPR_CHARS:
        raise SpecError(f"{where}: expression has {len(text)} characters (limit {MAX_EXPR_CHARS})")
    if "__" in text:
        raise SpecError(f"{where}: dunder names are not allowed in expressions: {clip(text)}")
    if "\x00" in text:
        raise SpecError(f"{where}: NUL character in expression {clip(text)}")
    _scan(text, where)
    try:
        return ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise SpecError(f"{where}: cannot parse {clip(text)}: {exc.msg}") from None
    except (RecursionError, MemoryError):  # the parser's own stack limits
        raise SpecError(f"{where}: expression is nested too deeply to parse (limit: depth {MAX_EXPR_DEPTH})") from None
    except ValueError as exc:
        raise SpecError(f"{where}: cannot parse {clip(text)}: {exc}") from None


_SUMS = (ast.Add, ast.Sub)
_PRODUCTS = (ast.Mult, ast.Div)
_SIGNS = (ast.USub, ast.UAdd)


def _same_chain(parent: ast.AST, child: ast.AST) -> bool:
    """Whether ``child`` continues ``parent``'s chain (flattened by the builder: no extra level)."""
    if isinstance(parent, ast.BinOp) and isinstance(child, ast.BinOp) and child is parent.left:
        return (isinstance(parent.op, _SUMS) and isinstance(child.op, _SUMS)) or (
            isinstance(parent.op, _PRODUCTS) and isinstance(child.op, _PRODUCTS))
    return (isinstance(parent, ast.UnaryOp) and isinstance(parent.op, _SIGNS) and isinstance(child, ast.UnaryOp)
            and isinstance(child.op, _SIGNS))


def _check_depth(tree: ast.Expression, where: str) -> None:
    """Nesting depth (chains of + −, of * /, and runs of signs count as one level), computed
    without recursion."""
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPR_DEPTH:
            raise SpecError(f"{where}: expression is nested more than {MAX_EXPR_DEPTH} levels deep")
        for child in ast.iter_child_nodes(node):
            stack.append((child, depth if _same_chain(node, child) else depth + 1))


def _float_value(expr: sp.Expr) -> complex:
    """A numeric sympy expression as a complex number (30 significant digits, then rounded)."""
    v = sp.N(expr, 30)
    re_, im_ = v.as_real_imag()
    return complex(float(re_), float(im_))


class _Builder:
    """Builds a sympy expression from a checked syntax tree (see :func:`parse_expression`).

    ``build`` returns (expression, growth): growth is the product of the numeric exponents along
    the deepest chain of nested powers below the node (1 for a power-free expression)."""

    def __init__(self, text: str, symbols: Mapping[str, sp.Symbol], where: str) -> None:
        self.text, self.symbols, self.where = text, symbols, where

    def fail(self, msg: str) -> SpecError:
        return SpecError(f"{self.where}: {msg}, in {clip(self.text)}")

    def number(self, expr: sp.Expr, what: str) -> sp.Expr:
        """Check that a numeric subexpression is a real number within float64's range."""
        try:
            v = _float_value(expr)
        except (OverflowError, ValueError, TypeError):
            raise self.fail(f"{what} is not a finite real number") from None
        if v.imag != 0 or expr.has(sp.I):
            raise self.fail(f"{what} has the complex value {sp.sstr(expr)[:60]} (complex values are not allowed)")
        if not math.isfinite(v.real) or abs(v.real) > MAX_MAGNITUDE:
            raise self.fail(f"{what} is not finite or exceeds {MAX_MAGNITUDE:g} in magnitude")
        return expr

    def build(self, node: ast.AST) -> tuple[sp.Expr, float]:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
                try:
                    return exact_number(node.value), 1.0
                except SpecError:
                    seg = ast.get_source_segment(self.text.strip(), node) or repr(node.value)
                    raise self.fail(f"number literal {clip(seg, 40)} is not a finite float64 number") from None
            raise self.fail(f"only numeric literals are allowed, got {clip(node.value, 40)}")
        if isinstance(node, ast.Name):
            if node.id in self.symbols:
                return self.symbols[node.id], 1.0
            if node.id in ALLOWED_CONSTANTS:
                return ALLOWED_CONSTANTS[node.id], 1.0
            if node.id in ALLOWED_FUNCTIONS:
                raise self.fail(f"function {node.id!r} must be called")
            allowed = ", ".join(sorted(self.symbols)) or "none"
            raise SpecError(f"{self.where}: unknown symbol {clip(node.id, 40)} in {clip(self.text)}; allowed variables: "
                            f"{allowed}; constants: {', '.join(ALLOWED_CONSTANTS)}")
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, _SUMS) or isinstance(node.op, _PRODUCTS):
                return self.chain(node)
            if isinstance(node.op, ast.Pow):
                return self.power(node)
            hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
            raise self.fail(f"operator {type(node.op).__name__} is not allowed{hint}")
        if isinstance(node, ast.UnaryOp):
            negate = False
            while isinstance(node, ast.UnaryOp) and isinstance(node.op, _SIGNS):
                negate ^= isinstance(node.op, ast.USub)
                node = node.operand
            if isinstance(node, ast.UnaryOp):
                raise self.fail(f"unary operator {type(node.op).__name__} is not allowed")
            e, g = self.build(node)
            return (-e if negate else e), g
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Attribute):
            raise self.fail("attribute access is not allowed")
        raise self.fail(f"construct {type(node).__name__} is not allowed")

    def chain(self, node: ast.BinOp) -> tuple[sp.Expr, float]:
        """A left-nested chain of + − (or of * /), built as one sympy Add (Mul), without recursion
        along the chain: a sum of 1000 terms is one level deep."""
        sums = isinstance(node.op, _SUMS)
        kinds = _SUMS if sums else _PRODUCTS
        parts: list[tuple[bool, ast.AST]] = []
        cur: ast.AST = node
        while isinstance(cur, ast.BinOp) and isinstance(cur.op, kinds):
            parts.append((isinstance(cur.op, (ast.Sub, ast.Div)), cur.right))
            cur = cur.left
        parts.append((False, cur))
        parts.reverse()
        terms, growth = [], 1.0
        for inverse, sub in parts:
            e, g = self.build(sub)
            growth = max(growth, g)
            if inverse and not sums and e.is_number and _float_value(e) == 0:
                raise self.fail("division by zero")
            terms.append((-e if sums else 1 / e) if inverse else e)
        out = sp.Add(*terms) if sums else sp.Mul(*terms)
        if out.is_number:
            self.number(out, "a constant")
        return out, growth

    def power(self, node: ast.BinOp) -> tuple[sp.Expr, float]:
        base, gb = self.build(node.left)
        expo, ge = self.build(node.right)
        if expo.is_number:
            self.number(expo, "the exponent")
            v = _float_value(expo).real
            if abs(v) > MAX_EXPONENT:
                raise self.fail(f"exponent {sp.sstr(expo)[:40]} is too large (|exponent| <= {MAX_EXPONENT})")
            growth = gb * max(1.0, abs(v))
            if growth > MAX_EXPONENT:
                raise self.fail(f"nested powers multiply their exponents to {growth:.3g} "
                                f"(exponent growth limit {MAX_EXPONENT})")
            if base.is_number:
                b = _float_value(base)
                if b.imag == 0 and b.real == 0 and v < 0:
                    raise self.fail("division by zero (0 to a negative power)")
                if b.real != 0 and abs(v * math.log10(abs(b.real) or 1.0)) > math.log10(MAX_MAGNITUDE):
                    raise self.fail(f"the power {sp.sstr(base)[:30]}**{sp.sstr(expo)[:30]} exceeds {MAX_MAGNITUDE:g} "
                                    "in magnitude")
        else:
            growth = max(gb, ge)
        out = sp.Pow(base, expo)
        if out.is_number:
            self.number(out, "a constant power")
        return out, growth

    def call(self, node: ast.Call) -> tuple[sp.Expr, float]:
        if not isinstance(node.func, ast.Name):
            raise self.fail("only calls of named elementary functions are allowed")
        name = node.func.id
        fn = ALLOWED_FUNCTIONS.get(name)
        if fn is None:
            raise SpecError(f"{self.where}: function {clip(name, 40)} is not allowed in {clip(self.text)}; "
                            f"allowed: {', '.join(sorted(ALLOWED_FUNCTIONS))}")
        arity = _ARITY[name]
        if node.keywords or len(node.args) != arity:
            count = "one positional argument" if arity == 1 else f"{arity} positional arguments"
            raise self.fail(f"{name}() takes exactly {count}")
        built = [self.build(a) for a in node.args]
        out = fn(*[e for e, _ in built])
        if out.is_number:
            self.number(out, f"{name}() of a constant")
        return out, max(g for _, g in built)


def _finish(expr: sp.Expr, text: str, where: str) -> sp.Expr:
    """Refuse what sympy made of the tree when it is not a finite real expression."""
    if expr.has(sp.zoo, sp.oo, sp.nan) or expr.has(-sp.oo):
        raise SpecError(f"{where}: {clip(text)} is infinite or undefined (division by zero?)")
    if expr.has(sp.I):
        raise SpecError(f"{where}: {clip(text)} has complex values (sympy: {sp.sstr(expr)[:60]}); "
                        "only real expressions are allowed")
    return expr


def parse_expression(text: str, symbols: Mapping[str, sp.Symbol], where: str = "expression") -> sp.Expr:
    """Parse ``text`` into a sympy expression without ever evaluating it as code.

    Only these are accepted: int/float literals, names in ``symbols`` or
    :data:`ALLOWED_CONSTANTS`, ``+ - * / **``, unary ``+ -``, and calls of the names in
    :data:`ALLOWED_FUNCTIONS` with positional arguments.  Anything else (attribute access,
    subscripts, other calls, dunder names, ``^``, comparisons, lambdas, comments, ...) raises
    :class:`SpecError` naming ``where`` and the refused construct, and so does an expression
    beyond the limits (:data:`MAX_EXPR_CHARS`, :data:`MAX_EXPR_OPERATORS`,
    :data:`MAX_EXPR_DEPTH`, :data:`MAX_LITERAL_CHARS`, :data:`MAX_EXPONENT`,
    :data:`MAX_MAGNITUDE`) or one with complex or infinite constants.
    """
    tree = _parse_tree(text, where)
    _check_depth(tree, where)
    expr, _ = _Builder(text, symbols, where).build(tree.body)
    return _finish(sp.sympify(expr), text, where)  # already a sympy object; sympify of a Basic does not eval strings


# ----------------------------------------------------------------------------------------
# Priors
# ----------------------------------------------------------------------------------------

#: The variable in which one-dimensional prior log-densities are written.
PRIOR_VARIABLE = sp.Symbol("t", real=True)


@dataclass(frozen=True)
class SymbolicPrior1D:
    """One factor p_k of the factorized prior p0(z) = prod_k p_k(z_k) (docs/theory.md).

    ``logpdf`` is ℓ_k as a sympy expression in :data:`PRIOR_VARIABLE`.  ``normalized`` says
    whether ``exp(logpdf)`` integrates to one; a user-given log-density is not, and its
    normalizer is computed numerically by the bridge (only a constant shift of ℓ, which
    leaves the gap, c_IMA and the optimal encoder unchanged but enters log p and ELBO).
    ``source`` is the user's own text of a custom log-density (shown in labels and messages).
    ``kinks`` are the points where ℓ_k is not differentiable (the location of a Laplace prior).
    """

    kind: str
    params: tuple[sp.Expr, ...]
    logpdf: sp.Expr
    normalized: bool
    source: str = ""
    kinks: tuple[sp.Expr, ...] = ()

    @property
    def label(self) -> str:
        if self.kind == "custom":
            text = self.source or sp.sstr(self.logpdf.subs(PRIOR_VARIABLE, sp.Symbol("z")))
            return f"custom({text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + '…'})"
        if not self.params:
            return self.kind
        return f"{self.kind}({', '.join(str(p) for p in self.params)})"


def _param(value: sp.Expr, prior: str, pname: str, lo: float | None = None, hi: float | None = None,
           absolute: float | None = None) -> float:
    """The float value of a prior parameter, checked: real, finite and inside its range."""
    try:
        v = _float_value(sp.sympify(value))
    except (OverflowError, ValueError, TypeError):
        raise SpecError(f"{prior}: {pname} is not a finite real number, got {sp.sstr(value)[:60]}") from None
    if v.imag != 0 or not math.isfinite(v.real):
        raise SpecError(f"{prior}: {pname} must be a finite real number, got {sp.sstr(value)[:60]}")
    x = v.real
    if abs(x) < 1e-100 and not sp.sympify(value).is_Rational:  # an exact zero that sympy does not simplify:
        x = 0.0  # its 30-digit value is cancellation noise
    if absolute is not None and abs(x) > absolute:
        raise SpecError(f"{prior}: |{pname}| must be <= {absolute:g}, got {x:g}")
    if lo is not None and not x > 0:
        shown = sp.sstr(value)[:60]
        raise SpecError(f"{prior}: {pname} must be > 0, got {shown}" + (f", which is {x:g}" if shown != f"{x:g}" else ""))
    if lo is not None and hi is not None and not lo <= x <= hi:
        raise SpecError(f"{prior}: {pname} must lie in [{lo:g}, {hi:g}], got {x:g}")
    return x


def gaussian_prior(mean: sp.Expr = sp.Integer(0), var: sp.Expr = sp.Integer(1)) -> SymbolicPrior1D:
    """ℓ(t) = -(t-m)²/(2v) - ½ log(2πv)."""
    _param(mean, "gaussian(mean, var)", "mean", absolute=MAX_PRIOR_LOCATION)
    _param(var, "gaussian(mean, var)", "var", *PRIOR_SCALE_RANGE)
    t = PRIOR_VARIABLE
    return SymbolicPrior1D("gaussian", (mean, var), -(t - mean) ** 2 / (2 * var) - sp.log(2 * sp.pi * var) / 2, True)


def logistic_prior(loc: sp.Expr = sp.Integer(0), scale: sp.Expr = sp.Integer(1)) -> SymbolicPrior1D:
    """ℓ(t) = -y - 2 log(1 + e^{-y}) - log s with y = (t - loc)/s."""
    _param(loc, "logistic(loc, scale)", "loc", absolute=MAX_PRIOR_LOCATION)
    _param(scale, "logistic(loc, scale)", "scale", *PRIOR_SCALE_RANGE)
    t = PRIOR_VARIABLE
    y = (t - loc) / scale
    return SymbolicPrior1D("logistic", (loc, scale), -y - 2 * sp.log(1 + sp.exp(-y)) - sp.log(scale), True)


def laplace_prior(loc: sp.Expr = sp.Integer(0), scale: sp.Expr = sp.Integer(1)) -> SymbolicPrior1D:
    """ℓ(t) = -|t - loc|/b - log(2b) (b = scale): the paper's Laplace prior.  Not differentiable
    at t = loc (a kink): the ε-expansions need ℓ three times differentiable at z0, so points on
    the kink are refused (docs/spec.md)."""
    _param(loc, "laplace(loc, scale)", "loc", absolute=MAX_PRIOR_LOCATION)
    _param(scale, "laplace(loc, scale)", "scale", *PRIOR_SCALE_RANGE)
    t = PRIOR_VARIABLE
    return SymbolicPrior1D("laplace", (loc, scale), -sp.Abs(t - loc) / scale - sp.log(2 * scale), True, kinks=(loc,))


#: Degrees of freedom up to which the Student-t normalizer is kept exact (sympy writes
#: log Γ of a half-integer with an exact factorial, which never finishes for ν = 10^6).
_STUDENT_T_EXACT_NU = 100


def student_t_prior(nu: sp.Expr) -> SymbolicPrior1D:
    """ℓ(t) = log Γ((ν+1)/2) - log Γ(ν/2) - ½ log(νπ) - (ν+1)/2 · log(1 + t²/ν).

    ν lies in :data:`STUDENT_T_NU_RANGE`.  For ν <= 100 the normalizer is exact; beyond, its
    log-gamma terms are evaluated numerically (mpmath, 40 digits) into a 30-digit constant."""
    v = _param(nu, "student_t(nu)", "nu", *STUDENT_T_NU_RANGE)
    t = PRIOR_VARIABLE
    if v <= _STUDENT_T_EXACT_NU and sp.sympify(nu).is_Rational:
        lg = sp.loggamma((nu + 1) / 2) - sp.loggamma(nu / 2)
    else:
        with mpmath.workdps(40):
            nu_mp = mpmath.mpf(sp.N(nu, 40))
            lg = sp.Float(mpmath.loggamma((nu_mp + 1) / 2) - mpmath.loggamma(nu_mp / 2), 30)
    const = lg - sp.log(nu * sp.pi) / 2
    return SymbolicPrior1D("student_t", (nu,), const - (nu + 1) / 2 * sp.log(1 + t**2 / nu), True)


_PRIOR_BUILDERS: dict[str, tuple[Callable[..., SymbolicPrior1D], tuple[int, int], str]] = {
    "gaussian": (gaussian_prior, (0, 2), "mean m, variance v"),
    "normal": (gaussian_prior, (0, 2), "mean m, variance v"),
    "logistic": (logistic_prior, (0, 2), "location, scale s"),
    "laplace": (laplace_prior, (0, 2), "location, scale b"),
    "student_t": (student_t_prior, (1, 1), "degrees of freedom ν"),
}


def _known_priors() -> str:
    return ", ".join(sorted(_PRIOR_BUILDERS)) + ', or {logpdf = "..."}'


def _unknown_prior(value: str, where: str, name: str | None) -> SpecError:
    """'unknown prior' with a difflib suggestion built from the closest known name."""
    hint = ""
    if name:
        close = difflib.get_close_matches(name.lower(), list(_PRIOR_BUILDERS), n=1, cutoff=0.6)
        if close:
            rest = value.strip()[len(name):] if value.strip().startswith(name) else ""
            hint = f"; did you mean {(close[0] + rest)!r}?" if len(rest) <= MAX_ECHO else f"; did you mean {close[0]!r}?"
    return SpecError(f"{where}: unknown prior {clip(value)}{hint} (known priors: {_known_priors()})")


def parse_prior(value: Any, where: str = "prior") -> SymbolicPrior1D:
    """Parse one prior factor: a name with optional arguments, or ``{logpdf = "..."}``."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"logpdf"}
        if unknown or "logpdf" not in value:
            raise SpecError(f"{where}: a custom prior is a table with exactly one key 'logpdf', got keys "
                            f"{clip(sorted(map(str, value)))}")
        text = value["logpdf"]
        expr = parse_expression(text, {"z": PRIOR_VARIABLE}, where=f"{where}.logpdf")
        return SymbolicPrior1D("custom", (), expr, False, source=text.strip())
    if not isinstance(value, str):
        raise SpecError(f"{where}: expected a prior name like 'gaussian' or a table {{logpdf = ...}}, got {clip(value)}")
    lead = re.match(r"\s*([^\W\d]\w*)", value)
    name = lead.group(1) if lead else None
    try:
        tree = _parse_tree(value, where)
    except SpecError:
        raise _unknown_prior(value, where, name) from None
    node = tree.body
    if isinstance(node, ast.Name):
        name, args = node.id, []
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        name, args = node.func.id, list(node.args)
    else:
        raise _unknown_prior(value, where, name)
    if name not in _PRIOR_BUILDERS:
        raise _unknown_prior(value, where, name)
    builder, (lo, hi), meaning = _PRIOR_BUILDERS[name]
    if not lo <= len(args) <= hi:
        takes = f"{lo} argument" if lo == hi == 1 else f"{lo} arguments" if lo == hi else f"{lo} to {hi} arguments"
        raise SpecError(f"{where}: {name} takes {takes} ({meaning}), got {len(args)} in {clip(value)}")
    exprs: list[sp.Expr] = []
    for i, a in enumerate(args):
        seg = ast.get_source_segment(value.strip(), a) or ""
        expr = parse_expression(seg, {}, where=f"{where} argument {i + 1}")
        if not expr.is_number:
            raise SpecError(f"{where}: prior arguments must be real numbers, got {clip(seg)}")
        exprs.append(expr)
    try:
        return builder(*exprs)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


# ----------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------


def latent_symbols(d: int) -> tuple[sp.Symbol, ...]:
    """The latent symbols z1..zd (real)."""
    return tuple(sp.Symbol(f"z{k + 1}", real=True) for k in range(d))


@dataclass(frozen=True)
class SymbolicModel:
    """Decoder mean f: R^d -> R^n and factorized prior p0, as sympy objects (docs/theory.md notation).

    ``decoder`` is an n x 1 matrix of expressions in ``latents``; ``priors`` holds one factor
    per latent coordinate; ``gamma2`` are decoder precisions γ² and ``points`` latent points z0
    (exact rationals) at which x = f(z0) is evaluated.  ``meta["source"]`` is the spec's file
    when it was loaded from one (messages about the model start with it).
    """

    name: str
    latents: tuple[sp.Symbol, ...]
    decoder: sp.Matrix
    priors: tuple[SymbolicPrior1D, ...]
    gamma2: tuple[float, ...] = ()
    points: tuple[tuple[sp.Rational, ...], ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def d(self) -> int:
        return len(self.latents)

    @property
    def n(self) -> int:
        return self.decoder.shape[0]

    @property
    def source(self) -> str:
        """The spec file this model was loaded from ('' when it came from text or a dict)."""
        return str(self.meta.get("source", ""))

    def jacobian(self) -> sp.Matrix:
        """J(z) = ∂f/∂z, n x d."""
        return self.decoder.jacobian(sp.Matrix(self.latents))

    def log_prior(self) -> sp.Expr:
        """ℓ(z) = Σ_k ℓ_k(z_k) (normalized factors only carry their constants)."""
        return sp.Add(*[p.logpdf.subs(PRIOR_VARIABLE, z) for p, z in zip(self.priors, self.latents)])

    @property
    def prior_label(self) -> str:
        labels = {p.label for p in self.priors}
        return labels.pop() if len(labels) == 1 else "[" + ", ".join(p.label for p in self.priors) + "]"


def _prefix(model: SymbolicModel | None) -> str:
    return f"{model.source}: " if model is not None and model.source else ""


def _check_gamma2(values: Any) -> tuple[float, ...]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, list) or not values:
        raise SpecError("gamma2: expected a non-empty list of positive numbers")
    if len(values) > MAX_GAMMA2:
        raise SpecError(f"gamma2: {len(values)} decoder precisions (limit {MAX_GAMMA2})")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"gamma2: expected numbers, got {clip(v)}")
        if isinstance(v, int) and abs(v) > MAX_MAGNITUDE:
            raise SpecError(f"gamma2: γ² = {clip(str(v), 30)} is outside the supported range "
                            f"[{GAMMA2_MIN:g}, {GAMMA2_MAX:g}]")
        v = float(v)
        if not math.isfinite(v) or v <= 0:
            raise SpecError(f"gamma2: every decoder precision γ² must be finite and > 0, got {v!r}")
        if not GAMMA2_MIN <= v <= GAMMA2_MAX:
            raise SpecError(f"gamma2: γ² = {v:g} is outside the supported range [{GAMMA2_MIN:g}, {GAMMA2_MAX:g}] "
                            "(where float64 honours the stated accuracy: docs/spec.md, Limits)")
        out.append(v)
    return tuple(out)


def _latent_indices(trees: Sequence[ast.Expression]) -> set[int]:
    """Indices k of the names zk in the syntax trees (ast.walk does not recurse)."""
    used: set[int] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                m = re.fullmatch(r"z(\d{1,6})", node.id)
                if m:
                    used.add(int(m.group(1)))
    return used


def _coordinate(v: Any, i: int, k: int) -> sp.Rational:
    where = f"latents: latent point {i + 1}, coordinate {k + 1}"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecError(f"{where}: expected a number, got {'the boolean ' if isinstance(v, bool) else ''}"
                        f"{type(v).__name__} {clip(v, 40)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise SpecError(f"{where}: expected a finite number, got {v!r}")
    if abs(v) > MAX_COORDINATE:
        raise SpecError(f"{where}: |z0_{k + 1}| must be <= {MAX_COORDINATE:g}, got {clip(str(v), 30)}")
    return exact_number(v)


def _kink_at(expr: sp.Expr, subs: Mapping[sp.Symbol, sp.Expr]) -> sp.Expr | None:
    """The argument of a non-differentiable node (``abs``, ``sign``) of ``expr`` that vanishes
    at ``subs`` (a kink at the point), or None."""
    for node in expr.atoms(*KINK_NODES):
        arg = node.args[0]
        val = arg.xreplace(subs)
        if val.is_zero:
            return arg
        if val.is_number:
            try:
                if abs(_float_value(val)) < 1e-300:
                    return arg
            except (OverflowError, ValueError, TypeError):
                continue
    return None


def _describe_point(point: Sequence[Any]) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in point) + ")"


def check_points(model: SymbolicModel, points: Sequence[Sequence[sp.Expr]], first_index: int = 0) -> None:
    """Refuse latent points where the model is not defined or not smooth enough for the theory:
    the decoder or the log prior not finite and real in float64, a Jacobian J(z0) not of full
    column rank, or z0 on a kink of the decoder or of the prior (ℓ must be C³ at z0, docs/theory.md).

    Points are numbered from ``first_index`` + 1 in messages."""
    pts = [tuple(p) for p in points]
    if not pts:
        return
    zs = model.latents
    prefix = _prefix(model)
    for i, p in enumerate(pts):
        subs = dict(zip(zs, p))
        where = f"{prefix}latents: latent point {first_index + i + 1} z0 = {_describe_point(p)}"
        for j, comp in enumerate(model.decoder):
            arg = _kink_at(comp, subs)
            if arg is not None:
                raise SpecError(f"{where} lies on a kink of decoder[{j}] ({sp.sstr(arg)[:60]} = 0 inside abs/sign): "
                                "the decoder is not differentiable there; move the point off the kink")
        for k, (prior, z) in enumerate(zip(model.priors, zs)):
            arg = _kink_at(prior.logpdf, {PRIOR_VARIABLE: subs[z]})
            if arg is not None:
                raise SpecError(f"{where} lies on the kink of the {prior.kind} prior of z{k + 1} at z{k + 1} = "
                                f"{float(subs[z]):g}: ℓ is not differentiable there, and the estimators and the "
                                "ε-expansion need ℓ three times differentiable at z0; move the point off the kink")
    cache = model.meta.setdefault("_numpy", {})
    if "f" not in cache:
        cache["f"] = lambdify(zs, list(model.decoder), "numpy")
        cache["J"] = lambdify(zs, list(model.jacobian()), "numpy")
        cache["ell"] = lambdify(zs, model.log_prior(), "numpy")
    arr = np.array([[float(v) for v in p] for p in pts], dtype=np.float64)
    cols = [arr[:, k] for k in range(model.d)]
    with np.errstate(all="ignore"):
        def values(fn: Callable[..., Any], count: int) -> np.ndarray:
            out = fn(*cols)
            out = out if isinstance(out, list) else [out]
            res = np.empty((len(pts), count), dtype=np.complex128)
            for c in range(count):
                res[:, c] = np.broadcast_to(np.asarray(out[c], dtype=np.complex128), (len(pts),))
            return res

        F = values(cache["f"], model.n)
        Jv = values(cache["J"], model.n * model.d)
        L = values(cache["ell"], 1)
    for i, p in enumerate(pts):
        where = f"{prefix}latents: latent point {first_index + i + 1} z0 = {_describe_point(p)}"
        bad = [j for j in range(model.n) if not (np.isfinite(F[i, j]) and F[i, j].imag == 0)]
        if bad:
            j = bad[0]
            raise SpecError(f"{where}: decoder[{j}] = {clip(sp.sstr(model.decoder[j]), 60)} is not finite and real "
                            f"in float64 there (value {F[i, j].real:g}{'+' + format(F[i, j].imag, 'g') + 'j' if F[i, j].imag else ''})")
        if not (np.isfinite(L[i, 0]) and L[i, 0].imag == 0):
            raise SpecError(f"{where}: the log prior ℓ(z0) is not finite there")
        J = Jv[i].reshape(model.n, model.d)
        if not (np.all(np.isfinite(J)) and np.all(J.imag == 0)):
            raise SpecError(f"{where}: the Jacobian J(z0) is not finite there (the decoder is not differentiable at z0)")
        sv = np.linalg.svd(J.real, compute_uv=False)
        if sv[-1] <= 1e-12 * max(sv[0], 1e-300):
            raise SpecError(f"{where}: the Jacobian J(z0) is singular (rank-deficient) there (singular values {sv[0]:.3g} … {sv[-1]:.3g}): "
                            "the decoder is not locally injective, so c_IMA and the theorems do not apply")


def model_from_dict(data: Mapping[str, Any], default_name: str = "model", source: str = "") -> SymbolicModel:
    """Build a :class:`SymbolicModel` from a parsed TOML table (see module docstring).

    ``source`` (the spec's file, if any) is kept in ``meta["source"]`` so that later messages
    about the model can name it."""
    if not isinstance(data, Mapping):
        raise SpecError(f"a spec is a table of keys, got {type(data).__name__}")
    known = {"name", "description", "decoder", "prior", "gamma2", "latents"}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise SpecError(f"unknown spec keys {clip(unknown)}; known keys: {sorted(known)}")
    if "decoder" not in data:
        raise SpecError("spec has no 'decoder' (a list of expressions in z1..zd)")
    dec = data["decoder"]
    if isinstance(dec, str):
        dec = [dec]
    if not isinstance(dec, list) or not dec or not all(isinstance(e, str) for e in dec):
        raise SpecError("decoder: expected a non-empty list of expression strings")
    if len(dec) > MAX_OUTPUTS:
        raise SpecError(f"decoder: {len(dec)} outputs (limit n <= {MAX_OUTPUTS})")
    trees = [_parse_tree(e, f"decoder[{i}]") for i, e in enumerate(dec)]
    used = _latent_indices(trees)
    if 0 in used:
        raise SpecError("decoder: latent variables are numbered from z1")
    d = max(used) if used else 0
    if d == 0:
        raise SpecError("decoder: uses no latent variable z1..zd")
    if d > MAX_LATENTS:
        raise SpecError(f"decoder: uses z{d}, but at most d = {MAX_LATENTS} latents are supported")
    latents_data = data.get("latents")
    if latents_data is not None:
        if not isinstance(latents_data, list) or not latents_data or not all(isinstance(p, list) for p in latents_data):
            raise SpecError("latents: expected a non-empty list of points, each a list of numbers")
        if len(latents_data) > MAX_POINTS:
            raise SpecError(f"latents: {len(latents_data)} points (limit {MAX_POINTS})")
        dims = {len(p) for p in latents_data}
        if len(dims) != 1:
            raise SpecError(f"latents: all points must have the same length, got lengths {sorted(dims)[:10]}")
        for i, p in enumerate(latents_data):
            if len(p) != d:
                coords = "coordinate" if len(p) == 1 else "coordinates"
                raise SpecError(f"latents: dimension mismatch: latent point {i + 1} has {len(p)} {coords}, the decoder "
                                f"uses d = {d} latents z1..z{d}")
    missing = sorted(set(range(1, d + 1)) - used)
    if missing:
        raise SpecError(f"decoder: uses z{d} but not z{missing[0]}: every latent z1..z{d} must enter the decoder "
                        "(otherwise J(z) has a zero column and is singular)")
    n = len(dec)
    if n < d:
        raise SpecError(f"dimension mismatch: n = {n} decoder outputs < d = {d} latents (need n >= d)")
    zs = latent_symbols(d)
    names = {str(z): z for z in zs}
    comps = []
    for i, (e, tree) in enumerate(zip(dec, trees)):
        where = f"decoder[{i}]"
        _check_depth(tree, where)
        expr, _ = _Builder(e, names, where).build(tree.body)
        comps.append(_finish(sp.sympify(expr), e, where))
    prior_data = data.get("prior", "gaussian")
    if isinstance(prior_data, list):
        if len(prior_data) != d:
            raise SpecError(f"dimension mismatch: prior lists {len(prior_data)} factors for d = {d} latents")
        priors = tuple(parse_prior(p, where=f"prior[{k}]") for k, p in enumerate(prior_data))
    else:
        p = parse_prior(prior_data)
        priors = (p,) * d
    gamma2 = _check_gamma2(data["gamma2"]) if "gamma2" in data else ()
    points: tuple[tuple[sp.Rational, ...], ...] = ()
    if latents_data is not None:
        points = tuple(tuple(_coordinate(v, i, k) for k, v in enumerate(p)) for i, p in enumerate(latents_data))
    if gamma2 and points and len(gamma2) * len(points) > MAX_EVALUATIONS:
        raise SpecError(f"latents, gamma2: {len(points)} points x {len(gamma2)} decoder precisions = "
                        f"{len(points) * len(gamma2)} evaluations (limit {MAX_EVALUATIONS})")
    name = data.get("name", default_name)
    if not isinstance(name, str):
        raise SpecError("name: expected a string")
    meta: dict[str, Any] = {"description": data.get("description", "")}
    if source:
        meta["source"] = source
    model = SymbolicModel(name, zs, sp.Matrix(comps), priors, gamma2, points, meta)
    check_points(model, points)
    return model


def _toml(text: str) -> dict[str, Any]:
    if text.startswith("\ufeff"):  # a UTF-8 byte-order mark, as some editors write it
        text = text[1:]
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"malformed TOML: {str(exc).splitlines()[0][:MAX_ECHO]}") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise SpecError(f"malformed TOML: {str(exc).splitlines()[0][:MAX_ECHO]}") from None


def load_spec(path: str | Path) -> SymbolicModel:
    """Read and parse a TOML spec file; every failure is a :class:`SpecError` starting with the file.

    At most :data:`MAX_SPEC_BYTES` bytes are read (so /dev/zero or a huge file is refused)."""
    path = Path(path)
    shown = str(path) if str(path).isprintable() else ascii(str(path))
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{shown}: cannot read spec: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{shown}: spec larger than {MAX_SPEC_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{shown}: spec is not UTF-8 text") from None
    try:
        return model_from_dict(_toml(text), default_name=path.stem, source=shown)
    except SpecError as exc:
        msg = str(exc)
        raise SpecError(msg if msg.startswith(f"{shown}: ") else f"{shown}: {msg}") from None


def loads_spec(text: str, name: str = "model") -> SymbolicModel:
    """Parse a TOML spec given as a string."""
    if not isinstance(text, str):
        raise SpecError(f"a spec text is a string, got {type(text).__name__}")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError(f"spec larger than {MAX_SPEC_BYTES} bytes")
    return model_from_dict(_toml(text), default_name=name)


def point_subs(model: SymbolicModel, point: Sequence[sp.Expr]) -> dict[sp.Symbol, sp.Expr]:
    """Substitution dict z_k -> point_k.

    A numeric point is checked with :func:`check_points` first (the decoder and ℓ finite there,
    J(z0) of full rank, z0 off every kink), so a derivation at such a point is refused with a
    message instead of failing inside sympy."""
    if len(point) != model.d:
        raise SpecError(f"{_prefix(model)}dimension mismatch: point has {len(point)} coordinates, model has d = {model.d}")
    if all(sp.sympify(v).is_number for v in point):
        check_points(model, [tuple(sp.sympify(v) for v in point)])
    return dict(zip(model.latents, point))
